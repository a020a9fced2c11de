"""Build benchmark tables in MariaDB: a source ``user`` table and a destination copy with planted mismatches."""

from __future__ import annotations

import time
from dataclasses import dataclass

from cupid_airflow.core.sql import ConnectionParams, connect

SOURCE_DB = "cupid_bench_src"
DESTINATION_DB = "cupid_bench_dst"


@dataclass(frozen=True)
class Planted:
    """Which source ids are missing from or different in the destination."""

    missing: frozenset[int]
    different: frozenset[int]


def planted_ids(rows: int, missing_per_mille: int, different_per_mille: int, per: int = 1000) -> Planted:
    """Ids planted as missing (``id % per < missing``) and different (the next ``different`` residues)."""
    missing = frozenset(i for i in range(1, rows + 1) if i % per < missing_per_mille)
    different = frozenset(
        i for i in range(1, rows + 1) if missing_per_mille <= i % per < missing_per_mille + different_per_mille
    )
    return Planted(missing, different)


def build(
    params: ConnectionParams,
    rows: int,
    missing_per_mille: int = 10,
    different_per_mille: int = 10,
    *,
    rebuild: bool = False,
    per: int = 1000,
    source_db: str = SOURCE_DB,
    destination_db: str = DESTINATION_DB,
    destination_id: bool = False,
) -> float:
    """Create both tables (unless they already hold this exact plan) and return the seconds it took."""
    started = time.monotonic()
    conn = connect(params)
    cursor = conn.cursor()
    tag = f"{rows}:{missing_per_mille}:{different_per_mille}:{per}:{int(destination_id)}:v2"
    cursor.execute(f"CREATE DATABASE IF NOT EXISTS {source_db} CHARACTER SET utf8mb4")
    cursor.execute(f"CREATE DATABASE IF NOT EXISTS {destination_db} CHARACTER SET utf8mb4")
    cursor.execute(
        "SELECT TABLE_COMMENT FROM information_schema.TABLES WHERE TABLE_SCHEMA = %s AND TABLE_NAME = 'user'",
        (destination_db,),
    )
    found = cursor.fetchall()
    if found and found[0][0].decode() == tag and not rebuild:
        conn.close()
        return 0.0
    cursor.execute(f"DROP TABLE IF EXISTS {source_db}.user")
    cursor.execute(f"DROP TABLE IF EXISTS {destination_db}.user")
    cursor.execute(
        f"""CREATE TABLE {source_db}.user (
          id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
          number VARCHAR(32) NOT NULL,
          name VARCHAR(64) NULL,
          avatar VARCHAR(255) NULL,
          email VARCHAR(128) NULL,
          balance DECIMAL(12,2) NULL,
          bio TEXT NULL,
          created_at DATETIME NOT NULL,
          update_time DATETIME NOT NULL,
          UNIQUE KEY uq_number (number),
          KEY ix_update_time (update_time)
        ) ENGINE=InnoDB"""
    )
    cursor.execute(
        f"""CREATE TABLE {destination_db}.user (
          {"id BIGINT UNSIGNED NOT NULL, KEY ix_id (id)," if destination_id else ""}
          number VARCHAR(32) NOT NULL PRIMARY KEY,
          name VARCHAR(64) NULL,
          avatar VARCHAR(255) NULL
        ) ENGINE=InnoDB"""
    )
    cursor.execute("SET SESSION unique_checks = 0")
    step = 200_000
    for low in range(1, rows + 1, step):
        high = min(rows, low + step - 1)
        cursor.execute(
            f"""INSERT INTO {source_db}.user (id, number, name, avatar, email, balance, bio, created_at, update_time)
            SELECT seq, SUBSTRING(MD5(seq), 1, 20),
              CONCAT('name ', seq),
              IF(seq % 7 = 0, NULL, CONCAT('https://img.example.com/a/', seq, '.png')),
              CONCAT('u', seq, '@example.com'), seq / 100, REPEAT('bio ', seq % 20),
              '2024-01-01 00:00:00' + INTERVAL seq SECOND, '2024-06-01 00:00:00' + INTERVAL seq SECOND
            FROM {source_db}.seq_{low}_to_{high}"""
        )
        cursor.execute(
            f"""INSERT INTO {destination_db}.user ({"id, " if destination_id else ""}number, name, avatar)
            SELECT {"id, " if destination_id else ""}number,
              IF(id % {per} >= {missing_per_mille} AND id % {per} < {missing_per_mille + different_per_mille}
                 AND id % 2 = 0, CONCAT(name, ' (stale)'), name),
              IF(id % {per} >= {missing_per_mille} AND id % {per} < {missing_per_mille + different_per_mille}
                 AND id % 2 = 1, IF(avatar IS NULL, '', NULL), avatar)
            FROM {source_db}.user WHERE id BETWEEN {low} AND {high} AND id % {per} >= {missing_per_mille}"""
        )
    cursor.execute(f"ANALYZE TABLE {source_db}.user, {destination_db}.user")
    cursor.fetchall()
    cursor.execute(f"ALTER TABLE {destination_db}.user COMMENT = '{tag}'")
    conn.close()
    return time.monotonic() - started

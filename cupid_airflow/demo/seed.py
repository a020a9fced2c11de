"""Seed the demo: a source table and its CDC copy with planted mismatches, a clean delivery store, planted.json."""

from __future__ import annotations

import argparse
import json
import random
import sys
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Sequence

    from cupid_airflow.core.config import CupidConfig
    from cupid_airflow.core.sql import ConnectionParams

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_CONFIG = REPO_ROOT / "dags" / "cupid" / "user.json"
DEFAULT_PLANTED = REPO_ROOT / ".demo" / "planted.json"

SOURCE_DDL = """
CREATE TABLE {table} (
  id          BIGINT       NOT NULL AUTO_INCREMENT PRIMARY KEY,
  number      VARCHAR(64)  NOT NULL,
  name        VARCHAR(64)  NULL,
  avatar      VARCHAR(255) NULL,
  update_time DATETIME     NOT NULL DEFAULT CURRENT_TIMESTAMP ON UPDATE CURRENT_TIMESTAMP,
  UNIQUE KEY uq_number (number),
  KEY ix_update_time (update_time)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4
"""

DESTINATION_DDL = """
CREATE TABLE {table} (
  number      VARCHAR(64)  NOT NULL PRIMARY KEY,
  name        VARCHAR(64)  NULL,
  avatar      VARCHAR(255) NULL,
  update_time DATETIME     NULL,
  KEY ix_update_time (update_time)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4
"""

FIRST_NAMES = (
    "Ann", "Bob", "Chloe", "Dan", "Eve", "Farid", "Grace", "Hiro", "Ines", "Jonas",
    "Kemal", "Li", "Maya", "Nils", "Olga", "Priya", "Quinn", "Rosa", "Sven", "Tomás",
)  # fmt: skip


@dataclass(frozen=True)
class Planted:
    """One mismatch the demo expects cupid to find and call back: (type, key), and why."""

    type: int
    key: str
    why: str


@dataclass(frozen=True)
class SeedResult:
    """What :func:`seed` built."""

    source_table: str
    destination_table: str
    source_rows: int
    destination_rows: int
    planted: list[Planted]
    purged: int


def number_of(index: int) -> str:
    return f"u-{index:06d}"


def _rows(count: int, rng: random.Random, now: datetime) -> list[tuple[str, str | None, str | None, datetime]]:
    rows = []
    for i in range(1, count + 1):
        name: str | None = f"{rng.choice(FIRST_NAMES)} {chr(65 + rng.randrange(26))}."
        roll = rng.random()
        avatar: str | None
        if roll < 0.10:
            avatar = None
        elif roll < 0.13:
            avatar = ""
        else:
            avatar = f"https://img.example.com/a/{i}.png"
        if rng.random() < 0.02:
            name = None
        # spread over the last 30 days: an update scan of the last seconds finds none of them
        updated = now - timedelta(seconds=rng.randrange(60, 30 * 86400))
        rows.append((number_of(i), name, avatar, updated))
    return rows


def _connect(params: ConnectionParams, database: str | None = None) -> Any:
    import MySQLdb

    kwargs: dict[str, Any] = {
        "host": params.host,
        "port": params.port,
        "user": params.user,
        "password": params.password,
        "charset": "utf8mb4",
        "autocommit": True,
    }
    if params.unix_socket:
        kwargs["unix_socket"] = params.unix_socket
    if database:
        kwargs["database"] = database
    return MySQLdb.connect(**kwargs)


def _qualified(params: ConnectionParams, table: str) -> tuple[str, str]:
    """(database, database.table) of a config's table; validated, so safe to use unquoted."""
    from cupid_airflow.core.sql import quote_table, split_table

    database, name = split_table(table, params.database)
    if not database:
        raise SystemExit(f"seed: the connection of table {table!r} names no database")
    quote_table(f"{database}.{name}")  # validates
    return database, f"{database}.{name}"


def seed(config: CupidConfig, rows: int = 3000, random_seed: int = 20240101) -> SeedResult:
    """(Re)create the source and destination tables of a demo config, plant mismatches, purge its store items."""
    from cupid_airflow.core.sql import quote_identifier, quote_table
    from cupid_airflow.core.store import STATUSES, DeliveryStore

    if rows < 100:
        raise ValueError("seed at least 100 rows")
    src, des = config.src, config.des[0]
    if not src.dsn or not des.dsn:
        raise SystemExit("seed: the demo config must give src.dsn and des[0].dsn (not Airflow connection ids)")
    if (src.by_column, des.by_column) != ("number", "number") or src.id_column != "id":
        raise SystemExit("seed: the demo config must key both sides by `number` and use `id` as the id column")
    src_params, des_params = src.connection_params(), des.connection_params()
    src_db, src_table = _qualified(src_params, src.table)
    des_db, des_table = _qualified(des_params, des.table)
    rng = random.Random(random_seed)

    conn = _connect(src_params)
    try:
        cursor = conn.cursor()
        cursor.execute(f"CREATE DATABASE IF NOT EXISTS {quote_identifier(src_db)} CHARACTER SET utf8mb4")
        cursor.execute(f"DROP TABLE IF EXISTS {quote_table(src_table)}")
        cursor.execute(SOURCE_DDL.format(table=quote_table(src_table)))
        cursor.execute("SELECT NOW()")
        now = cursor.fetchone()[0]
        data = _rows(rows, rng, now)
        cursor.executemany(
            f"INSERT INTO {quote_table(src_table)} (number, name, avatar, update_time) VALUES (%s, %s, %s, %s)", data
        )
    finally:
        conn.close()

    by_number = {number: (name, avatar) for number, name, avatar, _ in data}
    copy: dict[str, list[Any]] = {number: [number, name, avatar, updated] for number, name, avatar, updated in data}
    planted: list[Planted] = []
    taken: set[str] = set()

    def pick(predicate: Any = None, index: int | None = None) -> str:
        if index is not None:
            taken.add(number_of(index))
            return number_of(index)
        while True:
            number = number_of(rng.randrange(2, rows))
            if number not in taken and (predicate is None or predicate(*by_number[number])):
                taken.add(number)
                return number

    # type 1: rows the CDC copy lost, among them the newest row
    for index in (None, None, None, rows):
        number = pick(index=index)
        del copy[number]
        planted.append(Planted(1, number, "missing in the copy" + (" (the newest row)" if index else "")))
    # type 2: rows the copy has wrong
    for _ in range(2):
        number = pick(lambda name, avatar: name is not None)
        stale = copy[number][1].split(" ")[0] + " (old name)"
        copy[number][1] = stale
        planted.append(Planted(2, number, f"stale name {stale!r} in the copy"))
    number = pick(lambda name, avatar: avatar is None)
    copy[number][2] = ""
    planted.append(Planted(2, number, "avatar NULL at the source, '' in the copy"))
    number = pick(lambda name, avatar: avatar == "")
    copy[number][2] = None
    planted.append(Planted(2, number, "avatar '' at the source, NULL in the copy"))
    number = pick(lambda name, avatar: name is not None and " " in name)
    copy[number][1] = f"{by_number[number][0]} "
    planted.append(Planted(2, number, "a trailing space in the copy's name (MySQL's = would call them equal)"))
    number = pick(lambda name, avatar: name is not None and avatar is not None)
    copy[number][1] = None
    planted.append(Planted(2, number, "name NULL in the copy"))
    # not a mismatch: update_time is not a compared column, so this difference must not call back
    noise = pick()
    copy[noise][3] = copy[noise][3] - timedelta(days=1)

    conn = _connect(des_params)
    try:
        cursor = conn.cursor()
        cursor.execute(f"CREATE DATABASE IF NOT EXISTS {quote_identifier(des_db)} CHARACTER SET utf8mb4")
        cursor.execute(f"DROP TABLE IF EXISTS {quote_table(des_table)}")
        cursor.execute(DESTINATION_DDL.format(table=quote_table(des_table)))
        cursor.executemany(
            f"INSERT INTO {quote_table(des_table)} (number, name, avatar, update_time) VALUES (%s, %s, %s, %s)",
            [tuple(row) for row in copy.values()],
        )
    finally:
        conn.close()

    from cupid_airflow.connections import resolve_connection

    store = DeliveryStore(resolve_connection(config.state_connection))
    try:
        store.ensure_schema()
        purged = store.purge(config.name, STATUSES)
    finally:
        store.close()
    planted.sort(key=lambda p: (p.type, p.key))
    return SeedResult(src_table, des_table, len(data), len(copy), planted, purged)


def write_planted(result: SeedResult, config: CupidConfig, path: Path) -> None:
    """Write the planted (type, key) set for the demo's check."""
    path.parent.mkdir(parents=True, exist_ok=True)
    document = {
        "config": config.name,
        "sourceTable": result.source_table,
        "destinationTable": result.destination_table,
        "sourceRows": result.source_rows,
        "planted": [asdict(p) for p in result.planted],
    }
    path.write_text(json.dumps(document, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def main(argv: Sequence[str] | None = None) -> int:
    from cupid_airflow.core.config import load_config

    parser = argparse.ArgumentParser(prog="python -m cupid_airflow.demo.seed", description=__doc__)
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help=f"default {DEFAULT_CONFIG}")
    parser.add_argument("--rows", type=int, default=3000)
    parser.add_argument("--planted", type=Path, default=DEFAULT_PLANTED, help=f"default {DEFAULT_PLANTED}")
    args = parser.parse_args(argv)

    config = load_config(args.config)
    result = seed(config, rows=args.rows)
    write_planted(result, config, args.planted)
    missing = sum(1 for p in result.planted if p.type == 1)
    print(
        f"seed: {result.source_table} has {result.source_rows} rows, its copy {result.destination_table} "
        f"{result.destination_rows}; purged {result.purged} old item(s) of config {config.name!r} from the "
        f"delivery store"
    )
    print(
        f"seed: planted {len(result.planted)} mismatches ({missing} missing, {len(result.planted) - missing} "
        f"different), written to {args.planted}:"
    )
    for p in result.planted:
        print(f"seed:   type {p.type}  {p.key}  {p.why}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

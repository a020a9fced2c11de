"""The store's multi-row INSERTs: every value arrives as given, whatever its bytes, in statements of bounded size."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest

from cupid_airflow.core.sql import connect, multi_row_inserts
from tests.support.database import params_for

if TYPE_CHECKING:
    from conftest import MariaDB

pytestmark = pytest.mark.integration

ROWS: list[tuple[Any, ...]] = [
    (1, b"plain", "plain", 0, None),
    (2, b'it\'s \\ a "quote"; --', "l'apostrophe \\ ; DROP TABLE t; --", -(2**63), True),
    (3, bytes(range(256)), "Zoë 日本語 🙂", 2**64 - 1, False),
    (4, b"\x00\x1a\r\n\t%s%%", "%s %(x)s %%", 0, None),
    (5, b"", "", 1, None),
]


def test_every_value_arrives_as_it_was_given(mariadb: MariaDB, fresh_database: str) -> None:
    conn = connect(params_for(mariadb, fresh_database))
    try:
        cursor = conn.cursor()
        cursor.execute(
            "CREATE TABLE t (id INT PRIMARY KEY, raw MEDIUMBLOB NULL, text TEXT CHARACTER SET utf8mb4 NULL,"
            " number DECIMAL(20,0) NULL, flag TINYINT NULL)"
        )
        statements = list(multi_row_inserts(conn, "INSERT INTO t (id, raw, text, number, flag) VALUES ", ROWS))
        assert len(statements) == 1
        for statement in statements:
            cursor.execute(statement)
        cursor.execute("SELECT id, raw, text, number, flag FROM t ORDER BY id")
        got = cursor.fetchall()
    finally:
        conn.close()
    expected = [
        (
            str(i).encode(),
            raw,
            text.encode(),
            str(number).encode(),
            None if flag is None else str(int(flag)).encode(),
        )
        for i, raw, text, number, flag in ROWS
    ]
    assert [tuple(row) for row in got] == expected


def test_statements_are_cut_at_their_size_and_keep_every_row(mariadb: MariaDB, fresh_database: str) -> None:
    conn = connect(params_for(mariadb, fresh_database))
    try:
        cursor = conn.cursor()
        cursor.execute("CREATE TABLE t (id INT PRIMARY KEY, raw BLOB NOT NULL)")
        rows = [(i, b"x" * 1000) for i in range(1, 101)]
        statements = list(multi_row_inserts(conn, "INSERT INTO t VALUES ", rows, max_bytes=10_000))
        assert len(statements) == 12  # 9 rows of ~1,008 bytes fit under 10,000 bytes: 11 statements of 9, 1 of 1
        assert all(len(s) < 10_000 + 100 for s in statements)
        for statement in statements:
            cursor.execute(statement)
        cursor.execute("SELECT COUNT(*), SUM(LENGTH(raw)) FROM t")
        assert cursor.fetchone() == (b"100", b"100000")
    finally:
        conn.close()


def test_a_value_of_another_type_is_refused(mariadb: MariaDB) -> None:
    conn = connect(params_for(mariadb, None))
    try:
        with pytest.raises(TypeError, match="no SQL literal for a float"):
            list(multi_row_inserts(conn, "INSERT INTO t VALUES ", [(1, 2.5)]))
    finally:
        conn.close()

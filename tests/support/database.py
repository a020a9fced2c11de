"""Test support: plain SQL against the test server (``mariadb`` fixture) from test code."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from cupid_airflow.core.sql import ConnectionParams

if TYPE_CHECKING:
    from conftest import MariaDB


def params_for(mariadb: MariaDB, database: str | None, *, port: int | None = None) -> ConnectionParams:
    """cupid's connection parameters for a database of the test server (or of a proxy's ``port``)."""
    return ConnectionParams(
        host=mariadb.host,
        port=mariadb.port if port is None else port,
        user=mariadb.user,
        password=mariadb.password,
        database=database,
    )


def execute(mariadb: MariaDB, database: str | None, *statements: str | tuple[str, Any]) -> None:
    """Run statements (``sql`` or ``(sql, args)``) in autocommit."""
    conn = mariadb.connect(database)
    try:
        cursor = conn.cursor()
        for statement in statements:
            if isinstance(statement, tuple):
                cursor.execute(*statement)
            else:
                cursor.execute(statement)
    finally:
        conn.close()


def query(mariadb: MariaDB, database: str | None, sql: str, args: Any = None) -> list[tuple[Any, ...]]:
    conn = mariadb.connect(database)
    try:
        cursor = conn.cursor()
        cursor.execute(sql, args)
        return list(cursor.fetchall())
    finally:
        conn.close()


def scalar(mariadb: MariaDB, database: str | None, sql: str) -> Any:
    rows = query(mariadb, database, sql)
    return rows[0][0]

"""Update columns that real tables have: digit-only integers, text formats, another time zone, daylight saving.

Clocks and zones are real MariaDB ones: a connector opens every cupid connection with
``SET time_zone`` (a server in that zone) and ``SET timestamp`` (the server's clock at that moment).
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

import pytest

from cupid_airflow.core.scan import ScanError
from cupid_airflow.core.sync import MemoryCursorStore, SyncRun
from tests.support.database import execute, params_for, query
from tests.support.scans import Connector, found, keyset, make_plan

if TYPE_CHECKING:
    from conftest import MariaDB

    from cupid_airflow.core.store import DeliveryStore

pytestmark = pytest.mark.integration

NEW_YORK = "America/New_York"
FALL_BACK = 1730613600  # 2024-11-03 06:00:00 UTC: New York goes from 02:00 EDT back to 01:00 EST
SPRING_FORWARD = 1710054000  # 2024-03-10 07:00:00 UTC: New York goes from 02:00 EST on to 03:00 EDT


@pytest.fixture(scope="session")
def new_york_zone(mariadb: MariaDB) -> str:
    """Make sure the server knows America/New_York (loads that one zone into its time zone tables once)."""
    import subprocess

    conn = mariadb.connect("mysql")
    try:
        cursor = conn.cursor()
        cursor.execute("SELECT GET_LOCK('cupid_test_time_zone', 60)")
        cursor.execute("SELECT 1 FROM mysql.time_zone_name WHERE Name = %s", (NEW_YORK,))
        if not cursor.fetchall():
            sql = subprocess.run(
                ["mariadb-tzinfo-to-sql", f"/usr/share/zoneinfo/{NEW_YORK}", NEW_YORK],
                capture_output=True,
                text=True,
                check=True,
                timeout=60,
            ).stdout
            loader = mariadb.connect("mysql", client_flag=65536)  # CLIENT.MULTI_STATEMENTS
            try:
                loader.cursor().execute(sql)
                while loader.next_result() == 0:
                    pass
            finally:
                loader.close()
        cursor.execute("SELECT CONVERT_TZ('2024-11-03 05:30:00', '+00:00', %s)", (NEW_YORK,))
        assert cursor.fetchall()[0][0] is not None, "the server did not load America/New_York"
        cursor.execute("SELECT RELEASE_LOCK('cupid_test_time_zone')")
    finally:
        conn.close()
    return NEW_YORK


def update_table(mariadb: MariaDB, database: str, column_type: str, old_value: str, rows: int = 10) -> None:
    """``src(id, code, name, mtime <column_type>)`` with ``rows`` rows, and its exact copy ``dst``."""
    execute(
        mariadb,
        database,
        "CREATE TABLE src (id BIGINT NOT NULL PRIMARY KEY, code VARCHAR(32) NOT NULL, name VARCHAR(64) NULL, "
        f"mtime {column_type} NULL, KEY (mtime))",
        f"INSERT INTO src SELECT seq, CONCAT('k', seq), 'same', {old_value} FROM seq_1_to_{rows}",
        "CREATE TABLE dst (code VARCHAR(32) NOT NULL PRIMARY KEY, name VARCHAR(64) NULL)",
        "INSERT INTO dst SELECT code, name FROM src",
    )


def update_plan(mariadb: MariaDB, database: str, **options: Any) -> Any:
    params = params_for(mariadb, database)
    options.setdefault("update_scan_second", 5)
    options.setdefault("update_column", "mtime")
    options.setdefault("late_commit_second", 0)
    return make_plan(params, update=True, **options)


# -- integer columns -------------------------------------------------------------------------------
def test_an_integer_column_with_a_format_it_cannot_hold_in_time_order_is_refused(
    mariadb: MariaDB, fresh_database: str, store: DeliveryStore
) -> None:
    """Issue 10: any non-epoch format on an integer column was silently read as epoch seconds."""
    update_table(mariadb, fresh_database, "BIGINT", "20200101")
    cursors = MemoryCursorStore()
    with pytest.raises(ScanError, match=r"update column 'mtime' is a bigint column.*'d/m/Y'.*YmdHis") as error:
        SyncRun(update_plan(mariadb, fresh_database, update_time_format="d/m/Y"), cursors, store).run()
    assert "U (epoch seconds)" in str(error.value)
    assert cursors.load("des0") is None


def test_an_integer_column_holding_ymd_digits_finds_updates(
    mariadb: MariaDB, fresh_database: str, store: DeliveryStore
) -> None:
    """Issue 10: ``YmdHis`` digits in a BIGINT were compared with epoch seconds and never matched."""
    update_table(mariadb, fresh_database, "INT UNSIGNED", "20200101")
    plan = update_plan(mariadb, fresh_database, update_time_format="Ymd")
    cursors = MemoryCursorStore()
    SyncRun(plan, cursors, store).run()
    execute(
        mariadb, fresh_database, "UPDATE src SET name = 'changed', mtime = DATE_FORMAT(NOW(), '%Y%m%d') WHERE id = 4"
    )
    second = SyncRun(plan, cursors, store).run()

    assert found(store) == keyset([b"k4"], mismatch_type=2)
    assert second["rowsScanned"]["update"] == 1


# -- text columns ----------------------------------------------------------------------------------
def test_text_that_does_not_sort_as_time_is_refused_with_an_indexed_generated_column_as_the_fix(
    mariadb: MariaDB, fresh_database: str, store: DeliveryStore
) -> None:
    """Issue 10: ``d/m/Y H:i:s`` put STR_TO_DATE(col) in WHERE and ORDER BY: a full table scan every run."""
    update_table(mariadb, fresh_database, "VARCHAR(32)", "'31/12/2020 00:00:00'")
    cursors = MemoryCursorStore()
    plan = update_plan(mariadb, fresh_database, update_time_format="d/m/Y H:i:s")
    with pytest.raises(ScanError, match=r"does not sort in time order.*ALTER TABLE") as error:
        SyncRun(plan, cursors, store).run()
    assert cursors.load("des0") is None

    # the fix the message gives works as it is written
    ddl = re.search(r"(ALTER TABLE .*?);", str(error.value))
    assert ddl is not None
    execute(mariadb, fresh_database, ddl.group(1))
    fixed = update_plan(mariadb, fresh_database, update_column="mtime_at")
    SyncRun(fixed, cursors, store).run()
    execute(
        mariadb,
        fresh_database,
        "UPDATE src SET name = 'changed', mtime = DATE_FORMAT(NOW(), '%d/%m/%Y %H:%i:%s') WHERE id = 7",
    )
    SyncRun(fixed, cursors, store).run()
    assert found(store) == keyset([b"k7"], mismatch_type=2)


def test_an_iso_text_column_with_an_escaped_t_is_read_through_its_index(
    mariadb: MariaDB, fresh_database: str, store: DeliveryStore
) -> None:
    """Issue 10: ``Y-m-d\\TH:i:s`` was taken for a format that does not sort: every batch query read every row."""
    rows = 20000
    update_table(mariadb, fresh_database, "VARCHAR(32)", "'2020-01-01T00:00:00'", rows=rows)
    execute(mariadb, fresh_database, "ANALYZE TABLE src")
    plan = update_plan(mariadb, fresh_database, update_time_format="Y-m-d\\TH:i:s")
    cursors = MemoryCursorStore()
    SyncRun(plan, cursors, store).run()
    execute(
        mariadb,
        fresh_database,
        "UPDATE src SET name = 'changed', mtime = DATE_FORMAT(NOW(), '%Y-%m-%dT%H:%i:%s') WHERE id = 5",
    )
    spy = Connector()
    second = SyncRun(plan, cursors, store, connector=spy).run()
    assert found(store) == keyset([b"k5"], mismatch_type=2)
    assert second["rowsScanned"]["update"] == 1

    batch_queries = [(sql, args) for sql, args in spy.statements if "ORDER BY" in sql and "`mtime`" in sql]
    assert batch_queries
    conn = mariadb.connect(fresh_database)
    try:
        cursor = conn.cursor()
        for sql, args in batch_queries:
            cursor.execute("FLUSH STATUS")
            cursor.execute(sql, args)
            cursor.fetchall()
            cursor.execute("SHOW SESSION STATUS LIKE 'Handler_read%%'")
            read = {name: int(value) for name, value in cursor.fetchall()}
            rows_read = read["Handler_read_next"] + read["Handler_read_rnd_next"]
            assert rows_read < 100, f"{rows_read} rows read by one batch query on {rows} rows: {read}"
    finally:
        conn.close()


# -- time zones ------------------------------------------------------------------------------------
def test_a_datetime_column_written_in_utc_on_a_server_in_another_zone_is_found_with_update_time_zone(
    mariadb: MariaDB, fresh_database: str, store: DeliveryStore
) -> None:
    """Issue 10: an application writing UTC on a +08:00 server: its updates were never inside the window."""
    update_table(mariadb, fresh_database, "DATETIME(6)", "'2020-01-01 00:00:00'")
    beijing = Connector(session_sql=("SET time_zone = '+08:00'",))  # the server's zone
    plan = update_plan(mariadb, fresh_database, update_time_zone="+00:00")
    cursors = MemoryCursorStore()
    SyncRun(plan, cursors, store, connector=beijing).run()
    execute(mariadb, fresh_database, "UPDATE src SET name = 'changed', mtime = UTC_TIMESTAMP(6) WHERE id = 2")
    second = SyncRun(plan, cursors, store, connector=beijing).run()

    assert found(store) == keyset([b"k2"], mismatch_type=2)
    assert second["rowsScanned"]["update"] == 1


def test_an_update_time_zone_the_server_does_not_know_is_refused_before_anything_is_scanned(
    mariadb: MariaDB, fresh_database: str, store: DeliveryStore
) -> None:
    update_table(mariadb, fresh_database, "DATETIME(6)", "'2020-01-01 00:00:00'")
    cursors = MemoryCursorStore()
    plan = update_plan(mariadb, fresh_database, update_time_zone="Mars/Olympus_Mons")
    with pytest.raises(ScanError, match=r"'Mars/Olympus_Mons' is unknown to the source server.*'\+08:00'"):
        SyncRun(plan, cursors, store).run()
    assert cursors.load("des0") is None


def at_moment(zone: str, epoch: float) -> Connector:
    """Connections of a server in ``zone`` whose clock reads ``epoch``."""
    return Connector(session_sql=(f"SET time_zone = '{zone}'", f"SET timestamp = {epoch}"))


def write_at(mariadb: MariaDB, database: str, zone: str, epoch: float, sql: str) -> None:
    """What the application does: a statement on a server in ``zone`` at ``epoch`` (``NOW(6)`` is that moment)."""
    execute(mariadb, database, f"SET time_zone = '{zone}'", f"SET timestamp = {epoch}", sql)


@pytest.mark.parametrize(
    ("column_type", "php_format", "now_value"),
    [
        ("DATETIME(6)", None, "NOW(6)"),
        ("TIMESTAMP(6)", None, "NOW(6)"),
        ("BIGINT", "U", "UNIX_TIMESTAMP()"),
        ("VARCHAR(32)", "Y-m-d H:i:s", "DATE_FORMAT(NOW(), '%Y-%m-%d %H:%i:%s')"),
    ],
    ids=["datetime", "timestamp", "epoch", "text"],
)
def test_no_update_is_missed_when_the_clocks_go_back(
    column_type: str,
    php_format: str | None,
    now_value: str,
    new_york_zone: str,
    mariadb: MariaDB,
    fresh_database: str,
    store: DeliveryStore,
) -> None:
    """Issue 10: at the end of daylight saving, local windows ran backwards and TIMESTAMP bounds were ambiguous.

    A row updated one second before the clocks go back, and one updated in the repeated hour,
    are each found by the next run.
    """
    zone = new_york_zone
    update_table(mariadb, fresh_database, column_type, "NULL")
    plan = update_plan(mariadb, fresh_database, update_time_format=php_format)
    cursors = MemoryCursorStore()

    SyncRun(plan, cursors, store, connector=at_moment(zone, FALL_BACK - 2)).run()  # 01:59:58 EDT
    write_at(
        mariadb, fresh_database, zone, FALL_BACK - 1, f"UPDATE src SET name = 'b', mtime = {now_value} WHERE id = 3"
    )
    SyncRun(plan, cursors, store, connector=at_moment(zone, FALL_BACK + 3)).run()  # 01:00:03 EST
    assert found(store) == keyset([b"k3"], mismatch_type=2), "the update just before the clocks went back was lost"

    SyncRun(plan, cursors, store, connector=at_moment(zone, FALL_BACK + 1797)).run()  # 01:29:57 EST, again
    write_at(
        mariadb, fresh_database, zone, FALL_BACK + 1800, f"UPDATE src SET name = 'b', mtime = {now_value} WHERE id = 4"
    )
    SyncRun(plan, cursors, store, connector=at_moment(zone, FALL_BACK + 1803)).run()
    assert found(store) == keyset([b"k3", b"k4"], mismatch_type=2), "the update in the repeated hour was lost"


@pytest.mark.parametrize("column_type", ["DATETIME(6)", "TIMESTAMP(6)"])
def test_no_update_is_missed_when_the_clocks_go_forward(
    column_type: str, new_york_zone: str, mariadb: MariaDB, fresh_database: str, store: DeliveryStore
) -> None:
    zone = new_york_zone
    update_table(mariadb, fresh_database, column_type, "NULL")
    plan = update_plan(mariadb, fresh_database)
    cursors = MemoryCursorStore()
    for n, (run_at, write_at_epoch) in enumerate([(-2, -1), (3, 600), (1200, 1201)]):
        SyncRun(plan, cursors, store, connector=at_moment(zone, SPRING_FORWARD + run_at)).run()
        write_at(
            mariadb,
            fresh_database,
            zone,
            SPRING_FORWARD + write_at_epoch,
            f"UPDATE src SET name = 'b', mtime = NOW(6) WHERE id = {n + 1}",
        )
    SyncRun(plan, cursors, store, connector=at_moment(zone, SPRING_FORWARD + 1203)).run()
    assert found(store) == keyset([b"k1", b"k2", b"k3"], mismatch_type=2)


def test_a_cursor_of_the_earlier_version_is_upgraded_without_losing_updates_or_late_rows(
    mariadb: MariaDB, fresh_database: str, store: DeliveryStore
) -> None:
    """``updateTime`` in the server's local time and a ``recent`` band become ``updateTimeUtc`` and one gap."""
    update_table(mariadb, fresh_database, "DATETIME(6)", "'2020-01-01 00:00:00'")
    execute(mariadb, fresh_database, "DELETE FROM dst WHERE code = 'k9'")  # a late row the band still had to see
    beijing = Connector(session_sql=("SET time_zone = '+08:00'",))
    local_now = query(mariadb, fresh_database, "SELECT CONVERT_TZ(UTC_TIMESTAMP(6), '+00:00', '+08:00')")[0][0]
    cursors = MemoryCursorStore()
    cursors.save("des0", {"insertId": 11, "recent": [[str(local_now), 8]], "updateTime": str(local_now)})
    execute(
        mariadb,
        fresh_database,
        "UPDATE src SET name = 'changed', mtime = CONVERT_TZ(UTC_TIMESTAMP(6), '+00:00', '+08:00') WHERE id = 2",
    )
    plan = update_plan(mariadb, fresh_database, late_commit_second=30, update_scan_second=1)
    summary = SyncRun(plan, cursors, store, connector=beijing).run()

    assert found(store) == keyset([b"k2"], mismatch_type=2) | keyset([b"k9"])
    cursor = cursors.load("des0") or {}
    assert "updateTime" not in cursor
    assert "recent" not in cursor
    assert cursor["updateTimeUtc"] == summary["sourceUtc"]
    assert summary["destinations"]["des0"]["lateCommits"]["found"] == 3  # the band, ids 8..10, read again

"""The recorder: batches written while the caller goes on, every one recorded once flushed, whatever breaks."""

from __future__ import annotations

from typing import TYPE_CHECKING

from cupid_airflow.core.compare import DIFFERENT, MISSING
from cupid_airflow.core.detection import RECONCILE, Detection
from cupid_airflow.core.sql import connect
from tests.support.database import params_for

if TYPE_CHECKING:
    import pytest
    from conftest import MariaDB

    from cupid_airflow.core.store import DeliveryStore


def batch(start: int, count: int, kind: int = MISSING) -> list[Detection]:
    differences = {"name": (b"new", b"old")} if kind == DIFFERENT else None
    return [
        Detection("cfg", "des0", b"k%05d" % i, kind, i, differences, (), RECONCILE) for i in range(start, start + count)
    ]


def live_items(store: DeliveryStore) -> dict[bytes, tuple[int, int]]:
    """row_key -> (type, revision) of the live items; a key twice would be a broken invariant."""
    cursor = store.conn.cursor()
    cursor.execute(f"SELECT row_key, type, revision FROM {store.table} WHERE live = 1")
    rows = cursor.fetchall()
    keys = [r[0] for r in rows]
    assert len(keys) == len(set(keys)), "two live items of one key"
    return {r[0]: (int(r[1]), int(r[2])) for r in rows}


def test_every_batch_is_recorded_once_flushed_and_a_redetection_supersedes(store: DeliveryStore) -> None:
    store.ensure_schema()
    recorder = store.recorder()
    counted = recorder.add(batch(0, 1500))
    counted += recorder.add(batch(1500, 1500))
    counted += recorder.add(batch(1000, 1000, DIFFERENT))  # 1000..1999 detected again, now type 2
    counted += recorder.flush()
    recorder.close()
    assert (counted.new, counted.superseded) == (3000, 1000)
    items = live_items(store)
    assert len(items) == 3000
    assert items[b"k00999"] == (MISSING, 0)
    assert items[b"k01000"] == items[b"k01999"] == (DIFFERENT, 1)
    assert items[b"k02000"] == (MISSING, 0)


def test_a_connection_killed_with_a_batch_in_flight_loses_nothing(
    mariadb: MariaDB, fresh_database: str, store: DeliveryStore, caplog: pytest.LogCaptureFixture
) -> None:
    store.ensure_schema()
    recorder = store.recorder()
    recorder.add(batch(0, 2000))
    recorder.flush()
    other = connect(params_for(mariadb, fresh_database))
    other.cursor().execute(f"LOCK TABLES {store.table} WRITE")  # the next batch waits on the server
    recorder.add(batch(2000, 2000))
    other.cursor().execute(f"KILL CONNECTION {recorder._link.conn.thread_id()}")
    other.cursor().execute("UNLOCK TABLES")
    other.close()
    counted = recorder.flush()  # its answer never comes: the batch goes through the store
    assert "recording 1 batch(es) failed" in caplog.text
    assert counted.new == 2000
    recorder.add(batch(4000, 10))  # and the recorder goes on, on a new connection
    recorder.flush()
    recorder.close()
    assert set(live_items(store)) == {b"k%05d" % i for i in range(4010)}

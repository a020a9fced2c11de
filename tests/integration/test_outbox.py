"""The delivery store as a latest-state, claimed outbox: one test per defect of issue 9, each seen failing first.

Real MariaDB, real HTTP receivers on loopback, the real sync run and dispatcher (and real DAG runs
where the operator is what is tested). Each test names the promise it keeps.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from typing import TYPE_CHECKING, Any

import pytest

from cupid_airflow.core.compare import DestinationSpec
from cupid_airflow.core.destinations import DestinationRegistry
from cupid_airflow.core.detection import RECONCILE, Detection
from cupid_airflow.core.dispatch import DispatchError, DispatchSettings, dispatch
from cupid_airflow.core.sql import ConnectionParams
from cupid_airflow.core.store import DELIVERED, PARKED, PENDING, STATUSES, DeliveryStore
from cupid_airflow.core.sync import MemoryCursorStore, SyncPlan, SyncRun
from tests.support.outbox import (
    COLUMNS,
    dags_of,
    make_copy,
    make_tables,
    new_stem,
    number_of,
    params_of,
    plant_items,
    route,
    statuses,
    store_rows,
    task_states,
    write_config,
)
from tests.support.proxy import FreezableProxy

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from pathlib import Path

    from conftest import MariaDB

    from tests.support.receivers import Hit, Receiver

pytestmark = pytest.mark.integration

CONFIG = "cfg"


@pytest.fixture
def params(mariadb: MariaDB, fresh_database: str) -> ConnectionParams:
    return params_of(mariadb, fresh_database)


@pytest.fixture
def store(params: ConnectionParams) -> Iterator[DeliveryStore]:
    store = DeliveryStore(params)
    store.ensure_schema()
    yield store
    store.close()


def sql(params: ConnectionParams, statement: str, args: Any = None) -> list[tuple[Any, ...]]:
    import MySQLdb

    conn = MySQLdb.connect(
        host=params.host,
        port=params.port,
        user=params.user,
        password=params.password,
        database=params.database,
        charset="utf8mb4",
        autocommit=True,
    )
    try:
        cur = conn.cursor()
        cur.execute(statement, args)
        return list(cur.fetchall())
    finally:
        conn.close()


def sync(params: ConnectionParams, cursors: MemoryCursorStore, store: DeliveryStore, **plan: Any) -> dict[str, Any]:
    """One sync run over ``user`` -> ``user_copy`` (destination ``des0``), inserts and updates."""
    spec = DestinationSpec("des0", plan.pop("table", "user_copy"), "number", plan.pop("columns", COLUMNS))
    start_id = plan.pop("start_id", None)
    return SyncRun(
        SyncPlan(
            config=CONFIG,
            source=params,
            table="user",
            id_column="id",
            by_column="number",
            destinations={"des0": (params, spec)},
            update=True,
            update_column="update_time",
            update_scan_second=0,
            late_commit_second=0,
            **plan,
        ),
        cursors,
        store,
        start_id=start_id,
    ).run()


def names_received(receiver: Receiver, key: str) -> list[str | None]:
    return [json.loads(h.body)["srcColumn"]["name"] for h in receiver.hits if h.key == key]


def items_of(store: DeliveryStore) -> list[Any]:
    return store.items(CONFIG, STATUSES, limit=10_000)


# -- 1. stale bodies --------------------------------------------------------------------------------


def test_a_row_that_changed_and_was_caught_up_is_not_sent_with_its_old_value(
    params: ConnectionParams, store: DeliveryStore, receivers: Callable[..., Receiver], mariadb: MariaDB
) -> None:
    make_tables(mariadb, params.database or "", 3, {1: ("name 1", "a1.png"), 2: ("name 2", "a2.png")})
    sql(params, "UPDATE user SET name = 'old' WHERE id = 3")
    cursors = MemoryCursorStore()
    sync(params, cursors, store)  # 'old' is detected missing
    sql(params, "UPDATE user SET name = 'new', update_time = NOW() + INTERVAL 1 SECOND WHERE id = 3")
    time.sleep(1.1)
    sync(params, cursors, store)  # 'new' is detected: the same live item, superseded
    [item] = items_of(store)
    assert (item.status, item.revision) == (PENDING, 1)
    sql(params, "INSERT INTO user_copy (number, name, avatar) VALUES (%s, 'new', 'a3.png')", (number_of(3),))

    receiver = receivers()
    outcome = dispatch(params, CONFIG, [route(params, "des0", receiver.url)])["des0"]

    assert receiver.hits == [], "the destination caught up: nothing to send, least of all 'old'"
    assert (outcome.resolved, outcome.sent) == (1, 0)
    assert [i.status for i in items_of(store)] == ["resolved"]


def test_an_item_that_failed_is_retried_with_the_current_row_never_the_first_seen(
    params: ConnectionParams, store: DeliveryStore, receivers: Callable[..., Receiver], mariadb: MariaDB
) -> None:
    make_tables(mariadb, params.database or "", 1)
    sql(params, "UPDATE user SET name = 'old'")
    cursors = MemoryCursorStore()
    sync(params, cursors, store)
    key = number_of(1)
    receiver = receivers(respond=lambda hit, nth: 503 if nth == 1 else 204)
    first = dispatch(params, CONFIG, [route(params, "des0", receiver.url)])["des0"]
    assert first.failed and names_received(receiver, key) == ["old"]

    sql(params, "UPDATE user SET name = 'new'")  # the source moves on; the destination still lacks the row
    for _ in range(3):
        dispatch(params, CONFIG, [route(params, "des0", receiver.url)])

    assert names_received(receiver, key) == ["old", "new"], "retried with the row as it is now, once"
    assert [i.status for i in items_of(store)] == [DELIVERED]


def test_a_detection_while_the_item_is_being_sent_keeps_it_live_and_the_newer_row_goes_next(
    params: ConnectionParams, store: DeliveryStore, receivers: Callable[..., Receiver], mariadb: MariaDB
) -> None:
    make_tables(mariadb, params.database or "", 1)
    cursors = MemoryCursorStore()
    sync(params, cursors, store)
    key = number_of(1)
    changed = threading.Event()

    def meanwhile(hit: Hit) -> None:
        # while the callback of the first row is answered, the source changes and a sync run sees it
        if not changed.is_set():
            changed.set()
            sql(params, "UPDATE user SET name = 'newer', update_time = NOW() + INTERVAL 1 SECOND")
            time.sleep(1.1)
            sync(params, cursors, DeliveryStore(params))

    receiver = receivers(before_answer=meanwhile)
    outcome = dispatch(params, CONFIG, [route(params, "des0", receiver.url)])["des0"]
    assert (outcome.sent, outcome.delivered) == (1, 0), "a 2xx for a superseded state does not end the item"
    [item] = items_of(store)
    assert (item.status, item.attempts, item.revision) == (PENDING, 1, 1)

    dispatch(params, CONFIG, [route(params, "des0", receiver.url)])
    assert names_received(receiver, key) == ["name 1", "newer"]
    assert [i.status for i in items_of(store)] == [DELIVERED]


# -- 2. re-detection is a new detection ------------------------------------------------------------------


class Applying:
    """A receiver that, like the owning application, applies ``srcColumn`` to ``user_copy``."""

    def __init__(self, params: ConnectionParams) -> None:
        self.params = params

    def __call__(self, hit: Hit) -> None:
        row = json.loads(hit.body)["srcColumn"]
        sql(
            self.params,
            "INSERT INTO user_copy (number, name, avatar) VALUES (%s, %s, %s) "
            "ON DUPLICATE KEY UPDATE name = VALUES(name), avatar = VALUES(avatar)",
            (row["number"], row["name"], row["avatar"]),
        )


def test_a_destination_that_drifts_again_after_a_delivered_repair_gets_a_new_callback(
    params: ConnectionParams, store: DeliveryStore, receivers: Callable[..., Receiver], mariadb: MariaDB
) -> None:
    make_tables(mariadb, params.database or "", 2, {1: ("name 1", "a1.png")})
    receiver = receivers(before_answer=Applying(params))
    cursors = MemoryCursorStore()
    sync(params, cursors, store)
    dispatch(params, CONFIG, [route(params, "des0", receiver.url)])
    assert statuses(store_rows(params, params.database or "", CONFIG)) == {DELIVERED: 1}

    sql(params, "DELETE FROM user_copy WHERE number = %s", (number_of(2),))  # the copy loses it again
    summary = sync(params, cursors, store, start_id=1)  # a rescan, as a user or the reconcile would
    assert summary["recorded"] == 1, "seen again after it was delivered: a new item"
    dispatch(params, CONFIG, [route(params, "des0", receiver.url)])

    hits = [h for h in receiver.hits if h.key == number_of(2)]
    assert len(hits) == 2 and hits[0].idempotency_key != hits[1].idempotency_key
    assert sql(params, "SELECT name FROM user_copy WHERE number = %s", (number_of(2),)) == [("name 2",)]


def test_a_source_row_going_a_to_b_to_a_is_repaired_each_time(
    params: ConnectionParams, store: DeliveryStore, receivers: Callable[..., Receiver], mariadb: MariaDB
) -> None:
    make_tables(mariadb, params.database or "", 1, {1: ("A", "a1.png")})
    receiver = receivers(before_answer=Applying(params))
    cursors = MemoryCursorStore()
    sync(params, cursors, store)  # the copy holds A already: nothing
    for name in ("B", "A"):  # each change is lost by the CDC; cupid repairs it
        sql(params, "UPDATE user SET name = %s, update_time = NOW() + INTERVAL 1 SECOND", (name,))
        time.sleep(1.1)
        sync(params, cursors, store)
        dispatch(params, CONFIG, [route(params, "des0", receiver.url)])

    assert names_received(receiver, number_of(1)) == ["B", "A"]
    assert sql(params, "SELECT name FROM user_copy") == [("A",)]
    keys = [h.idempotency_key for h in receiver.hits]
    assert len(set(keys)) == 2


def test_a_reconcile_finding_of_a_key_already_delivered_is_recorded_and_sent_again(
    params: ConnectionParams, store: DeliveryStore, receivers: Callable[..., Receiver], mariadb: MariaDB
) -> None:
    make_tables(mariadb, params.database or "", 1)
    receiver = receivers()
    plant_items(store, CONFIG, [1])
    dispatch(params, CONFIG, [route(params, "des0", receiver.url)])
    finding = Detection(CONFIG, "des0", number_of(1).encode(), 1, 1, origin=RECONCILE)
    assert store.record([finding]).new == 1
    assert store.record([finding]).superseded == 1, "the same finding while it is live is not duplicated"
    dispatch(params, CONFIG, [route(params, "des0", receiver.url)])
    assert len(receiver.hits) == 2
    assert sorted((i.origin, i.status) for i in items_of(store)) == [(RECONCILE, DELIVERED), ("sync", DELIVERED)]


# -- 3. column names are case-insensitive at send time too ------------------------------------------------


def test_a_mapping_written_in_another_case_than_the_table_is_judged_as_the_compare_judged_it(
    params: ConnectionParams, store: DeliveryStore, receivers: Callable[..., Receiver], mariadb: MariaDB
) -> None:
    make_tables(mariadb, params.database or "", 1, {1: ("name 1", "stale.png")})
    mapping = {"number": "number", "Avatar": "avatar"}  # the table's column is `avatar`
    summary = sync(params, MemoryCursorStore(), store, columns=mapping)
    assert summary["destinations"]["des0"]["mismatches"] == {"missing": 0, "different": 1}
    receiver = receivers()
    outcome = dispatch(params, CONFIG, [route(params, "des0", receiver.url, columns=mapping)])["des0"]
    assert (outcome.resolved, outcome.delivered) == (0, 1), "a real difference is never marked resolved"
    [hit] = receiver.hits
    assert json.loads(hit.body)["differences"] == {"avatar": {"source": "a1.png", "destination": "stale.png"}}


# -- 4. destinations keep their identity ---------------------------------------------------------------------


def test_removing_the_first_unnamed_destination_never_sends_its_items_elsewhere(
    run_dag: Callable[..., Any],
    xcom_value: Callable[..., Any],
    mariadb: MariaDB,
    fresh_database: str,
    receivers: Callable[..., Receiver],
    tmp_path: Path,
) -> None:
    make_tables(mariadb, fresh_database, 4)
    make_copy(mariadb, fresh_database, "user_cache")
    first, second = receivers(), receivers()
    dsn = mariadb.go_dsn(fresh_database)
    stem = new_stem("ident")
    both = [
        {"callbackNotification": {"url": first.url}},
        {"table": "user_cache", "callbackNotification": {"url": second.url}},
    ]
    path = write_config(tmp_path, stem, dsn, first.url, destinations=both)
    sync, _ = dags_of(path)
    assert task_states(run_dag(sync.partial_subset(task_ids=["compare"], include_upstream=False))) == {
        "compare": "success"
    }
    rows = store_rows(mariadb, fresh_database, stem)
    assert sorted({r.destination for r in rows}) == ["des0", "des1"]  # labels by position, on first sight

    path = write_config(tmp_path, stem, dsn, first.url, destinations=both[1:])  # the first one is removed
    sync, _ = dags_of(path)
    run = run_dag(sync.partial_subset(task_ids=["deliver"], include_upstream=False))

    assert task_states(run) == {"deliver": "success"}
    assert first.hits == [], "des0's items never go to the callback of what is now des[0]"
    assert {json.loads(h.body)["destinationTable"] for h in second.hits} == {"user_cache"}
    assert len(second.hits) == 4
    summary = xcom_value(run, "deliver")
    assert list(summary["destinations"]) == ["des1"], "the remaining destination keeps its identity"
    assert summary["store"]["orphaned"] == {"des0": 4}
    assert statuses([r for r in store_rows(mariadb, fresh_database, stem) if r.destination == "des0"]) == {PENDING: 4}


def test_a_name_that_is_another_destinations_label_is_refused(params: ConnectionParams) -> None:
    registry = DestinationRegistry(params)
    try:
        assert registry.identities("cfg", [(None, "f-a"), (None, "f-b")]) == ["des0", "des1"]
        assert registry.identities("cfg", [(None, "f-b")]) == ["des1"]  # reordered or removed: same label
        assert registry.identities("cfg", [(None, "f-c"), (None, "f-b")]) == ["des2", "des1"]  # never reused
        with pytest.raises(ValueError, match="'des0' is the label cupid gave another, unnamed destination"):
            registry.identities("cfg", [("des0", "f-z")])
    finally:
        registry.close()


# -- 5. one row the store cannot take as it is never blocks the others -------------------------------------


def test_long_keys_huge_ids_and_rows_bigger_than_a_packet_are_recorded_with_the_rest(
    params: ConnectionParams, store: DeliveryStore, receivers: Callable[..., Receiver], mariadb: MariaDB
) -> None:
    database = params.database or ""
    sql(
        params,
        "CREATE TABLE user (id BIGINT UNSIGNED NOT NULL PRIMARY KEY, number VARCHAR(2000) NOT NULL, "
        "name MEDIUMTEXT NULL, avatar VARCHAR(255) NULL, update_time DATETIME NOT NULL DEFAULT CURRENT_TIMESTAMP)",
    )
    sql(params, "CREATE TABLE user_copy (number VARCHAR(2000) NOT NULL, name MEDIUMTEXT NULL, avatar VARCHAR(255))")
    long_key = "k" * 1100
    big = "x" * (6 * 1024 * 1024)  # three of them are more than one 16 MiB packet
    rows = [(1, "ordinary", "n", None), (2, long_key, "n", None)]
    rows += [(3 + n, f"big{n}", big, None) for n in range(3)]
    rows += [(2**63 + 5, "huge-id", "n", None), (2**64 - 1, "max-id", "n", None)]
    for row in rows:
        sql(params, "INSERT INTO user (id, number, name, avatar) VALUES (%s, %s, %s, %s)", row)

    cursors = MemoryCursorStore()
    summary = sync(params, cursors, store)

    assert summary["recorded"] == len(rows) and summary["recordedDead"] == 0
    assert cursors.load("des0")["insertId"] == 2**64  # type: ignore[index]
    assert {i.source_id for i in items_of(store)} == {r[0] for r in rows}
    receiver = receivers()
    outcome = dispatch(params, CONFIG, [route(params, "des0", receiver.url)])["des0"]
    assert (outcome.delivered, outcome.failed) == (len(rows), [])
    bodies = {json.loads(h.body)["key"]: json.loads(h.body) for h in receiver.hits}
    assert bodies[long_key]["srcColumn"]["number"] == long_key
    assert bodies["big2"]["srcColumn"]["name"] == big
    assert bodies["max-id"]["srcColumn"]["id"] == str(2**64 - 1)
    del database


def test_a_detection_the_store_refuses_is_kept_dead_with_the_reason_and_the_others_go_in(
    params: ConnectionParams, store: DeliveryStore
) -> None:
    # a trigger makes the state database refuse one row, as an unforeseen poison would
    sql(
        params,
        "CREATE TRIGGER refuse BEFORE INSERT ON cupid_delivery FOR EACH ROW "
        "IF NEW.row_key = 'poison' AND NEW.status <> 'dead' THEN "
        "SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = 'this row is poison'; END IF",
    )
    detections = [
        Detection(CONFIG, "des0", b"fine-1", 1, 1),
        Detection(CONFIG, "des0", b"poison", 1, 2),
        Detection(CONFIG, "des0", b"k" * 70_000, 1, 3),  # longer than the store keeps
        Detection(CONFIG, "des0", b"fine-2", 2, 4, {"name": (b"a", b"b")}),
    ]
    outcome = store.record(detections)
    assert (outcome.new, outcome.dead) == (2, 2)
    items = {i.row_key[:10]: i for i in items_of(store)}
    assert items[b"fine-1"].status == items[b"fine-2"].status == PENDING
    assert items[b"poison"].status == "dead" and "this row is poison" in (items[b"poison"].note or "")
    assert items[b"k" * 10].status == "dead" and "longer than 65535 bytes" in (items[b"k" * 10].note or "")
    # recording the same poison again adds no second dead item
    assert store.record(detections[1:2]).dead == 1
    assert len(items_of(store)) == 4


# -- 6. claims: one sender per item, rate limits across senders, attempts count sends ---------------------------


def test_concurrent_dispatchers_send_every_item_exactly_once(
    params: ConnectionParams, store: DeliveryStore, receivers: Callable[..., Receiver], mariadb: MariaDB
) -> None:
    make_tables(mariadb, params.database or "", 60)
    plant_items(store, CONFIG, range(1, 61))
    receiver = receivers(delay=0.02)
    settings = [
        DispatchSettings(statuses=(PENDING,), batch_size=7),
        DispatchSettings(statuses=(PENDING, PARKED), batch_size=5, probe=True),
        DispatchSettings(statuses=(PENDING,), batch_size=11),
    ]
    threads = [
        threading.Thread(target=dispatch, args=(params, CONFIG, [route(params, "des0", receiver.url)], s))
        for s in settings
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert sorted(receiver.counts().values()) == [1] * 60, "no item was sent twice"
    assert {(i.status, i.attempts) for i in items_of(store)} == {(DELIVERED, 1)}


def test_a_requeue_leaves_an_item_that_is_being_sent_alone(
    params: ConnectionParams, store: DeliveryStore, receivers: Callable[..., Receiver], mariadb: MariaDB
) -> None:
    make_tables(mariadb, params.database or "", 1)
    plant_items(store, CONFIG, [1])
    requeued: list[int] = []
    receiver = receivers(before_answer=lambda hit: requeued.append(store.requeue(CONFIG, None, (PENDING,))))
    dispatch(params, CONFIG, [route(params, "des0", receiver.url)])
    assert requeued == [0], "the item was claimed: the requeue did not touch it"
    assert [(i.status, i.attempts) for i in items_of(store)] == [(DELIVERED, 1)]


def test_the_rate_limit_holds_across_dispatchers(
    params: ConnectionParams, store: DeliveryStore, receivers: Callable[..., Receiver], mariadb: MariaDB
) -> None:
    make_tables(mariadb, params.database or "", 16)
    plant_items(store, CONFIG, range(1, 17))
    receiver = receivers()
    threads = [
        threading.Thread(
            target=dispatch,
            args=(params, CONFIG, [route(params, "des0", receiver.url, rate_limit_per_second=5)]),
            kwargs={"settings": DispatchSettings(batch_size=4)},
        )
        for _ in range(2)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    arrivals = sorted(h.at for h in receiver.hits)
    assert len(arrivals) == 16
    # 5 per second across both: 16 sends need at least 3 s, and no second holds more than 5 (+1 at its edge)
    assert arrivals[-1] - arrivals[0] >= 15 / 5 - 0.1
    assert max(sum(1 for t in arrivals if start <= t < start + 1) for start in arrivals) <= 6


# -- 7. nothing hangs ---------------------------------------------------------------------------------------------


def test_a_frozen_state_database_fails_the_dispatch_in_bounded_time_and_loses_nothing(
    mariadb: MariaDB, fresh_database: str, receivers: Callable[..., Receiver]
) -> None:
    make_tables(mariadb, fresh_database, 300)
    direct = params_of(mariadb, fresh_database)
    plant_items(DeliveryStore(direct), CONFIG, range(1, 301))
    with FreezableProxy(mariadb.host, mariadb.port) as proxy:
        state = ConnectionParams("127.0.0.1", proxy.port, mariadb.user, mariadb.password, fresh_database, None, 3)
        frozen_at: list[float] = []

        def freeze(hit: Hit) -> None:
            if hit.index == 100:
                proxy.freeze()
                frozen_at.append(time.monotonic())

        receiver = receivers(before_answer=freeze, delay=0.005)
        with pytest.raises(DispatchError, match="des0"):
            dispatch(state, CONFIG, [route(direct, "des0", receiver.url)], DispatchSettings(batch_size=50))
        waited = time.monotonic() - frozen_at[0]
        assert waited < 20, f"the frozen state database held the dispatch for {waited:.0f} s"
        proxy.thaw()
    delivered = {r.key for r in store_rows(direct, fresh_database, CONFIG) if r.status == DELIVERED}
    assert delivered <= receiver.ok_keys()
    sql(direct, "UPDATE cupid_delivery SET claimed_until = NULL")  # the failed dispatcher's leases, run out
    dispatch(direct, CONFIG, [route(direct, "des0", receiver.url)])
    assert statuses(store_rows(direct, fresh_database, CONFIG)) == {DELIVERED: 300}
    assert max(receiver.counts().values()) <= 2


# -- 8. retries ---------------------------------------------------------------------------------------------


def test_a_broken_config_fails_every_task_without_retries(
    run_dag: Callable[..., Any], mariadb: MariaDB, fresh_database: str, tmp_path: Path
) -> None:
    make_tables(mariadb, fresh_database, 1)
    path = write_config(tmp_path, new_stem("broken"), mariadb.go_dsn(fresh_database), "http://127.0.0.1:9/", retries=3)
    sync_dag, _ = dags_of(path)
    path.write_text("{ this is not a config", encoding="utf-8")  # broken after the DAG was parsed
    run = run_dag(sync_dag)
    assert task_states(run) == {"compare": "failed", "deliver": "failed"}
    assert run.get_task_instance("deliver").try_number == 1, "a config error is not retried"


def test_the_last_try_counts_tries_from_max_tries_so_a_cleared_task_gets_its_retries_again() -> None:
    from cupid_airflow.operators.callback import is_last_try

    # retries=3: tries 1-4, the 4th is the last; a clear after it sets max_tries = 4 + 3 (Airflow's rule)
    assert [is_last_try(t, 3) for t in (1, 2, 3, 4)] == [False, False, False, True]
    assert [is_last_try(t, 4 + 3) for t in (5, 6, 7, 8)] == [False, False, False, True]
    assert is_last_try(1, 0)


# -- 9. the smaller ones ---------------------------------------------------------------------------------------


def test_a_429_retry_after_is_honoured_within_the_run_and_does_not_open_the_circuit(
    params: ConnectionParams, store: DeliveryStore, receivers: Callable[..., Receiver], mariadb: MariaDB
) -> None:
    make_tables(mariadb, params.database or "", 3)
    plant_items(store, CONFIG, range(1, 4))
    receiver = receivers(
        respond=lambda hit, nth: 429 if hit.index == 1 else 204,
        answer_headers=lambda hit, nth: {"Retry-After": "1"} if hit.index == 1 else {},
    )
    target = route(params, "des0", receiver.url, breaker_threshold=1, concurrency=1)
    outcome = dispatch(params, CONFIG, [target])["des0"]
    assert not outcome.circuit_open
    assert (outcome.delivered, outcome.failed) == (3, []), "the 429'd item went again once its Retry-After passed"
    assert receiver.hits[1].at - receiver.hits[0].at >= 0.95, "nothing was sent during the Retry-After"
    assert statuses(store_rows(params, params.database or "", CONFIG)) == {DELIVERED: 3}


def test_the_time_budget_is_checked_before_every_callback(
    params: ConnectionParams, store: DeliveryStore, receivers: Callable[..., Receiver], mariadb: MariaDB
) -> None:
    make_tables(mariadb, params.database or "", 40)
    plant_items(store, CONFIG, range(1, 41))
    receiver = receivers(delay=0.25)
    started = time.monotonic()
    target = route(params, "des0", receiver.url, concurrency=1, timeout_second=1.0)
    outcome = dispatch(params, CONFIG, [target], DispatchSettings(max_seconds=2.0))["des0"]
    assert time.monotonic() - started < 8, "sending all 40 takes 10 s: the budget stopped it"
    assert 2 <= outcome.sent <= 8 and outcome.delivered == outcome.sent


def test_oldest_parked_age_counts_from_when_it_was_queued(
    params: ConnectionParams, store: DeliveryStore, mariadb: MariaDB
) -> None:
    make_tables(mariadb, params.database or "", 1)
    plant_items(store, CONFIG, [1])
    sql(params, "UPDATE cupid_delivery SET status = 'dead', live = NULL, detected_at = NOW() - INTERVAL 2 HOUR")
    assert store.requeue(CONFIG) == 1
    assert store.counts(CONFIG)["oldestParkedSecond"] < 60


# -- upgrading ------------------------------------------------------------------------------------------------

STORE_0_1 = """
CREATE TABLE cupid_delivery (
  id BIGINT UNSIGNED AUTO_INCREMENT PRIMARY KEY, config VARCHAR(128) NOT NULL, destination VARCHAR(128) NOT NULL,
  row_key VARBINARY(1024) NOT NULL, version CHAR(40) NOT NULL, idempotency_key CHAR(64) NOT NULL,
  type TINYINT NOT NULL, source_id BIGINT NULL, body LONGBLOB NOT NULL,
  status VARCHAR(16) NOT NULL DEFAULT 'pending', attempts INT NOT NULL DEFAULT 0, last_http_status INT NULL,
  last_error VARCHAR(1024) NULL, detected_at DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
  queued_at DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
  updated_at DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6), delivered_at DATETIME(6) NULL,
  UNIQUE KEY uq_idempotency (idempotency_key), KEY ix_queue (config, status, id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4
"""


def test_a_store_of_version_0_1_is_migrated_and_its_items_are_delivered_as_they_are_now(
    params: ConnectionParams, receivers: Callable[..., Receiver], mariadb: MariaDB
) -> None:
    make_tables(mariadb, params.database or "", 3)
    sql(params, STORE_0_1)
    old = (
        "INSERT INTO cupid_delivery (config, destination, row_key, version, idempotency_key, type, source_id, "
        'body, status) VALUES (%s, \'des0\', %s, %s, %s, 1, %s, \'{"srcColumn": {"name": "stale"}}\', %s)'
    )
    for n, (key, status) in enumerate(
        [(1, "delivered"), (1, "pending"), (1, "pending"), (2, "parked"), (3, "dead")], start=1
    ):
        sql(params, old, (CONFIG, number_of(key), "v" * 40, f"{n:064d}", key, status))

    store = DeliveryStore(params)
    store.ensure_schema()
    rows = sql(params, "SELECT id, status, live, HEX(key_hash) FROM cupid_delivery ORDER BY id")
    assert [(r[0], r[1], r[2]) for r in rows] == [
        (1, "delivered", None),
        (2, "superseded", None),  # an older live item of the same key
        (3, "pending", 1),
        (4, "parked", 1),
        (5, "dead", None),
    ]
    assert rows[2][3].lower() == hashlib.sha256(number_of(1).encode()).hexdigest()

    receiver = receivers()
    dispatch(params, CONFIG, [route(params, "des0", receiver.url)])
    dispatch(params, CONFIG, [route(params, "des0", receiver.url)], DispatchSettings(statuses=(PARKED,)))
    names = {h.key: json.loads(h.body)["srcColumn"]["name"] for h in receiver.hits}
    assert names == {number_of(1): "name 1", number_of(2): "name 2"}, "built from today's rows, not 0.1's bodies"
    # the migrated dead item's key, detected again, is a new item
    assert store.record([Detection(CONFIG, "des0", number_of(3).encode(), 1, 3)]).new == 1
    store.close()


def test_the_shared_breaker_opens_at_its_threshold_and_any_success_closes_it(params: ConnectionParams) -> None:
    registry = DestinationRegistry(params)
    try:
        count = registry.count_sends
        kwargs = {"threshold": 3, "cooldown_second": 60}
        assert not count("cfg", "d", succeeded=False, failures_after=2, **kwargs).opened
        opened = count("cfg", "d", succeeded=False, failures_after=1, **kwargs)  # 3 in a row, across calls
        assert opened.opened and opened.open_for_second > 50
        # a group with a success, then one failure: closed, and counting again from 1
        after = count("cfg", "d", succeeded=True, failures_after=1, **kwargs)
        assert (after.opened, after.failures) == (False, 1)
        reopened = count("cfg", "d", succeeded=True, failures_after=3, **kwargs)  # a success, then 3 failures
        assert reopened.opened
    finally:
        registry.close()

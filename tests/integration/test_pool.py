"""The failure pool's query layer (core.pool, core.pool_actions) and the store's indexes, on the real MariaDB."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

import pytest

from cupid_airflow.core import pool, pool_actions
from cupid_airflow.core.destinations import DestinationRegistry
from cupid_airflow.core.detection import Detection
from cupid_airflow.core.pool import BoundedStore, ConfiguredDestination, PoolFilter, PoolNotFound, PoolQueryError
from cupid_airflow.core.pool_actions import Selection
from cupid_airflow.core.store import Attempt, DeliveryStore
from cupid_airflow.core.store_schema import ATTEMPT_SCHEMA, SCHEMA
from tests.support.outbox import params_of

if TYPE_CHECKING:
    from collections.abc import Iterator

    from conftest import MariaDB

    from cupid_airflow.core.sql import ConnectionParams

pytestmark = pytest.mark.integration

CONFIG = "cfg"
COPY = ConfiguredDestination("copy", "copy", "https://hooks.example.com/*?***")


@pytest.fixture
def params(mariadb: MariaDB, fresh_database: str) -> ConnectionParams:
    return params_of(mariadb, fresh_database)


@pytest.fixture
def store(params: ConnectionParams) -> Iterator[BoundedStore]:
    store = BoundedStore(params)
    store.ensure_schema()
    yield store
    store.close()


@pytest.fixture
def registry(params: ConnectionParams) -> Iterator[DestinationRegistry]:
    registry = DestinationRegistry(params)
    yield registry
    registry.close()


def plant(store: BoundedStore, keys: list[str], destination: str = "copy", type_: int = 1) -> list[int]:
    store.record([Detection(CONFIG, destination, k.encode(), type_, n) for n, k in enumerate(keys, start=1)])
    found = store.query(
        "SELECT id FROM cupid_delivery WHERE config = %s AND destination = %s AND row_key IN "
        f"({', '.join(['%s'] * len(keys))}) ORDER BY id",
        [CONFIG, destination, *keys],
    )
    return [int(r[0]) for r in found]


def set_rows(store: BoundedStore, ids: list[int], assignments: str, args: tuple[Any, ...] = ()) -> None:
    store.query(f"UPDATE cupid_delivery SET {assignments} WHERE id IN ({', '.join(map(str, ids))})", args)


def statuses(store: BoundedStore) -> dict[int, str]:
    return {int(r[0]): r[1].decode() for r in store.query("SELECT id, status FROM cupid_delivery ORDER BY id")}


# -- the store's indexes ------------------------------------------------------------------------------------


def test_a_store_made_by_an_earlier_version_gets_its_columns_and_indexes_and_keeps_its_rows(
    params: ConnectionParams,
) -> None:
    older = DeliveryStore(params)
    old_schema = "\n".join(line for line in SCHEMA.splitlines() if "ix_age" not in line and "ix_ended" not in line)
    old_schema = old_schema.replace(",\n  KEY ix_key (config, destination, status, row_key(64))", "")
    older._execute(old_schema.format(table=older.table))
    old_attempts = ATTEMPT_SCHEMA.replace("  KEY ix_item (item_id, id),\n", "")
    old_attempts = old_attempts.replace("  retry_after_ms   INT             NULL,\n", "")
    older._execute(old_attempts.format(table=older.attempt_table))
    older.record([Detection(CONFIG, "copy", b"u-1", 1, 1)])

    store = DeliveryStore(params)
    store.ensure_schema()
    store.ensure_schema()  # nothing left to add

    def indexes(table: str) -> set[str]:
        return {r[2].decode() for r in store._execute(f"SHOW INDEX FROM {table}").fetchall()}

    assert {"ix_age", "ix_ended", "ix_key", "ix_queue", "uq_live"} <= indexes(store.table)
    assert "ix_item" in indexes(store.attempt_table)
    columns = {r[0].decode() for r in store._execute(f"SHOW COLUMNS FROM {store.attempt_table}").fetchall()}
    assert "retry_after_ms" in columns  # a column added to the attempt table since it was made
    assert store.pending(CONFIG) == 1
    store.close()
    older.close()


# -- overview --------------------------------------------------------------------------------------------------


def test_the_overview_counts_each_destination_and_caps_big_counts(
    store: BoundedStore, registry: DestinationRegistry
) -> None:
    ids = plant(store, [f"u-{i}" for i in range(1, 11)])
    set_rows(store, ids[:3], "status = 'parked', queued_at = NOW(6) - INTERVAL 2 HOUR")
    error = "redirect 302 to https://u:pw@h.example/hook/T0k3n?token=abc"
    set_rows(store, ids[3:5], "status = 'dead', live = NULL, last_error = %s", (error,))
    set_rows(store, ids[5:7], "status = 'delivered', live = NULL")
    set_rows(store, ids[7:8], "status = 'delivered', live = NULL, updated_at = NOW(6) - INTERVAL 2 DAY")
    plant(store, ["g-1", "g-2"], destination="gone")
    registry.count_sends(CONFIG, "copy", succeeded=False, failures_after=5, threshold=5, cooldown_second=60,
                         last_error="HTTP 401: Authorization: Bearer abcdef123456")  # fmt: skip

    found = pool.overview(store, registry, CONFIG, [COPY], cap=2)

    copy, gone = found.destinations
    assert (copy.destination, copy.configured, gone.destination, gone.configured) == ("copy", True, "gone", False)
    assert copy.counts == {"pending": 2, "parked": 2, "dead": 2, "superseded": 0, "delivered": 2, "resolved": 0}
    assert copy.capped == ["parked"], "3 parked, counted up to the cap of 2"
    assert copy.oldest_parked_second is not None and copy.oldest_parked_second >= 7200
    assert copy.circuit_opened and copy.circuit_open_second > 0 and copy.circuit_failures == 5
    assert copy.last_error == "redirect 302 to https://h.example/hook/***?***"
    assert copy.last_send_error == "HTTP 401: Authorization: ***"
    assert gone.orphaned == 2 and found.orphaned == {"gone": 2}
    assert copy.callback == COPY.callback


def test_the_overview_of_a_state_database_without_a_store_says_so(params: ConnectionParams) -> None:
    store = BoundedStore(params)
    with pytest.raises(pool.PoolUnavailable, match="no delivery store"):
        pool.overview(store, DestinationRegistry(params), CONFIG, [COPY])


def test_a_slow_statement_is_cut_off(params: ConnectionParams) -> None:
    store = BoundedStore(params, statement_second=0.2)
    with pytest.raises(pool.PoolUnavailable, match="took too long"):
        store.query("SELECT SLEEP(3)")
    assert store.query("SELECT 1") == [(b"1",)], "the next statement reconnects"


# -- pages ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("key_prefix", ["", "u-"])
def test_keyset_pages_cover_every_matching_item_once_in_both_orders(store: BoundedStore, key_prefix: str) -> None:
    ids = plant(store, [f"u-{i}" for i in range(1, 24)])
    set_rows(store, ids[::3], "status = 'parked'")
    set_rows(store, ids[1::3], "status = 'dead', live = NULL")
    set_rows(store, ids[:6], "queued_at = NOW(6) - INTERVAL 1 HOUR")  # ties: the same queued_at
    wanted = PoolFilter(statuses=("parked", "dead"), key_prefix=key_prefix)
    chosen = set(ids[::3] + ids[1::3])
    expected = [i for i in ids[:6] if i in chosen] + [i for i in ids[6:] if i in chosen]  # oldest queued first
    for newest_first in (True, False):
        seen: list[int] = []
        cursor = None
        while True:
            page = pool.page(store, CONFIG, "copy", wanted, cursor=cursor, limit=4, newest_first=newest_first)
            seen += [i.id for i in page.items]
            cursor = page.next_cursor
            if cursor is None:
                break
        assert seen == (expected[::-1] if newest_first else expected)
    with pytest.raises(PoolQueryError, match="not a cursor"):
        pool.page(store, CONFIG, "copy", wanted, cursor="1' OR '1'='1")


def test_filters_by_type_key_prefix_and_age(store: BoundedStore) -> None:
    ids = plant(store, ["a%_1", "a%_2", "ab_3", "b-4"]) + plant(store, ["a%_5"], type_=2)
    set_rows(store, ids, "status = 'parked'")
    set_rows(store, ids[:1], "queued_at = NOW(6) - INTERVAL 3 DAY")

    def keys(**chosen: Any) -> list[str]:
        found = pool.page(store, CONFIG, "copy", PoolFilter(("parked",), **chosen), newest_first=False)
        return [i.key for i in found.items]

    assert keys(key_prefix="a%_") == ["a%_1", "a%_2", "a%_5"], "% and _ are matched as themselves"
    assert keys(key_prefix="a%_", type=2) == ["a%_5"]
    assert keys(min_age_second=86400) == ["a%_1"]
    assert keys(max_age_second=86400) == ["a%_2", "ab_3", "b-4", "a%_5"]
    assert keys(key_prefix="' OR 1=1 -- ") == []
    assert statuses(store) == dict.fromkeys(ids, "parked"), "nothing else touched"


@pytest.mark.parametrize(
    ("chosen", "message"),
    [
        ({"statuses": ()}, "at least one status"),
        ({"statuses": ("parked", "lost")}, "unknown status"),
        ({"type": 7}, "type is 1"),
        ({"key_prefix": "x" * 300}, "at most 255 bytes"),
        ({"min_age_second": -1}, "an age is"),
        ({"min_age_second": 10, "max_age_second": 5}, "above the maximum"),
    ],
)
def test_a_bad_filter_is_refused_with_the_reason(chosen: dict[str, Any], message: str) -> None:
    with pytest.raises(PoolQueryError, match=message):
        PoolFilter(**chosen)


def test_page_sizes_and_destinations_are_checked(store: BoundedStore) -> None:
    with pytest.raises(PoolQueryError, match="1 to 500"):
        pool.page(store, CONFIG, "copy", PoolFilter(), limit=100000)
    with pytest.raises(PoolQueryError, match="not a destination"):
        pool.page(store, CONFIG, "copy'; DROP TABLE cupid_delivery; --", PoolFilter())


# -- one item -------------------------------------------------------------------------------------------------


def test_an_item_shows_its_attempts_bodies_and_keys_without_secrets(store: BoundedStore) -> None:
    (item_id,) = plant(store, ["u-1"])
    claim = store.claim(CONFIG, "copy", ("pending",), limit=1, lease_second=60)
    store.record_attempts(
        claim,
        [Attempt(item_id, False, 1, "k" * 64, "v" * 40, b'{"srcColumn": {"number": "u-1"}}', 500,
                 "HTTP 500: password=hunter2 at http://cb.example/x/abc123?sig=1", 0.01)],
    )  # fmt: skip

    detail = pool.item_detail(store, CONFIG, item_id)

    assert detail.item.idempotency_key == "k" * 64 and detail.item.attempts == 1
    (attempt,) = detail.attempts
    assert attempt["body"] == '{"srcColumn": {"number": "u-1"}}' and attempt["idempotencyKey"] == "k" * 64
    assert attempt["error"] == "HTTP 500: password=*** at http://cb.example/x/***?***"
    assert detail.item.last_error == attempt["error"]
    with pytest.raises(PoolNotFound):
        pool.item_detail(store, "other", item_id)
    with pytest.raises(PoolNotFound):
        pool.item_detail(store, CONFIG, item_id + 1)


# -- actions --------------------------------------------------------------------------------------------------


def test_requeue_by_ids_leaves_claimed_items_and_live_keys_alone_and_says_so(store: BoundedStore) -> None:
    ids = plant(store, ["u-1", "u-2", "u-3", "u-4"])
    set_rows(store, ids[:3], "status = 'dead', live = NULL")
    store.claim(CONFIG, "copy", ("pending",), limit=10, lease_second=60)  # u-4, pending, is being sent
    set_rows(store, ids[:1], "claimed_until = NOW(6) + INTERVAL 1 MINUTE")  # u-1: dead but claimed
    plant(store, ["u-2"])  # u-2 is live again: its dead item cannot be requeued
    selection = Selection("copy", ids=tuple(ids))

    preview = pool_actions.preview(store, CONFIG, "requeue", selection)
    outcome = pool_actions.apply(store, CONFIG, "requeue", selection)

    assert (preview.matched, preview.claimed, preview.ineligible) == (3, 1, 1)
    assert outcome == pool_actions.ActionOutcome("requeue", 1, 1, 1, 1, False)
    assert [statuses(store)[i] for i in ids] == ["dead", "dead", "parked", "pending"]


def test_requeue_of_a_filter_touches_only_what_its_preview_counted(store: BoundedStore) -> None:
    ids = plant(store, [f"u-{i}" for i in range(1, 6)])
    set_rows(store, ids, "status = 'dead', live = NULL")
    selection = Selection("copy", pool_filter=PoolFilter(("dead",)))
    preview = pool_actions.preview(store, CONFIG, "requeue", selection)
    later = plant(store, ["u-9"])
    set_rows(store, later, "status = 'dead', live = NULL")

    with pytest.raises(PoolQueryError, match="up_to_id"):
        pool_actions.apply(store, CONFIG, "requeue", selection)
    outcome = pool_actions.apply(store, CONFIG, "requeue", dataclasses.replace(selection, up_to_id=preview.up_to_id))

    assert (preview.matched, outcome.acted) == (5, 5)
    assert statuses(store) == {**dict.fromkeys(ids, "parked"), later[0]: "dead"}


def test_requeue_of_dead_and_parked_items_acts_on_each_once(store: BoundedStore) -> None:
    ids = plant(store, [f"u-{i}" for i in range(1, 5)])
    set_rows(store, ids[:2], "status = 'dead', live = NULL")
    set_rows(store, ids[2:], "status = 'parked'")
    selection = Selection("copy", pool_filter=PoolFilter(("dead", "parked")))
    preview = pool_actions.preview(store, CONFIG, "requeue", selection)

    outcome = pool_actions.apply(store, CONFIG, "requeue", dataclasses.replace(selection, up_to_id=preview.up_to_id))

    assert (preview.matched, outcome.acted) == (4, 4), "a dead item requeued (now parked) is not requeued again"


def test_purge_refuses_undelivered_items_unless_told_and_deletes_their_attempts(store: BoundedStore) -> None:
    ids = plant(store, ["u-1", "u-2", "u-3"])
    set_rows(store, ids[:2], "status = 'delivered', live = NULL")
    store.query(
        "INSERT INTO cupid_delivery_attempt (item_id, flush, ok, type, idempotency_key, version, body, elapsed_ms) "
        f"VALUES ({ids[0]}, 'f', 1, 1, 'k', 'v', 'b', 1)"
    )
    with pytest.raises(PoolQueryError, match="undelivered=true"):
        pool_actions.preview(store, CONFIG, "purge", Selection("copy", pool_filter=PoolFilter(("pending",))))
    by_ids = Selection("copy", ids=tuple(ids))
    assert pool_actions.apply(store, CONFIG, "purge", by_ids).acted == 2, "the pending one is not purged"
    assert statuses(store) == {ids[2]: "pending"}
    assert store.query("SELECT COUNT(*) FROM cupid_delivery_attempt") == [(b"0",)]
    assert pool_actions.apply(store, CONFIG, "purge", by_ids, undelivered=True).acted == 1
    assert statuses(store) == {}


@pytest.mark.parametrize(
    "selection",
    [
        {"ids": ()},
        {"ids": tuple(range(1, 502))},
        {"ids": (0,)},
        {"ids": (1,), "pool_filter": PoolFilter()},
        {},
    ],
)
def test_a_bad_selection_is_refused(selection: dict[str, Any]) -> None:
    with pytest.raises(PoolQueryError):
        Selection("copy", **selection)

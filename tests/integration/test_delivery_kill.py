"""Delivery survives a SIGKILL of the dispatcher and a restart of the state database.

Nothing is lost, and every duplicate keeps the Idempotency-Key of its first delivery.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from cupid_airflow.core.dispatch import DispatchSettings, dispatch
from cupid_airflow.core.sql import ConnectionParams
from cupid_airflow.core.store import DeliveryStore
from tests.support.mariadb_server import PrivateMariaDB
from tests.support.outbox import (
    dags_of,
    make_tables,
    new_stem,
    plant_items,
    route,
    statuses,
    store_rows,
    task_states,
    write_config,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from conftest import MariaDB

    from tests.support.receivers import Hit, Receiver

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


# == SIGKILL of the delivering process ====================================================================

CHILD_DISPATCH = r"""
import json, sys
from cupid_airflow.core.dispatch import DispatchSettings, dispatch
from cupid_airflow.core.sql import ConnectionParams
from tests.support.outbox import route

args = json.loads(sys.argv[1])
params = ConnectionParams(**args["params"])
routes = [route(params, "des0", args["url"], config=args["config"], concurrency=args["concurrency"])]
outcomes = dispatch(params, args["config"], routes, DispatchSettings(batch_size=1000))
print(json.dumps({name: outcome.as_dict() for name, outcome in outcomes.items()}))
"""


@pytest.mark.parametrize("kill_point", ["early", "midway", "after_the_last_answer"])
def test_sigkill_during_delivery_loses_nothing_and_duplicates_keep_their_idempotency_key(
    kill_point: str,
    mariadb: MariaDB,
    fresh_database: str,
    receivers: Callable[..., Receiver],
) -> None:
    total = 400
    config = new_stem("kill")
    params = ConnectionParams(
        host=mariadb.host, port=mariadb.port, user=mariadb.user, password=mariadb.password, database=fresh_database
    )
    make_tables(mariadb, fresh_database, total)
    store = DeliveryStore(params)
    planted = plant_items(store, config, range(1, total + 1))
    child: list[subprocess.Popen[str]] = []
    killed = threading.Event()

    def kill_child() -> None:
        if not killed.is_set():
            killed.set()
            os.kill(child[0].pid, signal.SIGKILL)

    def before(hit: Hit) -> None:
        # killed while this request is in flight: it reached the receiver, its answer never came back
        kill_at = {"early": 3, "midway": 200}.get(kill_point)
        if hit.index == kill_at:
            kill_child()

    def after(hit: Hit) -> None:
        if kill_point == "after_the_last_answer" and hit.index == total:
            kill_child()

    receiver = receivers(delay=0.005, before_answer=before, after_answer=after)
    arguments = {
        "params": {
            "host": params.host,
            "port": params.port,
            "user": params.user,
            "password": params.password,
            "database": fresh_database,
        },
        "config": config,
        "url": receiver.url,
        "concurrency": 2,
    }
    child.append(
        subprocess.Popen(
            [sys.executable, "-c", CHILD_DISPATCH, json.dumps(arguments)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=REPO,
        )
    )
    _, stderr = child[0].communicate(timeout=60)
    assert child[0].returncode == -signal.SIGKILL, f"the child was not killed at {kill_point}: {stderr[-2000:]}"

    at_kill = statuses(store_rows(mariadb, fresh_database, config))
    if kill_point == "early":
        assert at_kill["delivered"] <= 2, at_kill
    elif kill_point == "midway":
        assert 0 < at_kill["delivered"] < 200, at_kill  # results are recorded as they come, not in big groups
    # every item the store calls delivered was answered 2xx
    delivered_then = {r.key for r in store_rows(mariadb, fresh_database, config) if r.status == "delivered"}
    assert delivered_then <= receiver.ok_keys()

    # run the dispatch again, to completion, once the killed child's claims have expired
    receiver.before_answer = receiver.after_answer = None
    settings = DispatchSettings(batch_size=1000, lease_second=60)
    try:
        _expire_claims(mariadb, fresh_database)
        routes = [route(params, "des0", receiver.url, config=config, concurrency=2)]
        outcome = dispatch(params, config, routes, settings)
    finally:
        store.close()
    assert outcome["des0"].failed == []

    rows = store_rows(mariadb, fresh_database, config)
    assert statuses(rows) == {"delivered": total}, "no item is left pending"
    assert receiver.ok_keys() == set(planted), "every planted key was received"
    keys: dict[str | None, str | None] = {}
    for hit in receiver.hits:
        assert keys.setdefault(hit.key, hit.idempotency_key) == hit.idempotency_key, f"{hit.key} sent with two keys"
        assert json.loads(hit.body)["idempotencyKey"] == hit.idempotency_key
    duplicates = {k: n for k, n in receiver.counts().items() if n > 1}
    if kill_point != "after_the_last_answer":
        assert duplicates, "the request in flight at the kill must have been sent again"


def _expire_claims(mariadb: MariaDB, database: str) -> None:
    """Let the lease of a killed dispatcher run out now (instead of waiting for it)."""
    conn = mariadb.connect(database)
    try:
        conn.cursor().execute(
            "UPDATE cupid_delivery SET claimed_until = NOW(6) - INTERVAL 1 SECOND WHERE claimed_until IS NOT NULL"
        )
    finally:
        conn.close()


# == the state database restarts during delivery ========================================================


@pytest.fixture
def private_mariadb() -> Iterator[PrivateMariaDB]:
    with PrivateMariaDB() as server:
        yield server


def test_state_database_restart_during_delivery(
    run_dag: Callable[..., Any],
    mariadb: MariaDB,
    fresh_database: str,
    private_mariadb: PrivateMariaDB,
    receivers: Callable[..., Receiver],
    tmp_path: Path,
) -> None:
    total = 500
    planted = make_tables(mariadb, fresh_database, total)
    private_mariadb.execute("CREATE DATABASE cupid_state")
    state = private_mariadb.params("cupid_state")
    snapshots: list[tuple[set[str], set[str | None]]] = []
    restarted = threading.Event()

    def restart() -> None:
        time.sleep(0.3)
        private_mariadb.start()
        # at this instant: everything the store calls delivered was answered 2xx by the receiver
        delivered = {r.key for r in store_rows(state, "cupid_state", stem) if r.status == "delivered"}
        snapshots.append((delivered, receiver.ok_keys()))
        restarted.set()

    def before(hit: Hit) -> None:
        if hit.index == 300:  # after the first group of 200 results was recorded
            private_mariadb.kill()
            threading.Thread(target=restart, daemon=True).start()

    receiver = receivers(delay=0.01, before_answer=before)
    stem = new_stem("statedb")
    sync, _ = dags_of(
        write_config(
            tmp_path,
            stem,
            mariadb.go_dsn(fresh_database),
            receiver.url,
            retries=3,
            worker_number=2,
            extra={"state": {"dsn": f"root:@tcp(127.0.0.1:{private_mariadb.port})/cupid_state"}},
        )
    )

    dag_run = run_dag(sync)

    assert restarted.wait(30), "the state database was never killed and restarted"
    assert task_states(dag_run) == {"compare": "success", "deliver": "success"}
    assert dag_run.get_task_instance("deliver").try_number >= 2, "the try during the outage must fail"
    [(delivered_at_restart, received_at_restart)] = snapshots
    assert 0 < len(delivered_at_restart) < total
    assert delivered_at_restart <= received_at_restart, "marked delivered but never answered 2xx"
    rows = store_rows(state, "cupid_state", stem)
    assert statuses(rows) == {"delivered": total}
    assert {r.key for r in rows} == planted
    assert receiver.ok_keys() == planted
    key_of_item = {r.key: r.idempotency_key for r in rows}
    assert all(h.idempotency_key == key_of_item.get(str(h.key)) for h in receiver.hits)

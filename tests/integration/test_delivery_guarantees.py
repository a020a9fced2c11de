"""Delivery guarantees, end to end: real MariaDB, real HTTP receivers on 127.0.0.1, real DAG runs.

What a user relies on once a mismatch is recorded in the delivery store:

- at least once: whatever the receiver does (down, 5xx, 4xx, redirect, slow, reset, garbage), every
  recorded item is eventually delivered, and every duplicate carries the same ``Idempotency-Key`` as
  its first delivery (SIGKILL and state-database restarts: test_delivery_kill.py);
- each Airflow try sends only what is still undelivered; what fails after the last try is parked
  and the failure-pool DAG delivers it once the receiver is back;
- every failure is recorded on its item with a message a person can act on;
- items the destination caught up with are resolved, not sent; bodies are signed;
- concurrency and rate limits hold.

Nothing is mocked: the sync DAG (``compare >> deliver``) and the failure-pool DAG (``drain``) run with
``dag.test()``; receivers are aiohttp or raw-socket servers in background threads of this process
(``dag.test()`` runs tasks in this process).
"""

from __future__ import annotations

import json
import secrets
import time
from collections import Counter
from typing import TYPE_CHECKING, Any

import pytest

from cupid_airflow.core.payload import verify_signature
from tests.support.outbox import (
    dags_of,
    make_tables,
    new_stem,
    number_of,
    source_row,
    statuses,
    store_rows,
    task_states,
    write_config,
)
from tests.support.receivers import Hit, RawHttpReceiver, Receiver, free_port

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    from conftest import AirflowVariables, MariaDB

pytestmark = pytest.mark.integration


# == at least once through the failure pool =======================================================


@pytest.mark.parametrize("down", ["nothing_listens", "answers_503"])
@pytest.mark.parametrize("count", [5, 30])
def test_items_outlive_the_short_retries_and_the_failure_pool_delivers_them_all(
    down: str,
    count: int,
    run_dag: Callable[..., Any],
    xcom_value: Callable[..., Any],
    mariadb: MariaDB,
    fresh_database: str,
    receivers: Callable[..., Receiver],
    tmp_path: Path,
) -> None:
    # 5 items fail through every try; 30 are more than the circuit breaker's 20: the first try trips it
    # and parks them all at once (no retries), so the sync DAG keeps its cadence
    planted = make_tables(mariadb, fresh_database, count)
    if down == "nothing_listens":
        port = free_port()
        url = f"http://127.0.0.1:{port}/cupid/callback"
        receiver = None
    else:
        receiver = receivers(respond=lambda hit, nth: 503)
        url = receiver.url
    stem = new_stem("alo")
    sync, pool = dags_of(write_config(tmp_path, stem, mariadb.go_dsn(fresh_database), url, retries=2))

    started = time.monotonic()
    dag_run = run_dag(sync)
    elapsed = time.monotonic() - started

    deliver_ti = dag_run.get_task_instance("deliver")
    if count == 5:
        assert task_states(dag_run) == {"compare": "success", "deliver": "failed"}
        assert deliver_ti.try_number == 3, "retries=2 means three tries"
        assert elapsed >= 2, "two retry delays of failureJobRetrySecond=1 were waited"
    else:
        assert task_states(dag_run) == {"compare": "success", "deliver": "success"}
        assert deliver_ti.try_number == 1, "the tripped circuit parks at once: no retries"
        assert xcom_value(dag_run, "deliver")["destinations"]["copy0"]["circuitOpen"] is True
    summary = xcom_value(dag_run, "deliver")
    assert summary["parked"] == count
    rows = store_rows(mariadb, fresh_database, stem)
    assert {r.key for r in rows} == planted
    assert statuses(rows) == {"parked": count}

    # while the circuit is open, a new item is parked by the next run without being sent
    conn = mariadb.connect(fresh_database)
    try:
        conn.cursor().execute("INSERT INTO user (number, name) VALUES ('n-late', 'late')")
    finally:
        conn.close()
    hits_before = len(receiver.hits) if receiver else 0
    next_run = run_dag(sync)
    assert task_states(next_run) == {"compare": "success", "deliver": "success"}
    assert next_run.get_task_instance("deliver").try_number == 1
    assert (len(receiver.hits) if receiver else 0) == hits_before
    planted = planted | {"n-late"}
    assert statuses(store_rows(mariadb, fresh_database, stem)) == {"parked": count + 1}

    # the receiver comes back
    if receiver is None:
        receiver = receivers(port=port)
    else:
        receiver.respond = None
    pool_run = run_dag(pool)

    assert task_states(pool_run) == {"drain": "success"}, xcom_value(pool_run, "drain")
    rows = store_rows(mariadb, fresh_database, stem)
    assert statuses(rows) == {"delivered": count + 1}
    assert receiver.ok_keys() == planted
    assert {h.idempotency_key for h in receiver.hits if h.status == 204} == {r.idempotency_key for r in rows}


# == each try sends only what is still undelivered ======================================================


def test_a_retry_sends_only_the_items_that_failed(
    run_dag: Callable[..., Any],
    mariadb: MariaDB,
    fresh_database: str,
    receivers: Callable[..., Receiver],
    tmp_path: Path,
) -> None:
    planted = make_tables(mariadb, fresh_database, 12)
    flaky = number_of(7)
    receiver = receivers(respond=lambda hit, nth: 503 if hit.key == flaky and nth == 1 else 204)
    stem = new_stem("once")
    sync, _ = dags_of(write_config(tmp_path, stem, mariadb.go_dsn(fresh_database), receiver.url, retries=1))

    dag_run = run_dag(sync)

    assert task_states(dag_run) == {"compare": "success", "deliver": "success"}
    assert dag_run.get_task_instance("deliver").try_number == 2
    counts = receiver.counts()
    assert set(counts) == planted
    assert counts[flaky] == 2
    assert {k: n for k, n in counts.items() if k != flaky} == dict.fromkeys(planted - {flaky}, 1)
    rows = store_rows(mariadb, fresh_database, stem)
    assert statuses(rows) == {"delivered": 12}
    assert {r.key: r.attempts for r in rows} == {k: 2 if k == flaky else 1 for k in planted}


def test_a_delivered_item_records_the_answer_that_delivered_it(
    run_dag: Callable[..., Any],
    mariadb: MariaDB,
    fresh_database: str,
    receivers: Callable[..., Receiver],
    tmp_path: Path,
) -> None:
    """After a 503 then a 204, the item's last_http_status is 204 (not the stale 503) and last_error is gone."""
    planted = make_tables(mariadb, fresh_database, 3)
    flaky = number_of(2)
    receiver = receivers(respond=lambda hit, nth: 503 if hit.key == flaky and nth == 1 else 204)
    stem = new_stem("laststatus")
    sync, _ = dags_of(write_config(tmp_path, stem, mariadb.go_dsn(fresh_database), receiver.url, retries=1))

    dag_run = run_dag(sync)

    assert task_states(dag_run) == {"compare": "success", "deliver": "success"}
    rows = {r.key: r for r in store_rows(mariadb, fresh_database, stem)}
    assert set(rows) == planted
    assert all(r.status == "delivered" and r.last_error is None for r in rows.values())
    recorded = {k: r.last_http_status for k, r in sorted(rows.items())}
    assert recorded == dict.fromkeys(sorted(planted), 204), f"last_http_status of delivered items: {recorded}"


# == every kind of receiver failure is recorded, nothing is lost ==========================================

BEHAVIOURS = {1: "500", 2: "404", 3: "301", 4: "slow", 5: "reset", 6: "garbage"}


def test_receiver_failures_are_recorded_per_item_and_nothing_is_lost(
    run_dag: Callable[..., Any],
    xcom_value: Callable[..., Any],
    mariadb: MariaDB,
    fresh_database: str,
    receivers: Callable[..., Receiver],
    tmp_path: Path,
) -> None:
    planted = make_tables(mariadb, fresh_database, len(BEHAVIOURS))
    behaviour_of = {number_of(i): b for i, b in BEHAVIOURS.items()}
    refused_port = free_port()
    stem = new_stem("fail")
    with RawHttpReceiver(lambda key: behaviour_of.get(key or "", "ok")) as raw:
        path = write_config(
            tmp_path,
            stem,
            mariadb.go_dsn(fresh_database),
            raw.url,
            retries=1,
            destinations=[
                {"name": "main", "callbackNotification": {"url": raw.url, "timeoutSecond": 0.5}},
                {
                    "name": "refused",
                    "callbackNotification": {
                        "url": f"http://127.0.0.1:{refused_port}/cupid/callback",
                        "timeoutSecond": 0.5,
                    },
                },
            ],
        )
        sync, pool = dags_of(path)

        dag_run = run_dag(sync)

        assert task_states(dag_run) == {"compare": "success", "deliver": "failed"}
        summary = xcom_value(dag_run, "deliver")
        assert summary["parked"] == 12
        assert summary["destinations"]["main"]["failed"] == 6
        assert summary["destinations"]["refused"]["failed"] == 6
        rows = store_rows(mariadb, fresh_database, stem)
        assert statuses(rows) == {"parked": 12}
        assert all(r.attempts == 2 for r in rows), [(r.destination, r.key, r.attempts) for r in rows]
        main = {r.key: r for r in rows if r.destination == "main"}
        refused = {r.key: r for r in rows if r.destination == "refused"}
        assert set(main) == set(refused) == planted

        def check(key: str, status: int | None, *fragments: str) -> None:
            row = main[key]
            assert row.last_http_status == status, (key, row)
            assert row.last_error is not None and all(f in row.last_error for f in fragments), (key, row)
            assert "\n" not in row.last_error and len(row.last_error) < 400, (key, row.last_error)

        check(number_of(1), 500, "HTTP 500: database is down")
        check(number_of(2), 404, "HTTP 404")
        check(number_of(3), 301, "redirect 301 to http://elsewhere.example/cb", "not followed")
        check(number_of(4), None, "timeout after 0.5 s")
        check(number_of(5), None, "connection")
        assert main[number_of(5)].last_error in (
            "connection reset by the receiver before a complete answer",
            "connection closed by the receiver before a complete answer",
        )
        check(number_of(6), None, "invalid HTTP answer")
        for row in refused.values():
            assert row.last_http_status is None
            assert row.last_error == f"connection refused: nothing listens on 127.0.0.1:{refused_port}"

        # the receivers are fixed: the failure pool delivers everything
        raw.behaviour = lambda key: "ok"
        fixed = receivers(port=refused_port)
        pool_run = run_dag(pool)

        assert task_states(pool_run) == {"drain": "success"}
        rows = store_rows(mariadb, fresh_database, stem)
        assert statuses(rows) == {"delivered": 12}
        assert all(r.last_error is None for r in rows)
        assert {k for k, _, action in raw.hits if action == "ok"} == planted
        assert fixed.ok_keys() == planted


# == the re-check drops items that became consistent before sending =======================================


@pytest.mark.parametrize("recheck", [True, False])
def test_recheck_resolves_items_the_destination_caught_up_with(
    recheck: bool,
    run_dag: Callable[..., Any],
    xcom_value: Callable[..., Any],
    mariadb: MariaDB,
    fresh_database: str,
    receivers: Callable[..., Receiver],
    tmp_path: Path,
) -> None:
    # rows 1-4 differ (stale name), rows 5-10 are missing
    planted = make_tables(mariadb, fresh_database, 10, {i: ("stale", source_row(i)[3]) for i in range(1, 5)})
    assert planted == {number_of(i) for i in range(1, 11)}
    receiver = receivers()
    stem = new_stem("recheck")
    sync, _ = dags_of(
        write_config(
            tmp_path, stem, mariadb.go_dsn(fresh_database), receiver.url, retries=0, callback={"recheck": recheck}
        )
    )

    compare_run = run_dag(sync.partial_subset(task_ids=["compare"], include_upstream=False))
    assert task_states(compare_run) == {"compare": "success"}
    assert statuses(store_rows(mariadb, fresh_database, stem)) == {"pending": 10}
    assert receiver.hits == []

    # the CDC pipeline catches up with rows 1, 2 (updated), 5, 6, 7 (inserted; row 5 has a NULL avatar);
    # row 8 arrives with a wrong avatar and still needs its callback
    conn = mariadb.connect(fresh_database)
    try:
        cur = conn.cursor()
        for i in (1, 2):
            cur.execute("UPDATE user_copy SET name = %s WHERE number = %s", (source_row(i)[2], number_of(i)))
        cur.executemany(
            "INSERT INTO user_copy (number, name, avatar) VALUES (%s, %s, %s)",
            [source_row(i)[1:] for i in (5, 6, 7)] + [(number_of(8), source_row(8)[2], "wrong.png")],
        )
    finally:
        conn.close()

    deliver_run = run_dag(sync.partial_subset(task_ids=["deliver"], include_upstream=False))

    assert task_states(deliver_run) == {"deliver": "success"}
    rows = {r.key: r.status for r in store_rows(mariadb, fresh_database, stem)}
    caught_up = {number_of(i) for i in (1, 2, 5, 6, 7)}
    summary = xcom_value(deliver_run, "deliver")["destinations"]["copy0"]
    # recheck: false no longer turns the re-check off: every item is judged on the rows as they are
    assert receiver.counts() == Counter(planted - caught_up)
    assert rows == {k: "resolved" if k in caught_up else "delivered" for k in planted}
    assert (summary["resolved"], summary["delivered"]) == (5, 5)


# == Idempotency-Key and HMAC signature ================================================================


def test_signature_verifies_and_idempotency_key_is_stable_across_retries(
    run_dag: Callable[..., Any],
    mariadb: MariaDB,
    fresh_database: str,
    receivers: Callable[..., Receiver],
    airflow_variables: AirflowVariables,
    tmp_path: Path,
) -> None:
    planted = make_tables(mariadb, fresh_database, 6)
    stem = new_stem("hmac")
    variable = f"{stem}_hmac_secret"
    secret = "s3cret-" + secrets.token_hex(8)
    airflow_variables.set(variable, secret)
    bad_signatures: list[str | None] = []

    def respond(hit: Hit, nth: int) -> int:
        if not hit.signature or not verify_signature(hit.body, secret, hit.signature):
            bad_signatures.append(hit.key)
            return 401
        return 503 if nth == 1 else 204  # every item needs the retry

    receiver = receivers(respond=respond)
    sync, _ = dags_of(
        write_config(
            tmp_path,
            stem,
            mariadb.go_dsn(fresh_database),
            receiver.url,
            retries=1,
            callback={"hmacSecretVariable": variable},
        )
    )
    try:
        dag_run = run_dag(sync)
    finally:
        airflow_variables.delete(variable)

    assert bad_signatures == []
    assert task_states(dag_run) == {"compare": "success", "deliver": "success"}
    rows = {r.key: r for r in store_rows(mariadb, fresh_database, stem)}
    assert set(rows) == planted
    assert all(r.status == "delivered" for r in rows.values())
    assert receiver.counts() == dict.fromkeys(planted, 2)
    for hit in receiver.hits:
        assert hit.idempotency_key == rows[str(hit.key)].idempotency_key
        assert json.loads(hit.body)["idempotencyKey"] == hit.idempotency_key
        assert hit.signature and hit.signature.startswith("sha256=")
        assert not verify_signature(hit.body, secret + "x", hit.signature)
    # the retry sent the very same body: same key, same signature
    by_key: dict[str | None, set[tuple[str | None, str | None, bytes]]] = {}
    for hit in receiver.hits:
        by_key.setdefault(hit.key, set()).add((hit.idempotency_key, hit.signature, hit.body))
    assert all(len(v) == 1 for v in by_key.values()), by_key


# == backpressure: concurrency and rate limit ===========================================================


def test_no_more_requests_in_flight_than_worker_number(
    run_dag: Callable[..., Any],
    mariadb: MariaDB,
    fresh_database: str,
    receivers: Callable[..., Receiver],
    tmp_path: Path,
) -> None:
    planted = make_tables(mariadb, fresh_database, 200)
    receiver = receivers(delay=0.02)
    stem = new_stem("conc")
    sync, _ = dags_of(write_config(tmp_path, stem, mariadb.go_dsn(fresh_database), receiver.url, worker_number=4))

    dag_run = run_dag(sync)

    assert task_states(dag_run) == {"compare": "success", "deliver": "success"}
    assert receiver.ok_keys() == planted
    assert len(receiver.hits) == 200
    assert receiver.max_in_flight <= 4
    assert receiver.max_in_flight >= 3, "workerNumber=4 should give concurrent requests"


def test_rate_limit_per_second_is_respected(
    run_dag: Callable[..., Any],
    mariadb: MariaDB,
    fresh_database: str,
    receivers: Callable[..., Receiver],
    tmp_path: Path,
) -> None:
    planted = make_tables(mariadb, fresh_database, 40)
    receiver = receivers()
    stem = new_stem("rate")
    sync, _ = dags_of(
        write_config(
            tmp_path,
            stem,
            mariadb.go_dsn(fresh_database),
            receiver.url,
            worker_number=8,
            callback={"rateLimitPerSecond": 25},
        )
    )

    dag_run = run_dag(sync)

    assert task_states(dag_run) == {"compare": "success", "deliver": "success"}
    assert receiver.ok_keys() == planted
    times = sorted(h.at for h in receiver.hits)
    # 40 starts at most 25 per second apart: the last one no sooner than 39/25 = 1.56 s after the first
    assert times[-1] - times[0] >= 1.5, times[-1] - times[0]
    # and in no window of 1 s more than 25 + 1 starts (burst of one)
    assert max(sum(1 for t in times if s <= t < s + 1.0) for s in times) <= 26

"""The HTTP endpoints of the cupid page, through a running api-server: each role, bad input, cross-site, secrets."""

from __future__ import annotations

import secrets
from typing import TYPE_CHECKING, Any

import pytest

from cupid_airflow.core.detection import Detection
from cupid_airflow.core.store import Attempt, DeliveryStore
from tests.plugins.conftest import CALLBACK_URL

if TYPE_CHECKING:
    from cupid_airflow.core.sql import ConnectionParams
    from tests.support.airflow_stack import AirflowStack

pytestmark = pytest.mark.integration

API = "/cupid/api/configs"


def plant(
    params: ConnectionParams, config: str, statuses: list[str], error: str | None = None
) -> tuple[str, list[int]]:
    """Items of a new destination of ``config``, one per status given; returns the destination and ids."""
    destination = f"d{secrets.token_hex(4)}"
    store = DeliveryStore(params)
    try:
        store.record([Detection(config, destination, f"k-{n}".encode(), 1, n) for n in range(len(statuses))])
        ids = [int(r[0]) for r in store._execute(
            "SELECT id FROM cupid_delivery WHERE destination = %s ORDER BY id", (destination,)
        ).fetchall()]  # fmt: skip
        for item_id, status in zip(ids, statuses, strict=True):
            live = "1" if status in ("pending", "parked") else "NULL"
            store._execute(
                f"UPDATE cupid_delivery SET status = %s, live = {live}, last_error = %s WHERE id = {item_id}",
                (status, error),
            )
    finally:
        store.close()
    return destination, ids


def snapshot(params: ConnectionParams, destination: str) -> list[tuple[Any, ...]]:
    store = DeliveryStore(params)
    try:
        return list(store._execute(
            "SELECT id, status, live, attempts, queued_at, updated_at, claimed_until FROM cupid_delivery "
            "WHERE destination = %s ORDER BY id", (destination,),
        ).fetchall())  # fmt: skip
    finally:
        store.close()


def events(stack: AirflowStack, event: str, destination: str) -> list[dict[str, Any]]:
    status, body = stack.request("GET", f"/api/v2/eventLogs?event={event}&limit=100", user="admin")
    assert status == 200, body
    return [e for e in body["event_logs"] if destination in (e.get("extra") or "")]


def requeue_body(destination: str, ids: list[int], confirm: bool = False) -> dict[str, Any]:
    return {"destination": destination, "ids": ids, "confirm": confirm}


# -- roles ------------------------------------------------------------------------------------------------------


def test_anonymous_users_see_nothing_and_change_nothing(
    pool_stack: AirflowStack, state_params: ConnectionParams
) -> None:
    destination, ids = plant(state_params, "alpha", ["parked", "dead"])
    before = snapshot(state_params, destination)
    gets = [
        "/cupid/static/pool.js",
        API,
        f"{API}/alpha/overview",
        f"{API}/alpha/destinations/{destination}/items?status=parked",
        f"{API}/alpha/items/{ids[0]}",
    ]
    for path in gets:
        status, body = pool_stack.request("GET", path)
        assert status == 401, (path, status, body)
        assert destination not in str(body)
    for action in ("requeue", "purge"):
        status, _ = pool_stack.request("POST", f"{API}/alpha/{action}", body=requeue_body(destination, ids, True))
        assert status == 401
    status, location = pool_stack.request("GET", "/cupid/", follow_redirects=False)
    assert (status, location) == (302, "/auth/login?next=%2Fplugin%2Fcupid"), "the page sends anonymous users to log in"
    assert snapshot(state_params, destination) == before


def test_a_viewer_reads_every_view_but_cannot_requeue_or_purge(
    pool_stack: AirflowStack, state_params: ConnectionParams
) -> None:
    destination, ids = plant(state_params, "alpha", ["parked", "dead", "delivered"])
    before = snapshot(state_params, destination)

    status, body = pool_stack.request("GET", API, user="viewer")
    assert status == 200
    shown = {c["config"]: c["can_edit"] for c in body["configs"]}
    assert shown == {"alpha": False, "beta": False}, "broken.json is not shown"
    status, body = pool_stack.request("GET", f"{API}/alpha/overview", user="viewer")
    assert status == 200
    row = next(d for d in body["destinations"] if d["destination"] == destination)
    assert (row["counts"]["parked"], row["counts"]["dead"], row["counts"]["delivered"]) == (1, 1, 1)
    assert row["orphaned"] == 2, "a destination the config does not have: nothing sends its items"
    status, body = pool_stack.request(
        "GET", f"{API}/alpha/destinations/{destination}/items?status=parked&status=dead", user="viewer"
    )
    assert status == 200 and [i["id"] for i in body["items"]] == [ids[1], ids[0]]
    status, body = pool_stack.request("GET", f"{API}/alpha/items/{ids[0]}", user="viewer")
    assert status == 200 and body["item"]["status"] == "parked"

    for action in ("requeue", "purge"):
        for confirm in (False, True):
            status, body = pool_stack.request(
                "POST", f"{API}/alpha/{action}", user="viewer", body=requeue_body(destination, ids, confirm)
            )
            assert status == 403, (action, confirm, body)
    assert snapshot(state_params, destination) == before
    assert events(pool_stack, "cupid.requeue", destination) == []


def test_an_editor_previews_then_requeues_and_purges_and_each_change_is_in_the_audit_log(
    pool_stack: AirflowStack, state_params: ConnectionParams
) -> None:
    destination, ids = plant(state_params, "alpha", ["dead", "dead", "parked", "delivered", "delivered"])
    store = DeliveryStore(state_params)
    assert [i.id for i in store.claim("alpha", destination, ("parked",), limit=5, lease_second=300).items] == [ids[2]]
    store.close()
    before = snapshot(state_params, destination)
    chosen = {"status": ["dead", "parked"]}

    status, preview = pool_stack.request(
        "POST", f"{API}/alpha/requeue", user="editor", body={"destination": destination, "filter": chosen}
    )
    assert status == 200, preview
    assert (preview["matched"], preview["claimed"], preview["up_to_id"]) == (3, 1, ids[2])
    assert snapshot(state_params, destination) == before, "a preview changes nothing"

    status, done = pool_stack.request(
        "POST",
        f"{API}/alpha/requeue",
        user="editor",
        body={"destination": destination, "filter": chosen, "up_to_id": preview["up_to_id"], "confirm": True},
    )
    assert status == 200, done
    assert (done["acted"], done["skipped_claimed"]) == (3 - 1, 1), "the item being sent is left alone"
    after = {int(r[0]): r[1].decode() for r in snapshot(state_params, destination)}
    assert [after[i] for i in ids] == ["parked", "parked", "parked", "delivered", "delivered"]
    assert snapshot(state_params, destination)[2] == before[2], "the claimed item is untouched"

    status, done = pool_stack.request(
        "POST", f"{API}/alpha/purge", user="editor", body={"destination": destination, "ids": ids[3:], "confirm": True}
    )
    assert status == 200 and done["acted"] == 2
    assert len(snapshot(state_params, destination)) == 3

    (requeued,) = events(pool_stack, "cupid.requeue", destination)
    assert requeued["owner"] == "editor" and requeued["dag_id"] == "cupid_alpha_failure_pool"
    assert '"acted": 2' in requeued["extra"] and '"skipped_claimed": 1' in requeued["extra"]
    (purged,) = events(pool_stack, "cupid.purge", destination)
    assert purged["owner"] == "editor" and '"acted": 2' in purged["extra"]


def test_access_follows_each_configs_dags(pool_stack: AirflowStack, state_params: ConnectionParams) -> None:
    destination, ids = plant(state_params, "beta", ["dead"])
    before = snapshot(state_params, destination)

    status, body = pool_stack.request("GET", API, user="scoped_alpha")
    assert status == 200 and body["configs"] == [
        {"config": "alpha", "dags": ["cupid_alpha_sync", "cupid_alpha_failure_pool"], "can_edit": True}
    ]
    for path in (f"{API}/beta/overview", f"{API}/beta/items/{ids[0]}", f"{API}/beta/destinations/{destination}/items"):
        assert pool_stack.request("GET", path, user="scoped_alpha")[0] == 403, path
    assert (
        pool_stack.request(
            "POST", f"{API}/beta/requeue", user="scoped_alpha", body=requeue_body(destination, ids, True)
        )[0]
        == 403
    )
    assert pool_stack.request("GET", f"{API}/nope/overview", user="scoped_alpha")[0] == 403, "403 before 404"
    assert pool_stack.request("GET", f"{API}/nope/overview", user="admin")[0] == 404

    status, body = pool_stack.request("GET", f"{API}/beta/overview", user="admin")  # through an Airflow connection
    assert status == 200 and any(d["destination"] == destination for d in body["destinations"])
    assert snapshot(state_params, destination) == before


# -- bad input --------------------------------------------------------------------------------------------------

BAD_GETS = [
    ("{api}/nope/overview", 404),
    ("{api}/..%2F..%2Fetc/overview", 404),
    ("{api}/alpha/destinations/{d}/items?status=lost", 422),
    ("{api}/alpha/destinations/{d}/items?status=parked&status=parked", 422),
    ("{api}/alpha/destinations/{d}/items?type=9", 422),
    ("{api}/alpha/destinations/{d}/items?limit=100000000", 422),
    ("{api}/alpha/destinations/{d}/items?limit=0", 422),
    ("{api}/alpha/destinations/{d}/items?cursor=-1", 422),
    ("{api}/alpha/destinations/{d}/items?cursor=" + "9" * 80, 422),
    ("{api}/alpha/destinations/{d}/items?min_age_second=60&max_age_second=10", 422),
    ("{api}/alpha/destinations/{d}/items?key_prefix=" + "x" * 300, 422),
    ("{api}/alpha/destinations/{d}%27%3B%20DROP%20TABLE%20cupid_delivery%3B--/items", 422),
    ("{api}/alpha/items/0", 422),
    ("{api}/alpha/items/{big}", 422),
    ("{api}/alpha/items/abc", 422),
    ("{api}/beta/items/{id}", 404),
]


@pytest.mark.parametrize(("path", "expected"), BAD_GETS)
def test_a_bad_question_gets_a_clear_4xx_and_touches_nothing(
    pool_stack: AirflowStack, state_params: ConnectionParams, path: str, expected: int
) -> None:
    destination, ids = plant(state_params, "alpha", ["parked", "dead"])
    before = snapshot(state_params, destination)
    status, body = pool_stack.request("GET", path.format(api=API, d=destination, id=ids[0], big=2**70), user="admin")
    assert status == expected, body
    assert isinstance(body, dict) and body.get("detail"), "a reason people can read"
    assert snapshot(state_params, destination) == before


def test_a_key_that_looks_like_sql_is_only_a_key(pool_stack: AirflowStack, state_params: ConnectionParams) -> None:
    destination, _ = plant(state_params, "alpha", ["parked"])
    before = snapshot(state_params, destination)
    for prefix in ("' OR '1'='1", "%", "_", "k-0'; DELETE FROM cupid_delivery; --", "\\"):
        status, body = pool_stack.request(
            "GET",
            f"{API}/alpha/destinations/{destination}/items?status=parked&key_prefix={_quote(prefix)}",
            user="admin",
        )
        assert status == 200 and body["items"] == [], prefix
    status, body = pool_stack.request(
        "GET", f"{API}/alpha/destinations/{destination}/items?status=parked&key_prefix=k-", user="admin"
    )
    assert [i["key"] for i in body["items"]] == ["k-0"]
    assert snapshot(state_params, destination) == before


BAD_POSTS = [
    ({"ids": [1], "extra": 1}, 422),
    ({"ids": list(range(1, 502))}, 422),
    ({"ids": []}, 422),
    ({"ids": [0]}, 422),
    ({}, 422),
    ({"ids": [1], "filter": {"status": ["dead"]}}, 422),
    ({"filter": {"status": ["dead"]}, "confirm": True}, 422),  # no up_to_id: the preview was skipped
    ({"filter": {"status": ["pending"]}}, 422),  # pending items cannot be requeued
    ({"filter": {"status": ["nope"]}}, 422),
]


@pytest.mark.parametrize(("body", "expected"), BAD_POSTS)
def test_a_bad_action_gets_a_clear_4xx_and_touches_nothing(
    pool_stack: AirflowStack, state_params: ConnectionParams, body: dict[str, Any], expected: int
) -> None:
    destination, _ = plant(state_params, "alpha", ["dead", "parked"])
    before = snapshot(state_params, destination)
    status, answer = pool_stack.request(
        "POST", f"{API}/alpha/requeue", user="admin", body={"destination": destination, **body}
    )
    assert status == expected, answer
    assert answer.get("detail")
    status, answer = pool_stack.request(
        "POST", f"{API}/alpha/purge", user="admin", body={"destination": destination, "filter": {"status": ["parked"]}}
    )
    assert status == 422 and "undelivered=true" in answer["detail"], "purging undelivered items needs saying so"
    assert pool_stack.request("POST", f"{API}/alpha/forget", user="admin", body={"destination": destination})[0] == 422
    assert snapshot(state_params, destination) == before
    assert events(pool_stack, "cupid.requeue", destination) == []


def test_changes_from_another_site_are_refused(pool_stack: AirflowStack, state_params: ConnectionParams) -> None:
    destination, ids = plant(state_params, "alpha", ["dead"])
    before = snapshot(state_params, destination)
    body = requeue_body(destination, ids, True)
    refused = [
        ({"Origin": "https://evil.example"}, None, 403),
        ({"Sec-Fetch-Site": "cross-site"}, None, 403),
        ({"Content-Type": "text/plain"}, b'{"destination": "x", "ids": [1], "confirm": true}', 415),
        ({"Content-Type": "application/x-www-form-urlencoded"}, b"destination=x&ids=1&confirm=true", 415),
        ({"Content-Type": "multipart/form-data; boundary=b"}, b"--b--", 415),
    ]
    for headers, raw, expected in refused:
        status, _ = pool_stack.request(
            "POST", f"{API}/alpha/requeue", user="admin", body=None if raw else body, raw=raw, headers=headers
        )
        assert status == expected, headers
    assert snapshot(state_params, destination) == before
    status, done = pool_stack.request(
        "POST", f"{API}/alpha/requeue", user="admin", body=body, headers={"Origin": pool_stack.base_url}
    )
    assert status == 200 and done["acted"] == 1, "this server's own pages may"


def test_secrets_never_reach_the_page(pool_stack: AirflowStack, state_params: ConnectionParams) -> None:
    error = "HTTP 401: Authorization: Bearer s3cr3tt0k3nvalue at https://u:pa55word@cb.example/h/Zq9?sig=s1gnature"
    destination, ids = plant(state_params, "alpha", ["parked"], error=error)
    store = DeliveryStore(state_params)
    claim = store.claim("alpha", destination, ("parked",), limit=1, lease_second=60)
    store.record_attempts(claim, [Attempt(ids[0], False, 1, "k" * 64, "v" * 40, b'{"number": "k-0"}', 401, error, 0.1)])
    store.close()
    answers = []
    for path in (
        "/cupid/",
        API,
        f"{API}/alpha/overview",
        f"{API}/alpha/destinations/{destination}/items?status=parked",
        f"{API}/alpha/items/{ids[0]}",
    ):
        status, body = pool_stack.request("GET", path, user="admin", headers={"Cookie": ""})
        answers.append(str(body))
        assert status in (200, 302), path
    text = "\n".join(answers)
    for secret in ("T0KEN5ECRET", "q5ecret", "s3cr3tt0k3nvalue", "pa55word", "s1gnature", "Zq9"):
        assert secret not in text, secret
    assert "https://hooks.example.com/callback/***?***" in text, "the callback shows as its shape"
    assert '{"number": "k-0"}' in text, "the body sent is the user's data, shown as sent"
    assert CALLBACK_URL not in text


def test_the_page_is_the_providers_plugin(pool_stack: AirflowStack) -> None:
    status, body = pool_stack.request("GET", "/api/v2/plugins", user="admin")
    assert status == 200
    (cupid,) = [p for p in body["plugins"] if p["name"] == "cupid"]
    assert cupid["external_views"][0]["href"] == "/cupid/" and cupid["external_views"][0]["url_route"] == "cupid"
    assert cupid["fastapi_apps"][0]["url_prefix"] == "/cupid"
    status, body = pool_stack.request("GET", "/api/v2/plugins/importErrors", user="admin")
    assert status == 200 and body["total_entries"] == 0, body


def _quote(text: str) -> str:
    from urllib.parse import quote

    return quote(text, safe="")

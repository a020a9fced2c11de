"""A real browser (Debian's chromium, driven by Playwright) on the running Airflow UI's cupid page.

Set ``CUPID_SCREENSHOT_DIR`` to keep the overview's screenshot (docs/failure-pool-page.png is made so).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from cupid_airflow.core.store import DeliveryStore
from tests.plugins.conftest import write_config
from tests.support.outbox import make_tables, number_of, plant_items

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from conftest import MariaDB

    from cupid_airflow.core.sql import ConnectionParams
    from tests.support.airflow_stack import AirflowStack
    from tests.support.receivers import Receiver

pytestmark = pytest.mark.integration

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--no-first-run"]  # fmt: skip


@pytest.fixture
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


def sign_in(browser: Any, stack: AirflowStack, user: str, path: str = "/plugin/cupid") -> Any:
    page = browser.new_context(viewport={"width": 1440, "height": 760}).new_page()
    page.set_default_timeout(60_000)
    page.goto(stack.base_url + path)
    page.get_by_label("Username").fill(user)
    page.get_by_label("Password").fill(stack.users[user])
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url("**/plugin/cupid**")
    return page


def test_an_operator_sees_the_pool_requeues_a_dead_item_and_watches_the_failure_pool_dag_deliver_it(
    pool_stack: AirflowStack,
    browser: Any,
    mariadb: MariaDB,
    state_database: str,
    state_params: ConnectionParams,
    receivers: Callable[..., Receiver],
    tmp_path: Path,
) -> None:
    from playwright.sync_api import expect

    make_tables(mariadb, state_database, 3)
    receiver = receivers()
    write_config(pool_stack, "gamma", mariadb.go_dsn(state_database), receiver.url)
    store = DeliveryStore(state_params)
    plant_items(store, "gamma", [1, 2, 3], destination="copy")
    ids = {int(r[1]): int(r[0]) for r in store._execute(
        "SELECT id, source_id FROM cupid_delivery WHERE config = 'gamma'"
    ).fetchall()}  # fmt: skip
    store.park("gamma", "copy", ids=[ids[2]])
    store._execute(
        "UPDATE cupid_delivery SET status = 'dead', live = NULL, attempts = 4, "
        f"last_error = 'HTTP 503: receiver down for maintenance' WHERE id = {ids[3]}"
    )
    store.close()
    pool_stack.wait_for_dag("cupid_gamma_failure_pool")

    page = sign_in(browser, pool_stack, "admin")
    frame = page.frame_locator("iframe[title=cupid]")
    row = frame.locator("section[data-config=gamma] tr[data-destination=copy]")
    for status in ("pending", "parked", "dead"):
        expect(row.locator(f"a[data-count={status}]")).to_have_text("1")
    expect(row).to_contain_text("HTTP 503: receiver down for maintenance")
    shots = Path(os.environ.get("CUPID_SCREENSHOT_DIR") or tmp_path)
    page.screenshot(path=str(shots / "failure-pool-page.png"))

    row.locator("a[data-count=dead]").click()
    frame.locator(f"tr[data-item='{ids[3]}'] input[type=checkbox]").check()
    frame.get_by_role("button", name="Requeue selected").click()
    expect(frame.locator("#confirm-text")).to_contain_text("Requeue 1 item(s) of copy")
    frame.locator("#confirm-ok").click()
    expect(frame.locator("#notice")).to_contain_text("Requeued 1 item(s).")
    expect(frame.locator("#no-items")).to_be_visible()

    pool_stack.unpause("cupid_gamma_failure_pool")
    page.goto(f"{pool_stack.base_url}/plugin/cupid/cupid/?config=gamma&item={ids[3]}")
    status = frame.locator("#item-status")
    deadline = time.monotonic() + 240
    while status.text_content() != "delivered":
        assert time.monotonic() < deadline, f"item {ids[3]} not delivered by the failure-pool DAG\n{pool_stack.logs()}"
        time.sleep(3)
        page.reload()
        status.wait_for()
    expect(frame.locator(".attempt.ok")).to_contain_text("HTTP 204")
    assert number_of(3) in receiver.ok_keys()

    frame.locator("nav#crumbs a", has_text="Overview").click()
    frame.locator("section[data-config=gamma] a", has_text="cupid_gamma_failure_pool").click()
    page.wait_for_url("**/dags/cupid_gamma_failure_pool**")


def test_a_viewer_sees_the_items_but_no_way_to_change_them(
    pool_stack: AirflowStack, browser: Any, state_params: ConnectionParams
) -> None:
    from playwright.sync_api import expect

    store = DeliveryStore(state_params)
    plant_items(store, "alpha", [41], destination="viewed")
    store.close()
    page = sign_in(browser, pool_stack, "viewer")
    frame = page.frame_locator("iframe[title=cupid]")
    frame.locator("section[data-config=alpha] tr[data-destination=viewed] a[data-count=pending]").click()
    expect(frame.locator("table#items")).to_contain_text(number_of(41))
    expect(frame.get_by_text("requeue and purge need the right to edit its DAGs")).to_be_visible()
    expect(frame.get_by_role("button", name="Requeue selected")).to_have_count(0)

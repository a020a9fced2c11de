"""``python -m cupid_airflow.demo``: helpers of scripts/demo.sh (check a run against the planted mismatches, login)."""

from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Sequence

SUMMARY_MARK = "cupid summary: "
DELIVERY_MARK = "cupid delivery summary: "


def last_json_after(text: str, mark: str) -> dict[str, Any] | None:
    """The JSON object that follows the last ``mark`` in a log (``None`` when there is none)."""
    found: dict[str, Any] | None = None
    decoder = json.JSONDecoder()
    start = text.find(mark)
    while start != -1:
        try:
            value, _ = decoder.raw_decode(text, start + len(mark))
        except ValueError:
            value = None
        if isinstance(value, dict):
            found = value
        start = text.find(mark, start + 1)
    return found


def planted_set(path: Path) -> set[tuple[int, str]]:
    document = json.loads(path.read_text(encoding="utf-8"))
    return {(int(p["type"]), str(p["key"])) for p in document["planted"]}


def fetch_received(url: str, timeout: float = 5.0) -> list[dict[str, Any]]:
    with urllib.request.urlopen(url.rstrip("/") + "/received", timeout=timeout) as answer:
        document = json.loads(answer.read())
    if not isinstance(document, list):
        raise ValueError(f"GET /received answered {type(document).__name__}, not a list")
    return document


def describe_compare(summary: dict[str, Any]) -> list[str]:
    scanned = summary.get("rowsScanned") or {}
    lines = [
        f"compare: scanned {scanned.get('insert', 0)} new and {scanned.get('update', 0)} updated row(s), "
        f"recorded {summary.get('recorded')} new mismatch(es), caught up: {summary.get('caughtUp')}"
    ]
    for name, destination in (summary.get("destinations") or {}).items():
        lines.append(
            f"compare: destination {name}: {destination['mismatches']['missing']} missing, "
            f"{destination['mismatches']['different']} different; insert cursor "
            f"{destination['cursorBefore']['insertId']} -> {destination['cursorAfter']['insertId']}"
            + (f"; ERROR {destination['error']}" if destination.get("error") else "")
        )
    return lines


def describe_delivery(summary: dict[str, Any]) -> list[str]:
    lines = []
    for name, outcome in (summary.get("destinations") or {}).items():
        lines.append(
            f"deliver: destination {name}: {outcome.get('delivered')} delivered, {outcome.get('resolved')} resolved, "
            f"{outcome.get('failed')} failed"
        )
    store = summary.get("store") or {}
    if store:
        shown = {k: v for k, v in store.items() if isinstance(v, int) and v}
        lines.append(f"deliver: delivery store now: {shown or 'empty'}")
    return lines


def check(planted_path: Path, receiver_url: str, log_path: Path | None, wait_second: float = 0.0) -> int:
    """Print the run's summary and whether the receiver got exactly the planted mismatches; 0 when it did."""
    if log_path is not None:
        text = log_path.read_text(encoding="utf-8", errors="replace") if log_path.exists() else ""
        compare = last_json_after(text, SUMMARY_MARK)
        delivery = last_json_after(text, DELIVERY_MARK)
        if compare is None:
            print(f"demo: no '{SUMMARY_MARK.strip()}' line in {log_path}: the compare task did not finish")
        else:
            for line in describe_compare(compare):
                print(f"demo: {line}")
        if delivery is None:
            print(f"demo: no '{DELIVERY_MARK.strip()}' line in {log_path}: the deliver task did not finish")
        else:
            for line in describe_delivery(delivery):
                print(f"demo: {line}")
    planted = planted_set(planted_path)
    deadline = time.monotonic() + wait_second
    while True:
        try:
            received = fetch_received(receiver_url)
        except (OSError, ValueError, urllib.error.URLError) as err:
            print(f"demo: the receiver at {receiver_url} does not answer: {err}")
            return 1
        got = {(int(r["type"]), str(r["key"])) for r in received}
        if got >= planted or time.monotonic() >= deadline:
            break
        time.sleep(1)
    keys = [r.get("idempotencyKey") for r in received]
    duplicates = len(keys) - len(set(keys))
    print(
        f"demo: receiver got {len(received)} callback(s) ({duplicates} repeated), "
        f"{len(got)} distinct (type, key); planted {len(planted)}"
    )
    missing, unexpected = sorted(planted - got), sorted(got - planted)
    if missing:
        print(f"demo: NOT delivered: {', '.join(f'type {t} {k}' for t, k in missing)}")
    if unexpected:
        print(f"demo: unexpected callbacks: {', '.join(f'type {t} {k}' for t, k in unexpected)}")
    if missing or unexpected:
        print(f"demo: FAILED: {len(planted & got)} of {len(planted)} planted mismatches delivered")
        return 1
    print(f"demo: OK: all {len(planted)} planted mismatches delivered, nothing else")
    return 0


def password(airflow_home: Path, user: str = "admin") -> int:
    """Print the generated password of ``user`` from the simple auth manager's passwords file."""
    path = airflow_home / "simple_auth_manager_passwords.json.generated"
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return 1
    if not isinstance(document, dict) or user not in document:
        return 1
    print(document[user])
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cupid_airflow.demo", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    checking = commands.add_parser("check", help="compare what the receiver got with .demo/planted.json")
    checking.add_argument("--planted", type=Path, required=True)
    checking.add_argument("--receiver", default="http://127.0.0.1:18080")
    checking.add_argument("--log", type=Path, help="a log holding the run's 'cupid summary' lines")
    checking.add_argument("--wait", type=float, default=0.0, help="wait up to this many seconds for callbacks")
    login = commands.add_parser("password", help="print the admin password that airflow standalone generated")
    login.add_argument("airflow_home", type=Path)
    login.add_argument("--user", default="admin")
    args = parser.parse_args(argv)
    if args.command == "check":
        return check(args.planted, args.receiver, args.log, args.wait)
    return password(args.airflow_home, args.user)


if __name__ == "__main__":
    sys.exit(main())

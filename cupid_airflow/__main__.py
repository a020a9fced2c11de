"""``python -m cupid_airflow``: inspect and act on the delivery store and the failure pool of a config."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Sequence

    from cupid_airflow.core.config import CupidConfig
    from cupid_airflow.core.store import DeliveryStore


def _config(spec: str) -> CupidConfig:
    from cupid_airflow.core.config import find_config_files, load_config

    path = Path(spec)
    if path.is_file():
        return load_config(path)
    from cupid_airflow.dag_factory import config_folder

    dags_folder = _dags_folder()
    for candidate in find_config_files(config_folder(dags_folder)):
        if candidate.stem == spec:
            return load_config(candidate)
    raise SystemExit(f"no config file {spec!r}, and no config named {spec!r} in {config_folder(dags_folder)}")


def _dags_folder() -> str:
    import os

    folder = os.environ.get("AIRFLOW__CORE__DAGS_FOLDER")
    if folder:
        return folder
    from airflow.configuration import conf

    return str(conf.get("core", "dags_folder"))


def _store(config: CupidConfig) -> DeliveryStore:
    from cupid_airflow.connections import resolve_connection
    from cupid_airflow.core.store import DeliveryStore

    store = DeliveryStore(resolve_connection(config.state_connection))
    store.ensure_schema()
    return store


def _ids(text: str | None) -> list[int] | None:
    if not text:
        return None
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise SystemExit(f"--ids takes comma-separated item ids, not {text!r}") from None


def _statuses(text: str) -> list[str]:
    from cupid_airflow.core.store import STATUSES

    statuses = [s.strip() for s in text.split(",") if s.strip()]
    unknown = [s for s in statuses if s not in STATUSES]
    if unknown:
        raise SystemExit(f"unknown status(es) {', '.join(unknown)} (accepted: {', '.join(STATUSES)})")
    return statuses


def _last_body(store: DeliveryStore, item_id: int) -> object:
    attempts = store.attempts_of(item_id, limit=1)
    if not attempts:
        return None
    try:
        return json.loads(attempts[0]["body"])
    except ValueError:
        return attempts[0]["body"]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cupid_airflow", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    pool = commands.add_parser("pool", help="the delivery store and failure pool of one config")
    actions = pool.add_subparsers(dest="action", required=True)

    def add(name: str, help_text: str) -> argparse.ArgumentParser:
        sub = actions.add_parser(name, help=help_text)
        sub.add_argument("config", help="a config file, or a config name found in the configs folder")
        return sub

    add("stats", "items by status, oldest parked age")
    listing = add("list", "list items, oldest first")
    listing.add_argument("--status", default="parked,dead", help="comma-separated statuses (default parked,dead)")
    listing.add_argument("--limit", type=int, default=50)
    listing.add_argument("--json", action="store_true", help="one JSON object per line, with the body")
    requeue = add("requeue", "move dead (or given) items back into the failure pool")
    requeue.add_argument("--from", dest="from_status", default="dead", help="statuses to requeue (default dead)")
    requeue.add_argument("--ids", help="only these item ids")
    purge = add("purge", "delete delivered and resolved items (never undelivered ones unless asked)")
    purge.add_argument("--status", default="delivered,resolved")
    purge.add_argument("--ids", help="only these item ids")
    purge.add_argument(
        "--i-know-this-loses-data",
        dest="force",
        action="store_true",
        help="required to purge pending, parked or dead items",
    )
    args = parser.parse_args(argv)

    from cupid_airflow.core.store import UNDELIVERED

    config = _config(args.config)
    store = _store(config)
    try:
        if args.action == "stats":
            print(json.dumps({"config": config.name, **store.counts(config.name)}, indent=2))
        elif args.action == "list":
            items = store.items(config.name, _statuses(args.status), limit=args.limit)
            for item in items:
                if args.json:
                    print(
                        json.dumps(
                            {
                                "id": item.id,
                                "destination": item.destination,
                                "status": item.status,
                                "type": item.type,
                                "attempts": item.attempts,
                                "lastHttpStatus": item.last_http_status,
                                "lastError": item.last_error,
                                "detectedAt": item.detected_at,
                                "idempotencyKey": item.idempotency_key,
                                "differences": item.differences,
                                "lastBody": _last_body(store, item.id),
                            },
                            ensure_ascii=False,
                        )
                    )
                else:
                    print(
                        f"{item.id:>8}  {item.destination:<12} {item.status:<9} type {item.type}  "
                        f"attempts {item.attempts:<3} {item.detected_at}  {(item.last_error or '')[:80]}"
                    )
            if not args.json:
                print(f"{len(items)} item(s)")
        elif args.action == "requeue":
            moved = store.requeue(config.name, _ids(args.ids), statuses=_statuses(args.from_status))
            print(f"requeued {moved} item(s) into the failure pool of {config.name}")
        elif args.action == "purge":
            statuses = _statuses(args.status)
            if set(statuses) & set(UNDELIVERED) and not args.force:
                raise SystemExit(
                    f"refusing to purge undelivered items ({', '.join(set(statuses) & set(UNDELIVERED))}): "
                    "add --i-know-this-loses-data"
                )
            deleted = store.purge(config.name, statuses, _ids(args.ids))
            print(f"purged {deleted} item(s) of {config.name}")
    finally:
        store.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())

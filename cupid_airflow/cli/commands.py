"""What each ``airflow cupid`` command does: check every argument, then act; every error is one line."""

from __future__ import annotations

import contextlib
import json
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cupid_airflow.core.redact import redact

if TYPE_CHECKING:
    import argparse
    from collections.abc import Iterator, Sequence

    from cupid_airflow.cli.pool_store import PoolStore
    from cupid_airflow.core.config import CupidConfig

LIST_DEFAULT = ("parked", "dead")
REQUEUE_DEFAULT = ("dead",)
PURGE_DEFAULT = ("delivered", "resolved")
LIMIT_DEFAULT = 50
LIMIT_MAX = 100_000
TABLE_ERROR_CHARS = 80


class CommandError(SystemExit):
    """A bad argument, config, connection or database: one line on stderr, exit status 1."""

    def __init__(self, message: str) -> None:
        super().__init__(f"error: {' '.join(message.split())}")


# -- airflow cupid pool ... -------------------------------------------------------------------------


def pool_stats(args: argparse.Namespace) -> None:
    config = load(args.config)
    with failures(config), open_store(config) as store:
        stats = store.stats()
    show([{"config": config.name, **stats}], args.output)


def pool_list(args: argparse.Namespace) -> None:
    statuses = parse_statuses(args.status, "--status", LIST_DEFAULT)
    limit = parse_count(args.limit, "--limit", LIMIT_DEFAULT, maximum=LIMIT_MAX) or LIMIT_DEFAULT
    config = load(args.config)
    with failures(config), open_store(config) as store:
        items = store.items(statuses, limit)
    if args.json_lines:
        for item in items:
            print(json.dumps(item, ensure_ascii=False))
        return
    if args.output in ("table", "plain"):
        rows = [{k: v for k, v in item.items() if k not in ("body", "idempotencyKey")} for item in items]
        for row in rows:
            row["lastError"] = (row["lastError"] or "")[:TABLE_ERROR_CHARS]
        show(rows, args.output)
        print(f"{len(items)} item(s)")
    else:
        show(items, args.output)


def pool_requeue(args: argparse.Namespace) -> None:
    from cupid_airflow.cli.pool_store import DELIVERED, RESOLVED

    statuses = parse_statuses(args.from_status, "--from", REQUEUE_DEFAULT)
    ids = parse_ids(args.ids)
    sent_before = sorted(set(statuses) & {DELIVERED, RESOLVED})
    if sent_before and not args.yes:
        raise CommandError(
            f"requeue --from {','.join(sent_before)} sends again items the receiver already took or no longer "
            "needs: add --yes to confirm"
        )
    config = load(args.config)
    with failures(config), open_store(config) as store:
        moved = store.requeue(statuses, ids)
    print(f"requeued {moved} item(s) into the failure pool of {config.name}")


def pool_purge(args: argparse.Namespace) -> None:
    from cupid_airflow.cli.pool_store import UNDELIVERED

    statuses = parse_statuses(args.status, "--status", PURGE_DEFAULT)
    ids = parse_ids(args.ids)
    undelivered = [s for s in statuses if s in UNDELIVERED]
    if undelivered and not args.loses_data:
        raise CommandError(
            f"refusing to purge undelivered items ({', '.join(undelivered)}): add --i-know-this-loses-data"
        )
    if not args.yes:
        raise CommandError(f"purge deletes the {', '.join(statuses)} items of the config: add --yes to confirm")
    config = load(args.config)
    with failures(config), open_store(config) as store:
        deleted = store.purge(statuses, ids)
    print(f"purged {deleted} item(s) of {config.name}")


def pool_dead(args: argparse.Namespace) -> None:
    max_attempts = parse_count(args.max_attempts, "--max-attempts", None)
    max_age = parse_count(args.max_age_second, "--max-age-second", None)
    config = load(args.config)
    if max_attempts is None and max_age is None:
        max_attempts, max_age = config.failure_pool.max_attempts, config.failure_pool.max_age_second
        if max_attempts is None and max_age is None:
            raise CommandError(
                f"{config.name}: no limit to apply: give --max-attempts or --max-age-second, or set "
                "failurePool.maxAttempts or failurePool.maxAgeSecond in the config"
            )
    with failures(config), open_store(config) as store:
        moved = store.expire(max_attempts, max_age)
    limits = [f"{max_attempts} attempts"] if max_attempts is not None else []
    limits += [f"{max_age} s in the pool"] if max_age is not None else []
    print(f"moved {moved} parked item(s) of {config.name} past {' or '.join(limits)} to dead")


# -- airflow cupid config check ---------------------------------------------------------------------


def config_check(args: argparse.Namespace) -> None:
    """Load every config and build its DAGs as the dag-processor does; exit 1 when any is broken."""
    from cupid_airflow.core.config import CONFIG_SUFFIXES, CupidConfigError, find_config_files
    from cupid_airflow.dag_factory import build_config, group_by_config_name

    rows: list[dict[str, Any]] = []
    files: list[Path] = []
    for text in args.paths:
        path = Path(text)
        if path.is_dir():
            files += find_config_files(path)
        elif not path.exists():
            rows.append({"file": text, "status": "broken", "dags": "", "notes": "no such file or folder"})
        elif path.suffix.lower() not in CONFIG_SUFFIXES:
            rows.append({"file": text, "status": "broken", "dags": "", "notes": "not a .json, .yaml or .yml file"})
        else:
            files.append(path)
    by_name, clashes = group_by_config_name(list(dict.fromkeys(files)))
    rows += [{"file": clash.split(": ", 1)[0], "status": "broken", "dags": "", "notes": clash} for clash in clashes]
    for path in by_name.values():
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                dags = build_config(path)
            except CupidConfigError as err:
                rows.append({"file": str(path), "status": "broken", "dags": "", "notes": "; ".join(err.problems)})
                continue
        notes = "; ".join(str(w.message).removeprefix(f"{path}: ") for w in caught if _is_config_warning(w))
        rows.append({"file": str(path), "status": "ok", "dags": ", ".join(sorted(dags)), "notes": notes})
    show(rows, args.output)
    broken = sum(1 for row in rows if row["status"] == "broken")
    if broken:
        raise SystemExit(f"{broken} of {len(rows)} config file(s) are broken")


# -- arguments ---------------------------------------------------------------------------------------


def parse_statuses(text: str | None, option: str, default: Sequence[str]) -> list[str]:
    from cupid_airflow.cli.pool_store import STATUSES

    if text is None:
        return list(default)
    statuses = [s.strip() for s in text.split(",") if s.strip()]
    if not statuses:
        raise CommandError(f"{option} is empty: give one or more of {', '.join(STATUSES)}, comma-separated")
    unknown = [s for s in statuses if s not in STATUSES]
    if unknown:
        raise CommandError(f"{option}: unknown status(es) {', '.join(unknown)} (accepted: {', '.join(STATUSES)})")
    return list(dict.fromkeys(statuses))


def parse_ids(text: str | None) -> list[int] | None:
    """None for every item (no ``--ids``); never an empty selection that would mean all of them."""
    if text is None:
        return None
    parts = [p.strip() for p in text.split(",") if p.strip()]
    if not parts:
        raise CommandError("--ids is empty: give item ids such as 17,18, or leave --ids out for every item")
    bad = [p for p in parts if not p.isdigit() or int(p) < 1 or int(p) >= 2**64]
    if bad:
        raise CommandError(f"--ids takes comma-separated item ids (whole numbers from 1), not {', '.join(bad)}")
    return [int(p) for p in parts]


def parse_count(text: str | None, option: str, default: int | None, maximum: int = 2**31 - 1) -> int | None:
    if text is None:
        return default
    value = text.strip()
    if not value.isdigit() or not 1 <= int(value) <= maximum:
        raise CommandError(f"{option} takes a whole number from 1 to {maximum}, not {text!r}")
    return int(value)


# -- configs, the store, output ----------------------------------------------------------------------


def load(spec: str) -> CupidConfig:
    """A config by file path, or by name in the configs folder."""
    from cupid_airflow.core.config import CupidConfigError, find_config_files, load_config

    if not spec.strip():
        raise CommandError("the config is empty: give a config file or a config name")
    path = Path(spec)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # `config check` shows warnings; these commands act
        try:
            if path.is_file():
                return load_config(path)
            folder = _config_folder()
            for candidate in find_config_files(folder):
                if candidate.stem == spec:
                    return load_config(candidate)
        except CupidConfigError as err:
            raise CommandError(str(err)) from None
        except OSError as err:
            raise CommandError(f"{spec}: cannot be read: {err.strerror}") from None
    raise CommandError(f"no config file {spec!r}, and no config named {spec!r} in {folder}")


@contextlib.contextmanager
def open_store(config: CupidConfig) -> Iterator[PoolStore]:
    from cupid_airflow.cli.pool_store import PoolStore
    from cupid_airflow.connections import resolve_connection

    with PoolStore(config, resolve_connection(config.state_connection)) as store:
        yield store


@contextlib.contextmanager
def failures(config: CupidConfig) -> Iterator[None]:
    """Turn what the state connection or database can raise into one masked line."""
    try:
        yield
    except CommandError:
        raise
    except Exception as err:
        where = config.state_connection.describe()
        message = f"{config.name}: state database ({where}): {_reason(err)}"
        raise CommandError(redact(message, config.secrets())) from None


def show(rows: list[dict[str, Any]], output: str) -> None:
    """Airflow's output formats; JSON and YAML keep numbers and nulls typed (Airflow's own make them text)."""
    if output == "json":
        print(json.dumps(rows, ensure_ascii=False, default=str))
    elif output == "yaml":
        import yaml

        print(yaml.safe_dump(rows, sort_keys=False, allow_unicode=True), end="")
    else:
        from airflow.cli.simple_table import AirflowConsole

        AirflowConsole().print_as(rows, output=output)


def _reason(err: Exception) -> str:
    args: tuple[Any, ...] = tuple(err.args)
    if len(args) == 2 and isinstance(args[0], int):  # MySQLdb: (code, message)
        return f"MySQL error {args[0]}: {args[1]}"
    return f"{type(err).__name__}: {err}"


def _config_folder() -> Path:
    import os

    from cupid_airflow.dag_factory import config_folder

    dags_folder = os.environ.get("AIRFLOW__CORE__DAGS_FOLDER")
    if not dags_folder:
        from airflow.configuration import conf

        dags_folder = str(conf.get("core", "dags_folder"))
    return config_folder(dags_folder)


def _is_config_warning(caught: warnings.WarningMessage) -> bool:
    from cupid_airflow.core.config import CupidConfigWarning

    return issubclass(caught.category, CupidConfigWarning)

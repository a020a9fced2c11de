"""Turn cupid config files into DAGs: ``user.json`` -> ``cupid_user_sync`` and ``cupid_user_failure_pool``."""

from __future__ import annotations

import logging
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from cupid_airflow.core.config import (
    CupidConfig,
    CupidConfigError,
    config_name,
    find_config_files,
    load_config,
)
from cupid_airflow.core.redact import url_shape
from cupid_airflow.core.store import STORE_TABLE
from cupid_airflow.cursors import cursor_variable_key

if TYPE_CHECKING:
    from airflow.sdk import DAG

    from cupid_airflow.operators import CallbackOperator

log = logging.getLogger(__name__)

CONFIG_FOLDER_ENV = "CUPID_CONFIG_FOLDER"
START_DATE = datetime(2024, 1, 1, tzinfo=UTC)
DELIVER_SECONDS = 300.0  # a deliver or drain task starts no callback after this long
EXECUTION_MARGIN_SECOND = 180  # beyond a task's budget: connect and read timeouts of a frozen database


class CupidConfigErrors(Exception):
    """Every broken config file of the configs folder, raised by the error-reporting DAG file."""


def config_folder(dags_folder: str | Path) -> Path:
    """The configs folder: ``$CUPID_CONFIG_FOLDER``, else ``[cupid] config_folder``, else ``<dags>/cupid``."""
    folder = os.environ.get(CONFIG_FOLDER_ENV)
    if not folder:
        from airflow.configuration import conf

        folder = conf.get("cupid", "config_folder", fallback=None)
    return Path(folder) if folder else Path(dags_folder) / "cupid"


def build_dags(config: CupidConfig) -> dict[str, DAG]:
    """The sync DAG (unless the config watches nothing), the failure-pool DAG and the reconcile DAG (when
    enabled) of one config. A reconcile-only config has no sync DAG: its reconcile DAG delivers what it
    records (``reconcile >> deliver >> done``), so nothing runs every few seconds to compare nothing.

    They are not auto-registered with the module being parsed: ``cupid_dags.py`` exports them by name,
    and ``cupid_config_errors.py`` builds them only to check that they can be built.
    """
    from airflow.providers.standard.operators.empty import EmptyOperator
    from airflow.sdk import DAG, Param

    from cupid_airflow.operators import CallbackOperator, MySqlCompareOperator, MySqlReconcileOperator

    tags = ["cupid", f"cupid:{config.name}", *config.tags]
    alerts: dict[str, object] = {}
    if config.notify.on_task_failure and (config.notify.webhooks or config.notify.notifiers):
        from cupid_airflow.notify import TaskFailureAlert

        alerts["on_failure_callback"] = TaskFailureAlert(config.path)
    dags: dict[str, DAG] = {}
    if config.watches:
        with DAG(
            dag_id=config.sync_dag_id,
            auto_register=False,
            schedule=config.schedule,
            start_date=START_DATE,
            catchup=False,
            max_active_runs=1,
            dagrun_timeout=timedelta(minutes=30),
            params={
                "start_id": Param(
                    None,
                    type=["null", "integer"],
                    description="Rescan new rows from this source id (replaces the stored insert cursor; may be 0 or "
                    "negative).",
                )
            },
            doc_md=_sync_doc(config),
            tags=tags,
            default_args={"owner": "cupid", **alerts},
        ) as sync:
            # compare branches: `deliver` is skipped (no task process) when nothing is pending after it
            compare = MySqlCompareOperator(
                task_id="compare",
                config_path=config.path,
                deliver_task_id="deliver",
                retries=0,
                execution_timeout=_timeout(config.src.max_seconds_per_run),
            )
            deliver = _deliver_task(config)
            # the run fails when either task failed, so run-level alerts and dashboards see it; a skipped
            # deliver is no failure
            done = EmptyOperator(task_id="done", trigger_rule="none_failed")
            compare >> deliver >> done
            compare >> done
        dags[sync.dag_id] = sync
    with DAG(
        dag_id=config.failure_pool_dag_id,
        auto_register=False,
        schedule=timedelta(seconds=config.failure_pool.schedule_second),
        start_date=START_DATE,
        catchup=False,
        max_active_runs=1,
        doc_md=_pool_doc(config),
        tags=tags,
        default_args={"owner": "cupid", **alerts},
    ) as pool:
        CallbackOperator(
            task_id="drain",
            config_path=config.path,
            failure_pool=True,
            retries=0,
            max_seconds=DELIVER_SECONDS,
            execution_timeout=_timeout(DELIVER_SECONDS),
        )
    dags[pool.dag_id] = pool
    if config.reconcile.enabled:
        schedule = config.reconcile.schedule
        with DAG(
            dag_id=config.reconcile_dag_id,
            auto_register=False,
            schedule=timedelta(seconds=schedule) if isinstance(schedule, int) else schedule,
            start_date=START_DATE,
            catchup=False,
            max_active_runs=1,
            params={
                "restart": Param(
                    False,
                    type="boolean",
                    description="Drop the checkpoints and start the verify of every destination over.",
                )
            },
            doc_md=_reconcile_doc(config),
            tags=tags,
            default_args={"owner": "cupid", **alerts},
        ) as reconcile:
            verify = MySqlReconcileOperator(
                task_id="reconcile",
                config_path=config.path,
                retries=0,
                execution_timeout=_timeout(config.reconcile.max_seconds_per_run),
            )
            # its findings go out at once (claims keep this safe beside the sync DAG's deliver), and a
            # reconcile-only config has no other DAG to deliver them
            deliver = _deliver_task(config)
            done = EmptyOperator(task_id="done", trigger_rule="none_failed")
            verify >> deliver >> done
            verify >> done
        dags[reconcile.dag_id] = reconcile
    return dags


def _deliver_task(config: CupidConfig) -> CallbackOperator:
    """The ``deliver`` task after a compare or a reconcile: it runs whatever they ended with (all_done)."""
    from cupid_airflow.operators import CallbackOperator

    return CallbackOperator(
        task_id="deliver",
        config_path=config.path,
        retries=config.retries,
        retry_delay=timedelta(seconds=config.failure_job_retry_second),
        trigger_rule="all_done",
        max_seconds=DELIVER_SECONDS,
        execution_timeout=_timeout(DELIVER_SECONDS),
    )


def _timeout(budget_second: float) -> timedelta:
    """A task's ``execution_timeout``: its own time budget, plus room for the slowest database answer."""
    return timedelta(seconds=budget_second + EXECUTION_MARGIN_SECOND)


def load_dags(dags_folder: str | Path) -> dict[str, DAG]:
    """DAGs of every good config in the configs folder; broken ones are left to :func:`raise_config_errors`."""
    from airflow.sdk import get_parsing_context

    wanted = get_parsing_context().dag_id
    files, _ = _config_files(dags_folder)
    dags: dict[str, DAG] = {}
    for name, path in files.items():
        if wanted and wanted not in (f"cupid_{name}_sync", f"cupid_{name}_failure_pool", f"cupid_{name}_reconcile"):
            continue
        try:
            dags.update(build_config(path))
        except CupidConfigError as err:  # one config never drops the others; cupid_config_errors.py reports it
            log.warning("skipping config %s", err)
    return dags


def config_errors(dags_folder: str | Path) -> list[str]:
    """One line per broken config file of the configs folder: it cannot be loaded, or its DAGs cannot be
    built (those would otherwise vanish from :func:`load_dags` with only a log line)."""
    files, errors = _config_files(dags_folder)
    for path in files.values():
        try:
            build_config(path)
        except CupidConfigError as err:
            errors.append(str(err))
    return errors


def build_config(path: str | Path) -> dict[str, DAG]:
    """Load a config file and build its DAGs, as the dag-processor does; every failure is a
    :class:`CupidConfigError` naming the file."""
    path = Path(path)
    config = _load(path)
    try:
        return build_dags(config)
    except Exception as err:
        raise CupidConfigError(path, [f"its DAGs cannot be built: {type(err).__name__}: {err}"]) from err


def _config_files(dags_folder: str | Path) -> tuple[dict[str, Path], list[str]]:
    """Config files by config name, and an error for each name that several files claim."""
    return group_by_config_name(find_config_files(config_folder(dags_folder)))


def group_by_config_name(paths: list[Path]) -> tuple[dict[str, Path], list[str]]:
    """Config files by config name, and an error for each name that several of them claim."""
    by_name: dict[str, list[Path]] = {}
    for path in paths:
        by_name.setdefault(config_name(path), []).append(path)
    errors = [
        f"{', '.join(map(str, paths))}: these files all name the config {name!r}, whose DAG ids, cursors and "
        "delivery-store items would collide; keep one of them"
        for name, paths in by_name.items()
        if len(paths) > 1
    ]
    return {name: paths[0] for name, paths in by_name.items() if len(paths) == 1}, errors


def _load(path: Path) -> CupidConfig:
    """Load a config; every failure is a :class:`CupidConfigError` naming the file."""
    try:
        return load_config(path)
    except CupidConfigError:
        raise
    except OSError as err:
        raise CupidConfigError(path, [f"cannot be read: {err}"]) from err
    except Exception as err:
        raise CupidConfigError(path, [f"{type(err).__name__}: {err}"]) from err


def raise_config_errors(dags_folder: str | Path) -> None:
    """Raise one import error that lists every broken config (nothing when all are good)."""
    from airflow.sdk import get_parsing_context

    if get_parsing_context().dag_id:
        return
    errors = config_errors(dags_folder)
    if errors:
        raise CupidConfigErrors(
            f"{len(errors)} cupid config file(s) are broken; their DAGs are not loaded, all others are:\n"
            + "\n".join(f"- {e}" for e in errors)
        )


def _sync_doc(config: CupidConfig) -> str:
    src = config.src
    lines = [
        f"# cupid sync: `{config.name}`",
        "",
        _config_line(config),
        "",
        f"**Source** `{src.table}` ({src.describe()}), key `{src.by_column}`, id column `{src.id_column}`; "
        f"watching {'new rows' if src.insert else ''}{' and ' if src.insert and src.update else ''}"
        f"{f'updates by `{src.update_column}`' if src.update else ''}; runs every {config.schedule}.",
        "",
        "| destination | table | key | compared columns | callback | cursor Variable |",
        "|---|---|---|---|---|---|",
    ]
    for name, des in zip(config.destination_names, config.des, strict=False):
        callback = des.callback_notification
        target = (
            url_shape(callback.url) if callback.url else f"connection `{callback.http_conn_id}`{callback.endpoint}"
        )
        lines.append(
            f"| {name} | `{des.table}` ({des.describe()}) | `{des.by_column}` | {', '.join(des.columns)} | "
            f"{target} | `{cursor_variable_key(config.name, name)}` |"
        )
    state = config.state_connection.describe()
    lines += [
        "",
        f"Mismatches are recorded in table `{STORE_TABLE}` ({state}) before any cursor moves, then delivered by "
        f"`deliver` ({config.retries} retries, {config.failure_job_retry_second} s apart; skipped when nothing is "
        f"pending); what still fails is parked for `{config.failure_pool_dag_id}`.",
        "",
        "Rescan from an id: `airflow dags trigger " + config.sync_dag_id + " --conf '{\"start_id\": 1}'`.",
    ]
    return "\n".join(lines)


def _config_line(config: CupidConfig) -> str:
    """The config file and a hash of its bytes, so an edit shows in the DAG's docs."""
    return f"Config file: `{config.path}` (sha256 `{config.sha256[:16]}`)"


def _reconcile_doc(config: CupidConfig) -> str:
    from cupid_airflow.core.reconcile import CHECKPOINT_TABLE  # a large module: only for configs that reconcile

    section = config.reconcile
    return (
        f"# cupid reconcile: `{config.name}`\n\n{_config_line(config)}\n\n"
        f"Verifies the whole source table `{config.src.table}` against every "
        "destination: both tables are read in their own primary-key order, rows are checksummed per hash bucket "
        "of the key, and only rows of differing buckets are fetched. Records each missing or different row"
        f"{' and each row deleted at the source (type 3)' if section.detect_deletes else ''} in the delivery store; "
        "its own `deliver` task sends them at once. A run pauses after {section.max_seconds_per_run:g} s"
        + (f" or {section.max_chunks_per_run} chunk queries" if section.max_chunks_per_run else "")
        + f" and the next one resumes from the checkpoint in table `{CHECKPOINT_TABLE}` "
        f"({config.state_connection.describe()}); progress for the UI: Variables "
        + ", ".join(f"`{cursor_variable_key(config.name, n, 'reconcile')}`" for n in config.destination_names)
        + '. Trigger with `{"restart": true}` to start over.'
    )


def _pool_doc(config: CupidConfig) -> str:
    return (
        f"# cupid failure pool: `{config.name}`\n\nRetries the parked callbacks of config `{config.name}` every "
        f"{config.failure_pool.schedule_second} s, oldest first, until delivered.\n\n{_config_line(config)}\n\n"
        f"Inspect and act: `airflow cupid pool list {config.name}` (or `python -m cupid_airflow pool list "
        f"{config.path}`)."
    )

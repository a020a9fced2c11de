"""The DAG factory and the repo's two DAG files, the way Airflow's dag processor and task runner use them.

Parsing tests copy ``dags/cupid_dags.py`` and ``dags/cupid_config_errors.py`` into a temporary dags
folder with a ``cupid/`` configs folder and load it with a real :class:`DagBag`. The end-to-end tests
run a generated sync DAG with ``dag.test()`` against the local MariaDB and a loopback callback receiver.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import subprocess
import sys
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from cupid_airflow import dag_factory
from cupid_airflow.core.config import load_config
from cupid_airflow.dag_factory import build_dags, config_errors, config_folder, load_dags, raise_config_errors
from tests.support.dags_folder import (
    BLACKHOLE_DSN,
    PARSING_CONTEXT_ENV,
    UNREACHABLE_DSN,
    CallbackReceiver,
    config_text,
    create_tables,
    dagbag,
    make_dags_folder,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from conftest import AirflowVariables, MariaDB


# -- helpers --------------------------------------------------------------------------------------


BAD_CONFIG = """// a typo: "tabel" instead of "table"
{
  "src": {"dsn": "root:@tcp(127.0.0.1:1)/x", "tabel": "user", "byColumn": "number"},
  "des": [{"dsn": "root:@tcp(127.0.0.1:1)/y", "table": "user", "columns": {"number": "number"},
           "byColumn": "number", "callbackNotification": {"url": "http://127.0.0.1:1/cb"}}]
}
"""


@pytest.fixture(autouse=True)
def default_config_folder(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test starts with the default configs folder and no parsing context."""
    for name in (
        "CUPID_CONFIG_FOLDER",
        "AIRFLOW__CUPID__CONFIG_FOLDER",
        PARSING_CONTEXT_ENV,
        "_AIRFLOW_PARSING_CONTEXT_TASK_ID",
    ):
        monkeypatch.delenv(name, raising=False)


# -- DagBag: good configs load, a bad one is one import error -------------------------------------


def test_dagbag_loads_good_configs_and_reports_the_bad_one_as_one_import_error(tmp_path: Path) -> None:
    folder = make_dags_folder(
        tmp_path,
        {"alpha.json": config_text(), "beta.json": config_text(destinations=2), "broken.json": BAD_CONFIG},
    )

    bag = dagbag(folder)

    assert sorted(bag.dag_ids) == [
        "cupid_alpha_failure_pool",
        "cupid_alpha_sync",
        "cupid_beta_failure_pool",
        "cupid_beta_sync",
    ]
    assert list(bag.import_errors) == [str(folder / "cupid_config_errors.py")]
    error = bag.import_errors[str(folder / "cupid_config_errors.py")]
    assert "CupidConfigErrors" in error
    assert "1 cupid config file(s) are broken" in error
    assert str(folder / "cupid" / "broken.json") in error
    assert "src.tabel: unknown key (did you mean 'table'?)" in error
    assert "src.table: required key is missing" in error
    # the good configs' DAGs are complete and point at their own files
    for name in ("alpha", "beta"):
        sync = bag.dags[f"cupid_{name}_sync"]
        assert sorted(sync.task_ids) == ["compare", "deliver", "done"]
        assert sync.fileloc == str(folder / "cupid_dags.py")
        assert sync.get_task("compare").config_path == str(folder / "cupid" / f"{name}.json")
        assert bag.dags[f"cupid_{name}_failure_pool"].task_ids == ["drain"]


def test_dagbag_of_good_configs_has_no_import_error(tmp_path: Path) -> None:
    folder = make_dags_folder(tmp_path, {"alpha.json": config_text(), "gamma.yaml": _yaml_config()})

    bag = dagbag(folder)

    assert bag.import_errors == {}
    assert sorted(bag.dag_ids) == [
        "cupid_alpha_failure_pool",
        "cupid_alpha_sync",
        "cupid_gamma_failure_pool",
        "cupid_gamma_sync",
    ]


def test_every_broken_config_is_named_in_the_one_import_error(tmp_path: Path) -> None:
    folder = make_dags_folder(
        tmp_path,
        {"alpha.json": config_text(), "broken.json": BAD_CONFIG, "notjson.json": "{ this is not json"},
    )

    bag = dagbag(folder)

    assert sorted(bag.dag_ids) == ["cupid_alpha_failure_pool", "cupid_alpha_sync"]
    assert len(bag.import_errors) == 1
    error = bag.import_errors[str(folder / "cupid_config_errors.py")]
    assert "2 cupid config file(s) are broken" in error
    assert str(folder / "cupid" / "broken.json") in error
    assert f"{folder / 'cupid' / 'notjson.json'}: not valid JSON" in error


def _yaml_config() -> str:
    return (
        "# a YAML config\n"
        "src:\n"
        f"  dsn: '{UNREACHABLE_DSN}'\n"
        "  table: user\n"
        "  byColumn: number\n"
        "  insertIntervalMillisecond: 3000\n"
        "des:\n"
        f"  - dsn: '{UNREACHABLE_DSN}'\n"
        "    table: user\n"
        "    columns: {number: number, name: name}\n"
        "    byColumn: number\n"
        "    callbackNotification: {url: 'http://127.0.0.1:1/cb'}\n"
    )


def test_two_config_files_with_the_same_stem_are_reported(tmp_path: Path) -> None:
    folder = make_dags_folder(tmp_path, {"user.json": config_text(), "user.yaml": _yaml_config()})

    bag = dagbag(folder)

    error = bag.import_errors.get(str(folder / "cupid_config_errors.py"), "")
    assert "user.json" in error and "user.yaml" in error
    assert not {"cupid_user_sync", "cupid_user_failure_pool"} & set(bag.dag_ids)


def test_a_config_that_is_not_utf8_is_one_named_error_and_the_others_still_load(tmp_path: Path) -> None:
    folder = make_dags_folder(tmp_path, {"alpha.json": config_text()})
    # a GBK-encoded comment, as an editor on a Chinese Windows desktop would save it
    (folder / "cupid" / "gbk.json").write_bytes("// 用户表\n".encode("gbk") + config_text().encode())

    bag = dagbag(folder)

    assert sorted(bag.dag_ids) == ["cupid_alpha_failure_pool", "cupid_alpha_sync"]
    assert list(bag.import_errors) == [str(folder / "cupid_config_errors.py")]
    assert "gbk.json" in bag.import_errors[str(folder / "cupid_config_errors.py")]


# -- the configs folder ---------------------------------------------------------------------------


def test_config_folder_defaults_to_cupid_beside_the_dag_file(tmp_path: Path) -> None:
    assert config_folder(tmp_path) == tmp_path / "cupid"
    assert config_folder(str(tmp_path)) == tmp_path / "cupid"


def test_cupid_config_folder_env_moves_the_configs_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = make_dags_folder(tmp_path, {"alpha.json": config_text()})
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "moved.json").write_text(config_text(), encoding="utf-8")
    monkeypatch.setenv("CUPID_CONFIG_FOLDER", str(elsewhere))

    assert config_folder(folder) == elsewhere
    assert sorted(load_dags(folder)) == ["cupid_moved_failure_pool", "cupid_moved_sync"]
    assert sorted(dagbag(folder).dag_ids) == ["cupid_moved_failure_pool", "cupid_moved_sync"]


def test_airflow_option_cupid_config_folder_moves_the_configs_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = make_dags_folder(tmp_path, {"alpha.json": config_text()})
    elsewhere = tmp_path / "from_airflow_cfg"
    elsewhere.mkdir()
    (elsewhere / "opt.json").write_text(config_text(), encoding="utf-8")
    monkeypatch.setenv("AIRFLOW__CUPID__CONFIG_FOLDER", str(elsewhere))

    from airflow.configuration import conf

    assert conf.get("cupid", "config_folder") == str(elsewhere)
    assert config_folder(folder) == elsewhere
    assert sorted(load_dags(folder)) == ["cupid_opt_failure_pool", "cupid_opt_sync"]


def test_cupid_config_folder_env_wins_over_the_airflow_option(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIRFLOW__CUPID__CONFIG_FOLDER", str(tmp_path / "option"))
    monkeypatch.setenv("CUPID_CONFIG_FOLDER", str(tmp_path / "env"))

    assert config_folder(tmp_path) == tmp_path / "env"


def test_missing_configs_folder_means_no_dags_and_no_error(tmp_path: Path) -> None:
    assert load_dags(tmp_path) == {}
    assert config_errors(tmp_path) == []
    raise_config_errors(tmp_path)


# -- the shape of the generated DAGs --------------------------------------------------------------


def _config_file(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_sync_dag_shape(tmp_path: Path) -> None:
    from airflow.sdk import BaseOperator

    from cupid_airflow.operators import CallbackOperator, MySqlCompareOperator

    path = _config_file(
        tmp_path,
        "shape.json",
        config_text(
            destinations=2,
            table="src_members",
            des_table="dst_members",
            extra={"failureJobRetrySecond": 7},
            src_extra={"insertIntervalMillisecond": 3000, "updateIntervalMillisecond": 1500},
        ),
    )
    dags = build_dags(load_config(path))

    assert sorted(dags) == ["cupid_shape_failure_pool", "cupid_shape_sync"]
    sync = dags["cupid_shape_sync"]
    compare, deliver = sync.get_task("compare"), sync.get_task("deliver")
    assert isinstance(compare, MySqlCompareOperator)
    assert isinstance(deliver, CallbackOperator)
    assert isinstance(compare, BaseOperator)
    assert sorted(sync.task_ids) == ["compare", "deliver", "done"]
    assert compare.downstream_task_ids == {"deliver", "done"}
    assert deliver.upstream_task_ids == {"compare"}
    assert deliver.trigger_rule == "all_done"
    # `compare` skips `deliver` when nothing is pending; `done` fails the run when either task failed
    assert compare.deliver_task_id == "deliver"
    done = sync.get_task("done")
    assert done.upstream_task_ids == {"compare", "deliver"}
    assert done.trigger_rule == "none_failed"
    assert deliver.retries == 3
    assert deliver.retry_delay == timedelta(seconds=7)
    assert compare.config_path == deliver.config_path == str(path)
    assert deliver.failure_pool is False
    assert sync.schedule == timedelta(milliseconds=1500)
    assert sync.catchup is False
    assert sync.max_active_runs == 1
    assert "start_id" in sync.params
    assert sync.params["start_id"] is None
    assert "cupid" in sync.tags
    assert "cupid:shape" in sync.tags
    doc = sync.doc_md
    assert "**Source** `src_members`" in doc
    assert "| copy0 | `dst_members`" in doc and "| copy1 | `dst_members`" in doc
    assert "cupid_shape_copy0_cursor" in doc and "cupid_shape_copy1_cursor" in doc
    assert "cupid_shape_failure_pool" in doc
    assert "s3cret-Pa55" not in doc
    sync.validate()


def test_sync_dag_uses_configured_retries_and_the_only_enabled_interval(tmp_path: Path) -> None:
    path = _config_file(
        tmp_path,
        "tuned.json",
        config_text(
            extra={"retries": 5},
            src_extra={"update": False, "insertIntervalMillisecond": 2500, "updateIntervalMillisecond": 100},
        ),
    )
    sync = build_dags(load_config(path))["cupid_tuned_sync"]

    assert sync.get_task("deliver").retries == 5
    assert sync.get_task("deliver").retry_delay == timedelta(seconds=10)
    assert sync.schedule == timedelta(milliseconds=2500)


def test_doc_md_hides_credentials_in_the_callback_url(tmp_path: Path) -> None:
    url = "https://bot:hunter2@hooks.example.com/cupid/callback"
    sync = build_dags(load_config(_config_file(tmp_path, "hook.json", config_text(callback_url=url))))[
        "cupid_hook_sync"
    ]

    assert "hooks.example.com" in (sync.doc_md or "")
    assert "hunter2" not in (sync.doc_md or "")


def test_failure_pool_dag_shape(tmp_path: Path) -> None:
    from cupid_airflow.operators import CallbackOperator

    default = build_dags(load_config(_config_file(tmp_path, "pool.json", config_text())))
    tuned = build_dags(
        load_config(_config_file(tmp_path, "pool2.json", config_text(extra={"failurePool": {"scheduleSecond": 120}})))
    )

    pool = default["cupid_pool_failure_pool"]
    assert pool.task_ids == ["drain"]
    drain = pool.get_task("drain")
    assert isinstance(drain, CallbackOperator)
    assert drain.failure_pool is True
    assert drain.config_path == str(tmp_path / "pool.json")
    assert pool.schedule == timedelta(seconds=600)
    assert pool.catchup is False
    assert pool.max_active_runs == 1
    assert "cupid" in pool.tags
    assert "s3cret-Pa55" not in (pool.doc_md or "")
    assert tuned["cupid_pool2_failure_pool"].schedule == timedelta(seconds=120)


def test_every_task_has_an_execution_timeout(tmp_path: Path) -> None:
    config = load_config(_config_file(tmp_path, "bounded.json", config_text(extra={"reconcile": {"enabled": True}})))
    tasks = [task for dag in build_dags(config).values() for task in dag.tasks]
    assert {t.task_id for t in tasks} >= {"compare", "deliver", "drain", "reconcile"}
    unbounded = [f"{t.dag_id}.{t.task_id}" for t in tasks if t.task_id != "done" and t.execution_timeout is None]
    assert unbounded == []


def test_reconcile_dag_only_when_enabled(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    plain = build_dags(load_config(_config_file(tmp_path, "plain.json", config_text())))
    assert "cupid_plain_reconcile" not in plain

    daily = build_dags(
        load_config(_config_file(tmp_path, "rec.json", config_text(extra={"reconcile": {"enabled": True}})))
    )
    assert sorted(daily) == ["cupid_rec_failure_pool", "cupid_rec_reconcile", "cupid_rec_sync"]
    reconcile = daily["cupid_rec_reconcile"]
    assert sorted(reconcile.task_ids) == ["deliver", "done", "reconcile"]  # it delivers its own findings
    assert reconcile.get_task("deliver").upstream_task_ids == {"reconcile"}
    assert reconcile.catchup is False
    assert reconcile.max_active_runs == 1
    assert "cupid" in reconcile.tags
    assert "s3cret-Pa55" not in (reconcile.doc_md or "")

    hourly = build_dags(
        load_config(
            _config_file(tmp_path, "rec2.json", config_text(extra={"reconcile": {"enabled": True, "schedule": 3600}}))
        )
    )
    assert hourly["cupid_rec2_reconcile"].schedule == timedelta(seconds=3600)

    # a task run of the reconcile DAG builds that config's DAGs only
    monkeypatch.setenv(PARSING_CONTEXT_ENV, "cupid_rec_reconcile")
    folder = make_dags_folder(
        tmp_path, {"rec.json": config_text(extra={"reconcile": {"enabled": True}}), "other.json": config_text()}
    )
    assert sorted(load_dags(folder)) == ["cupid_rec_failure_pool", "cupid_rec_reconcile", "cupid_rec_sync"]


def test_task_failure_alerts_only_when_notify_is_configured(tmp_path: Path) -> None:
    from cupid_airflow.notify import TaskFailureAlert

    def callbacks(task: Any) -> list[Any]:
        value = task.on_failure_callback
        return list(value) if isinstance(value, (list, tuple)) else [value] if value else []

    quiet = build_dags(load_config(_config_file(tmp_path, "quiet.json", config_text())))
    for dag in quiet.values():
        assert all(callbacks(task) == [] for task in dag.tasks), dag.dag_id

    hook = {"notify": {"webhooks": [{"url": "http://127.0.0.1:1/alert", "format": "text"}]}}
    loud = build_dags(load_config(_config_file(tmp_path, "loud.json", config_text(extra=hook))))
    for task_id in ("compare", "deliver"):
        found = callbacks(loud["cupid_loud_sync"].get_task(task_id))
        assert [type(c) for c in found] == [TaskFailureAlert], (task_id, found)
    assert [type(c) for c in callbacks(loud["cupid_loud_failure_pool"].get_task("drain"))] == [TaskFailureAlert]


def test_generated_dags_serialize(tmp_path: Path) -> None:
    """What the dag processor stores must round-trip: schedule, params, trigger rule, retries."""
    from airflow.serialization.serialized_objects import DagSerialization

    dags = build_dags(load_config(_config_file(tmp_path, "ser.json", config_text(extra={"retries": 2}))))
    for dag in dags.values():
        restored = DagSerialization.from_dict(DagSerialization.to_dict(dag))
        assert restored.dag_id == dag.dag_id
        assert sorted(restored.task_ids) == sorted(dag.task_ids)
    restored_sync = DagSerialization.from_dict(DagSerialization.to_dict(dags["cupid_ser_sync"]))
    assert restored_sync.get_task("deliver").retries == 2
    assert restored_sync.get_task("deliver").trigger_rule == "all_done"


# -- the parsing context: a task run builds only its own DAG ---------------------------------------


def test_parsing_context_builds_only_the_wanted_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = make_dags_folder(tmp_path, {"a.json": config_text(), "b.json": config_text(), "c.json": BAD_CONFIG})
    read: list[str] = []
    real_load_config = dag_factory.load_config

    def spy(path: Any) -> Any:
        read.append(Path(path).name)
        return real_load_config(path)

    monkeypatch.setattr(dag_factory, "load_config", spy)
    monkeypatch.setenv(PARSING_CONTEXT_ENV, "cupid_a_sync")

    from airflow.sdk import get_parsing_context

    assert get_parsing_context().dag_id == "cupid_a_sync"
    assert sorted(load_dags(folder)) == ["cupid_a_failure_pool", "cupid_a_sync"]
    assert read == ["a.json"]
    # the error DAG file is quiet in a task run: the broken config is not its concern
    raise_config_errors(folder)
    assert read == ["a.json"]

    monkeypatch.setenv(PARSING_CONTEXT_ENV, "cupid_b_failure_pool")
    assert sorted(load_dags(folder)) == ["cupid_b_failure_pool", "cupid_b_sync"]


def test_parsing_context_in_a_dagbag(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = make_dags_folder(tmp_path, {"a.json": config_text(), "b.json": config_text(), "c.json": BAD_CONFIG})
    monkeypatch.setenv(PARSING_CONTEXT_ENV, "cupid_a_sync")

    bag = dagbag(folder)

    assert sorted(bag.dag_ids) == ["cupid_a_failure_pool", "cupid_a_sync"]
    assert bag.import_errors == {}


def test_parsing_context_for_another_dag_builds_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = make_dags_folder(tmp_path, {"a.json": config_text()})
    monkeypatch.setenv(PARSING_CONTEXT_ENV, "some_other_dag")

    assert load_dags(folder) == {}


# -- no database or network at parse time ---------------------------------------------------------


def test_parsing_never_connects(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """DSNs to a closed port and to a black-holed address: parsing is instant and opens no connection."""
    folder = make_dags_folder(
        tmp_path,
        {
            "closed.json": config_text(src_dsn=UNREACHABLE_DSN, des_dsn=UNREACHABLE_DSN),
            "blackhole.json": config_text(
                src_dsn=BLACKHOLE_DSN,
                des_dsn=BLACKHOLE_DSN,
                callback_url="http://192.0.2.1:81/cb",
                extra={"state": {"dsn": BLACKHOLE_DSN}},
            ),
        },
    )
    import MySQLdb

    attempts: list[Any] = []

    def refuse(*args: Any, **kwargs: Any) -> Any:
        attempts.append(args or kwargs)
        raise AssertionError(f"a connection was opened at parse time: {args} {kwargs}")

    monkeypatch.setattr(MySQLdb, "connect", refuse)
    monkeypatch.setattr(MySQLdb, "Connect", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)

    dags = load_dags(folder)
    raise_config_errors(folder)
    bag = dagbag(folder)

    assert attempts == []  # every way to open a connection raises: parsing never waits on a network
    assert (
        sorted(dags)
        == sorted(bag.dag_ids)
        == [
            "cupid_blackhole_failure_pool",
            "cupid_blackhole_sync",
            "cupid_closed_failure_pool",
            "cupid_closed_sync",
        ]
    )
    assert bag.import_errors == {}


# -- the real CLI lists the generated DAGs --------------------------------------------------------


def json_output(stdout: str) -> Any:
    """The JSON document of an ``airflow ... -o json`` command.

    Airflow 3.3 logs some warnings on stdout before it (e.g. "Could not import graphviz"), so the
    document is the last line that starts with ``[`` or ``{``.
    """
    lines = [line for line in stdout.splitlines() if line.startswith(("[", "{"))]
    assert lines, f"no JSON in the output:\n{stdout}"
    return json.loads(lines[-1])


def _airflow() -> str:
    return str(Path(sys.executable).with_name("airflow"))


@pytest.mark.integration
def test_airflow_dags_list_shows_both_dags_of_a_config(airflow_db: Path, tmp_path: Path) -> None:
    stem = f"listed_{secrets.token_hex(3)}"
    folder = make_dags_folder(tmp_path, {f"{stem}.json": config_text(), f"{stem}_bad.json": BAD_CONFIG})
    env = {**os.environ, "AIRFLOW__CORE__DAGS_FOLDER": str(folder)}
    for name in ("CUPID_CONFIG_FOLDER", "AIRFLOW__CUPID__CONFIG_FOLDER", PARSING_CONTEXT_ENV):
        env.pop(name, None)

    def airflow(*args: str, expect: int = 0) -> subprocess.CompletedProcess[str]:
        result = subprocess.run([_airflow(), *args], env=env, capture_output=True, text=True, timeout=180, check=False)
        assert result.returncode == expect, f"airflow {' '.join(args)}:\n{result.stdout}\n{result.stderr}"
        return result

    # `dags list` reads the metadata DB (what the dag processor stored); `dags reserialize` parses the
    # dags-folder bundle (AIRFLOW__CORE__DAGS_FOLDER) and stores it, as the dag processor would.
    airflow("dags", "reserialize")
    listed = json_output(airflow("dags", "list", "-o", "json").stdout)
    ids = {d["dag_id"] for d in listed}
    assert {f"cupid_{stem}_sync", f"cupid_{stem}_failure_pool"} <= ids, sorted(ids)
    assert not any(i.startswith(f"cupid_{stem}_bad") for i in ids)

    # exits 1 whenever there is an import error
    errors = json_output(airflow("dags", "list-import-errors", "-o", "json", expect=1).stdout)
    ours = [e for e in errors if str(folder) in e["error"]]
    assert len(ours) == 1, errors
    assert ours[0]["filepath"] == "cupid_config_errors.py"  # relative to the dags-folder bundle
    assert f"{stem}_bad.json" in ours[0]["error"]
    assert "src.tabel: unknown key" in ours[0]["error"]


# -- dag.test() against MariaDB --------------------------------------------------------------------


@pytest.fixture
def receiver() -> Iterator[CallbackReceiver]:
    with CallbackReceiver() as server:
        yield server


def assert_synced_once(
    dag_run: Any,
    xcom_value: Callable[..., Any],
    receiver: CallbackReceiver,
    airflow_variables: AirflowVariables,
    stem: str,
) -> None:
    assert dag_run.state == "success", [(ti.task_id, ti.state) for ti in dag_run.get_task_instances()]
    assert dag_run.get_task_instance("compare").state == "success"
    assert dag_run.get_task_instance("deliver").state == "success"
    assert dag_run.get_task_instance("done").state == "success"

    summary = xcom_value(dag_run, "compare")
    assert summary["config"] == stem
    copy0 = summary["destinations"]["copy0"]
    assert copy0["mismatches"] == {"missing": 1, "different": 0}
    assert copy0["error"] is None
    assert copy0["cursorAfter"]["insertId"] == 4
    assert summary["recorded"] == 1

    delivered = xcom_value(dag_run, "deliver")
    assert delivered["mode"] == "sync"
    assert delivered["destinations"]["copy0"]["delivered"] == 1
    assert delivered["destinations"]["copy0"]["failed"] == 0
    assert delivered["store"]["pending"] == 0
    assert delivered["store"]["delivered"] == 1

    posts = [r for r in receiver.requests if r[0] == "POST"]
    assert len(posts) == 1, posts
    _, path, headers, raw = posts[0]
    assert path == "/cupid/callback"
    assert headers.get("Content-Type", "").startswith("application/json")
    body = json.loads(raw)
    assert body["type"] == 1
    assert body["srcColumn"]["id"] == "2"
    assert body["srcColumn"]["number"] == "n-002"
    assert body["srcColumn"]["name"] == "bob"
    assert body["srcColumn"]["avatar"] is None
    assert "update_time" in body["srcColumn"]
    assert body["destination"] == "copy0"
    assert body["destinationTable"] == "user_copy"

    cursor = json.loads(airflow_variables.get(f"cupid_{stem}_copy0_cursor") or "null")
    assert cursor["insertId"] == 4


@pytest.mark.integration
def test_sync_dag_runs_end_to_end_with_dsns(
    run_dag: Callable[..., Any],
    xcom_value: Callable[..., Any],
    airflow_variables: AirflowVariables,
    mariadb: MariaDB,
    fresh_database: str,
    receiver: CallbackReceiver,
    tmp_path: Path,
) -> None:
    create_tables(mariadb, fresh_database)
    stem = f"e2e_dsn_{secrets.token_hex(3)}"
    dsn = mariadb.go_dsn(fresh_database)
    path = _config_file(
        tmp_path,
        f"{stem}.json",
        config_text(src_dsn=dsn, des_dsn=dsn, des_table="user_copy", callback_url=receiver.url),
    )
    dag = build_dags(load_config(path))[f"cupid_{stem}_sync"]

    dag_run = run_dag(dag)

    assert_synced_once(dag_run, xcom_value, receiver, airflow_variables, stem)


@pytest.mark.integration
def test_sync_dag_runs_end_to_end_with_airflow_connections(
    run_dag: Callable[..., Any],
    xcom_value: Callable[..., Any],
    airflow_variables: AirflowVariables,
    mariadb: MariaDB,
    fresh_database: str,
    receiver: CallbackReceiver,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    create_tables(mariadb, fresh_database)
    stem = f"e2e_conn_{secrets.token_hex(3)}"
    conn_id = f"cupid_{stem}"
    monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", mariadb.uri(fresh_database))
    path = _config_file(
        tmp_path,
        f"{stem}.json",
        config_text(src_conn_id=conn_id, des_conn_id=conn_id, des_table="user_copy", callback_url=receiver.url),
    )
    config = load_config(path)
    assert config.src.conn_id == conn_id and config.src.dsn is None
    dag = build_dags(config)[f"cupid_{stem}_sync"]
    assert f"connection '{conn_id}'" in (dag.doc_md or "")

    dag_run = run_dag(dag)

    assert_synced_once(dag_run, xcom_value, receiver, airflow_variables, stem)

"""Proves the shared harness: ``dag.test()`` runs tasks that use Variables, XCom and a MariaDB connection."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

import pendulum
import pytest

if TYPE_CHECKING:
    from collections.abc import Callable

    from conftest import AirflowVariables, MariaDB

pytestmark = pytest.mark.integration


def test_task_sets_and_reads_a_variable_and_pushes_xcom(
    run_dag: Callable[..., Any],
    xcom_value: Callable[..., Any],
    airflow_variables: AirflowVariables,
) -> None:
    from airflow.sdk import DAG, Variable, task

    airflow_variables.set("harness_seed", "41")

    with DAG("harness_variables_xcom", schedule=None, start_date=pendulum.datetime(2024, 1, 1)) as dag:

        @task
        def bump() -> dict[str, int]:
            seed = int(Variable.get("harness_seed"))
            Variable.set("harness_cursor", str(seed + 1))
            return {"cursor": int(Variable.get("harness_cursor"))}

        @task
        def double(summary: dict[str, int]) -> int:
            return summary["cursor"] * 2

        # At parse time a @task call returns an XComArg; Airflow resolves it before `double` runs.
        double(bump())  # type: ignore[arg-type]

    dag_run = run_dag(dag)

    assert dag_run.state == "success"
    assert xcom_value(dag_run, "bump") == {"cursor": 42}
    assert xcom_value(dag_run, "double") == 84
    assert airflow_variables.get("harness_cursor") == "42"


def test_dag_can_run_twice_and_reports_a_failed_task(run_dag: Callable[..., Any]) -> None:
    from airflow.sdk import DAG, task

    with DAG("harness_failure", schedule=None, start_date=pendulum.datetime(2024, 1, 1)) as dag:

        @task
        def fail() -> None:
            raise ValueError("expected failure")

        fail()

    first = run_dag(dag)
    second = run_dag(dag)

    assert first.run_id != second.run_id
    assert second.state == "failed"
    assert second.get_task_instance("fail").state == "failed"


def test_task_reads_fresh_database_through_an_env_connection(
    run_dag: Callable[..., Any],
    xcom_value: Callable[..., Any],
    mariadb: MariaDB,
    fresh_database: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from airflow.providers.mysql.hooks.mysql import MySqlHook
    from airflow.sdk import DAG, task

    connection = mariadb.connect(fresh_database)
    try:
        cursor = connection.cursor()
        cursor.execute("CREATE TABLE user (id BIGINT PRIMARY KEY, name VARCHAR(64))")
        cursor.execute("INSERT INTO user VALUES (1, 'ann'), (2, 'bob')")
    finally:
        connection.close()
    monkeypatch.setenv("AIRFLOW_CONN_HARNESS_SOURCE", mariadb.uri(fresh_database))

    with DAG("harness_mariadb", schedule=None, start_date=pendulum.datetime(2024, 1, 1)) as dag:

        @task
        def names() -> list[str]:
            hook = MySqlHook(mysql_conn_id="harness_source")
            return [row[0] for row in hook.get_records("SELECT name FROM user ORDER BY id")]

        names()

    dag_run = run_dag(dag)

    assert dag_run.state == "success"
    assert xcom_value(dag_run, "names") == ["ann", "bob"]


def test_a_skipped_test_fails_the_run_and_names_its_reason() -> None:
    import secrets
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    folder = Path(__file__).parent / f"probe_{secrets.token_hex(4)}"
    folder.mkdir()
    try:
        (folder / "test_probe.py").write_text(
            "import pytest\n\ndef test_needs_a_server():\n    pytest.skip('the second server did not start')\n"
        )
        env = {k: v for k, v in os.environ.items() if k != "CUPID_ALLOW_SKIPS"}
        run = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(folder)],
            capture_output=True, text=True, timeout=120, check=False, env=env,
        )  # fmt: skip
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    assert run.returncode == 1, run.stdout
    assert "SKIPPED" in run.stdout and "the second server did not start" in run.stdout

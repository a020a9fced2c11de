"""``airflow dags test`` runs a generated sync DAG from a dags folder, as an operator would by hand.

The command runs as a real subprocess with ``AIRFLOW__CORE__DAGS_FOLDER`` pointing at a temporary
folder holding copies of the repo's DAG files and one config; the rest of the environment (the
session's ``AIRFLOW_HOME`` and SQLite metadata DB) is inherited from ``conftest``.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.support.dags_folder import (
    PARSING_CONTEXT_ENV,
    CallbackReceiver,
    config_text,
    create_tables,
    make_dags_folder,
)

if TYPE_CHECKING:
    from conftest import MariaDB

pytestmark = pytest.mark.integration


def test_airflow_dags_test_runs_a_generated_sync_dag(
    airflow_db: Path, mariadb: MariaDB, fresh_database: str, tmp_path: Path
) -> None:
    create_tables(mariadb, fresh_database)
    stem = f"cli_{secrets.token_hex(3)}"
    dsn = mariadb.go_dsn(fresh_database)
    with CallbackReceiver() as receiver:
        folder = make_dags_folder(
            tmp_path,
            {f"{stem}.json": config_text(src_dsn=dsn, des_dsn=dsn, des_table="user_copy", callback_url=receiver.url)},
        )
        env = {**os.environ, "AIRFLOW__CORE__DAGS_FOLDER": str(folder)}
        for name in ("CUPID_CONFIG_FOLDER", "AIRFLOW__CUPID__CONFIG_FOLDER", PARSING_CONTEXT_ENV):
            env.pop(name, None)

        started = time.monotonic()
        result = subprocess.run(
            [str(Path(sys.executable).with_name("airflow")), "dags", "test", f"cupid_{stem}_sync"],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        elapsed = time.monotonic() - started

    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "cupid summary" in output, output
    assert "cupid delivery summary" in output, output
    assert f"cupid_{stem}_sync" in output
    assert "state=success" in output
    posts = [json.loads(body) for method, _, _, body in receiver.requests if method == "POST"]
    assert len(posts) == 1, posts
    assert posts[0]["type"] == 1
    assert posts[0]["srcColumn"]["number"] == "n-002"
    print(f"airflow dags test: {elapsed:.1f}s")

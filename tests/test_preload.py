"""``cupid_airflow.preload`` in ``airflow_local_settings.py`` loads cupid's task modules in every Airflow process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import TYPE_CHECKING

from cupid_airflow.preload import MODULES

if TYPE_CHECKING:
    from pathlib import Path

PROBE = """
import json, sys
import airflow.settings
print(json.dumps(sorted(m for m in {modules!r} if m in sys.modules)))
"""


def loaded_after_airflow_starts(home: Path) -> list[str]:
    result = subprocess.run(
        [sys.executable, "-c", PROBE.format(modules=MODULES)],
        env={**os.environ, "AIRFLOW_HOME": str(home)},
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    loaded: list[str] = json.loads(result.stdout.strip().splitlines()[-1])
    return loaded


def test_airflow_local_settings_preloads_every_task_time_module(tmp_path: Path) -> None:
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "airflow_local_settings.py").write_text(
        "__all__: list[str] = []\nimport cupid_airflow.preload  # noqa: E402, F401\n"
    )

    assert loaded_after_airflow_starts(tmp_path) == sorted(MODULES)


def test_without_it_airflow_loads_none_of_cupid(tmp_path: Path) -> None:
    assert [m for m in loaded_after_airflow_starts(tmp_path) if m.startswith("cupid_airflow")] == []

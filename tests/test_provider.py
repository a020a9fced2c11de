"""Airflow discovers cupid-airflow as a provider through its entry point."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest

import cupid_airflow
from cupid_airflow.get_provider_info import DESCRIPTION, get_provider_info

pytestmark = pytest.mark.integration


def test_provider_info_names_the_distribution_and_its_version() -> None:
    info = get_provider_info()

    assert info["package-name"] == "cupid-airflow"
    assert info["versions"] == [cupid_airflow.__version__] == [version("cupid-airflow")]


def test_airflow_providers_list_shows_cupid() -> None:
    airflow = Path(sys.executable).with_name("airflow")
    result = subprocess.run(
        [str(airflow), "providers", "list", "--output", "json"],
        env=os.environ.copy(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr

    # The JSON is the last line: Airflow may log warnings to stdout before it.
    listed = json.loads(result.stdout.strip().splitlines()[-1])
    providers = {entry["package_name"]: entry for entry in listed}

    assert "cupid-airflow" in providers, sorted(providers)
    assert providers["cupid-airflow"]["version"] == "0.1.0"
    # `providers list` strips trailing dots and RST markup from descriptions.
    assert providers["cupid-airflow"]["description"] == DESCRIPTION.rstrip(".")


def test_every_module_the_provider_lists_imports() -> None:
    modules = [module for entry in get_provider_info()["operators"] for module in entry["python-modules"]]

    assert modules
    for module in modules:
        importlib.import_module(module)


def _airflow(*args: str) -> subprocess.CompletedProcess[str]:
    airflow = Path(sys.executable).with_name("airflow")
    return subprocess.run(
        [str(airflow), *args], env=os.environ.copy(), capture_output=True, text=True, timeout=120, check=False
    )


def test_airflow_sees_the_config_section_notifiers_and_cli_group() -> None:
    configs = _airflow("providers", "configs", "--output", "json")
    assert configs.returncode == 0, configs.stderr
    sections = {e["provider_config"][0]: e["provider_config"][1] for e in json.loads(configs.stdout.splitlines()[-1])}
    assert "config_folder" in sections["cupid-airflow"]["cupid"]["options"]

    notifications = _airflow("providers", "notifications", "--output", "json")
    listed = {e["notification_class_name"] for e in json.loads(notifications.stdout.splitlines()[-1])}
    assert set(get_provider_info()["notifications"]) <= listed

    group = _airflow("cupid", "--help")
    assert group.returncode == 0, group.stderr
    assert "pool" in group.stdout and "config" in group.stdout


def test_the_provider_registers_the_cupid_page_as_its_plugin_and_it_imports_lightly() -> None:
    (plugin,) = get_provider_info()["plugins"]
    assert plugin["name"] == "cupid"
    code = (
        "import importlib, sys; from airflow.plugins_manager import AirflowPlugin; "
        f"module, _, name = {plugin['plugin-class']!r}.rpartition('.'); "
        "cls = getattr(importlib.import_module(module), name); "
        "assert issubclass(cls, AirflowPlugin) and cls.name == 'cupid', cls; "
        "assert cls.external_views[0]['url_route'] == 'cupid' and cls.fastapi_apps[0]['url_prefix'] == '/cupid'; "
        "print(sorted(m for m in sys.modules if m.startswith(('cupid_airflow.plugins.api', 'fastapi'))))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "[]", "the page's app is built on its first request, not on import"

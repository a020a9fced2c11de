"""``airflow cupid ...`` and ``python -m cupid_airflow ...``, run as real subprocesses.

Every bad input is one line on stderr (no traceback) and touches nothing: bad arguments are refused before
the store is opened, which the configs pointing at a closed port prove (a store call would fail with a
connection error instead). Destructive actions need ``--yes``.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import yaml

from cupid_airflow.core.config import load_config, parse_json5
from cupid_airflow.dag_factory import build_dags
from tests.support.dags_folder import CallbackReceiver, config_text, create_tables

if TYPE_CHECKING:
    from collections.abc import Callable

    from conftest import MariaDB

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[1]
CLOSED_DSN = "cupid:Cl0sedPa55word@tcp(127.0.0.1:1)/state"


def cupid(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``python -m cupid_airflow ARGS`` (the same commands as ``airflow cupid``, without Airflow's CLI)."""
    return subprocess.run(
        [sys.executable, "-m", "cupid_airflow", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=REPO,
        env=env or os.environ.copy(),
    )


def airflow_cupid(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(Path(sys.executable).with_name("airflow")), "cupid", *args],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env=env or os.environ.copy(),
    )


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 1, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert result.stdout == "", result.stdout
    return lines[0]


def write(folder: Path, name: str, text: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture
def closed_config(tmp_path: Path) -> Path:
    """A good config whose state database is a closed port: any store call would fail."""
    return write(tmp_path, "closed.json", config_text(src_dsn=CLOSED_DSN, des_dsn=CLOSED_DSN))


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["list", "--status", ""], "--status is empty: give one or more of pending, parked, delivered"),
        (["list", "--status", " , "], "--status is empty"),
        (["list", "--status", "parked,lost"], "--status: unknown status(es) lost (accepted: pending, parked"),
        (["list", "--limit", "-1"], "--limit takes a whole number from 1 to 100000, not '-1'"),
        (["list", "--limit", "0"], "--limit takes a whole number from 1 to 100000, not '0'"),
        (["list", "--limit", "ten"], "--limit takes a whole number from 1 to 100000, not 'ten'"),
        (["requeue", "--from", ""], "--from is empty"),
        (["requeue", "--ids", ""], "--ids is empty: give item ids such as 17,18, or leave --ids out for every item"),
        (["requeue", "--ids", "1,x,-2"], "--ids takes comma-separated item ids (whole numbers from 1), not x, -2"),
        (["requeue", "--from", "delivered"], "requeue --from delivered sends again items the receiver already took"),
        (["requeue", "--from", "dead,resolved", "--ids", "3"], "add --yes to confirm"),
        (["purge"], "purge deletes the delivered, resolved items of the config: add --yes to confirm"),
        (["purge", "--ids", "", "--yes"], "--ids is empty"),
        (
            ["purge", "--status", "parked", "--yes"],
            "refusing to purge undelivered items (parked): add --i-know-this-loses-data",
        ),
        (["dead", "--max-attempts", "0"], "--max-attempts takes a whole number"),
        (["dead"], "no limit to apply: give --max-attempts or --max-age-second, or set failurePool.maxAttempts"),
    ],
)
def test_every_bad_argument_is_one_line_and_no_store_call(closed_config: Path, args: list[str], message: str) -> None:
    action, *options = args
    line = one_line_error(cupid("pool", action, str(closed_config), *options))
    assert message in line, line
    assert "state database" not in line  # refused before the store was opened


BROKEN_CONFIGS: list[tuple[Callable[[Path], Path], str]] = [
    (
        lambda d: write(d, "broken.json", '{"src": {"table": "user"},\n "des": [}'),
        "broken.json: not valid JSON (comments allowed): Expected a value at line 2, column 10",
    ),
    (lambda d: write(d, "bad.yaml", "src: [\n"), "bad.yaml: not valid YAML"),
    (
        lambda d: write(d, "typo.json", config_text().replace('"byColumn"', '"byColum"', 1)),
        "src.byColum: unknown key (did you mean 'byColumn'?)",
    ),
    (lambda d: d / "absent.json", "no config file"),
    (lambda d: Path(" "), "the config is empty"),
]


def test_a_broken_or_missing_config_is_one_line(tmp_path: Path) -> None:
    """A broken config printed a traceback."""
    for make, message in BROKEN_CONFIGS:
        line = one_line_error(cupid("pool", "stats", str(make(tmp_path))))
        assert message in line, line


def test_an_unreachable_state_database_is_one_line_without_the_password(closed_config: Path) -> None:
    line = one_line_error(cupid("pool", "stats", str(closed_config)))
    assert "closed: state database (dsn 'cupid:***@tcp(127.0.0.1:1)/state')" in line, line
    assert "Cl0sedPa55word" not in line


def test_an_undefined_or_loginless_connection_is_one_line(tmp_path: Path) -> None:
    conn_id = f"cupid_cli_{secrets.token_hex(3)}"
    path = write(tmp_path, "conn.json", config_text(src_dsn=None, src_conn_id=conn_id))
    assert f"{conn_id}" in one_line_error(cupid("pool", "stats", str(path)))
    env = {**os.environ, f"AIRFLOW_CONN_{conn_id.upper()}": json.dumps({"conn_type": "mysql", "host": "127.0.0.1"})}
    line = one_line_error(cupid("pool", "stats", str(path), env=env))
    assert f"connection '{conn_id}' has no login" in line, line


def store_statuses(mariadb: MariaDB, database: str, config: str) -> dict[str, str]:
    conn = mariadb.connect(database)
    try:
        cursor = conn.cursor()
        cursor.execute("SELECT row_key, status FROM cupid_delivery WHERE config = %s", (config,))
        return {(k.decode() if isinstance(k, bytes) else k): s for k, s in cursor.fetchall()}
    finally:
        conn.close()


def test_pool_commands_on_a_real_store(
    run_dag: Callable[..., Any], mariadb: MariaDB, fresh_database: str, tmp_path: Path
) -> None:
    create_tables(mariadb, fresh_database, missing_number="none")  # every source row is missing, below
    conn = mariadb.connect(fresh_database)
    try:
        conn.cursor().execute("DELETE FROM user_copy")
    finally:
        conn.close()
    stem = f"cli_{secrets.token_hex(3)}"
    dsn = mariadb.go_dsn(fresh_database)
    with CallbackReceiver() as receiver:
        document = parse_json5(config_text(src_dsn=dsn, des_dsn=dsn, des_table="user_copy", callback_url=receiver.url))
        document["retries"] = 0
        document["failurePool"] = {"maxAttempts": 5}
        path = write(tmp_path / "dags" / "cupid", f"{stem}.json", json.dumps(document))
        run_dag(build_dags(load_config(path))[f"cupid_{stem}_sync"])
    before = store_statuses(mariadb, fresh_database, stem)
    assert before == {"n-001": "delivered", "n-002": "delivered", "n-003": "delivered"}

    # by name, through `airflow cupid`, in the formats Airflow users expect
    env = {**os.environ, "AIRFLOW__CORE__DAGS_FOLDER": str(tmp_path / "dags")}
    env.pop("CUPID_CONFIG_FOLDER", None)
    stats = airflow_cupid("pool", "stats", stem, "--output", "json", env=env)
    assert stats.returncode == 0, stats.stderr
    [row] = json.loads(stats.stdout.strip().splitlines()[-1])
    assert (row["config"], row["delivered"], row["parked"], row["oldestParkedSecond"]) == (stem, 3, 0, None)
    as_yaml = cupid("pool", "stats", stem, "-o", "yaml", env=env)
    assert yaml.safe_load(as_yaml.stdout)[0]["delivered"] == 3
    listing = cupid("pool", "list", str(path), "--status", "delivered", "-o", "json")
    assert {item["lastBody"]["srcColumn"]["number"] for item in json.loads(listing.stdout)} == set(before)
    table = cupid("pool", "list", str(path), "--status", "delivered")
    assert table.returncode == 0 and table.stdout.strip().endswith("3 item(s)")

    # requeue of delivered items needs --yes; an empty --ids never means "all"
    for refused in (["--from", "delivered"], ["--from", "delivered", "--ids", "", "--yes"]):
        one_line_error(cupid("pool", "requeue", str(path), *refused))
        assert store_statuses(mariadb, fresh_database, stem) == before
    first = json.loads(listing.stdout)[0]["id"]
    moved = cupid("pool", "requeue", str(path), "--from", "delivered", "--ids", str(first), "--yes")
    assert moved.stdout.strip() == f"requeued 1 item(s) into the failure pool of {stem}", moved.stderr
    after = store_statuses(mariadb, fresh_database, stem)
    assert sorted(after.values()) == ["delivered", "delivered", "parked"]

    # purge needs --yes; dead applies the config's limits (or the given ones)
    one_line_error(cupid("pool", "purge", str(path)))
    assert store_statuses(mariadb, fresh_database, stem) == after
    purged = cupid("pool", "purge", str(path), "--yes")
    assert purged.stdout.strip() == f"purged 2 item(s) of {stem}", purged.stderr
    dead = cupid("pool", "dead", str(path), "--max-age-second", "1")
    assert dead.returncode == 0, dead.stderr
    assert dead.stdout.startswith("moved ") and "to dead" in dead.stdout


# == airflow cupid config check ============================================================================


def test_config_check_builds_the_dags_and_names_each_broken_file(tmp_path: Path) -> None:
    folder = tmp_path / "configs"
    write(folder, "good.json", config_text())
    write(folder, "also_good.yaml", "# yaml\n" + yaml.safe_dump(parse_json5(config_text())))
    long_name = "x" * 96  # loads (a valid file name) but its tag 'cupid:xxx...' is too long for a DAG
    write(folder, f"{long_name}.json", config_text())
    write(folder, "broken.json", "{")
    extra = write(tmp_path, "good.json", config_text())  # a second file naming the config 'good'

    result = cupid("config", "check", str(folder), str(extra), str(tmp_path / "nothing.json"), "-o", "json")

    assert result.returncode == 1, result.stderr
    assert result.stderr.strip() == "4 of 5 config file(s) are broken"
    rows = {Path(row["file"]).name: row for row in json.loads(result.stdout)}
    assert rows["also_good.yaml"]["status"] == "ok"
    assert rows["also_good.yaml"]["dags"] == "cupid_also_good_failure_pool, cupid_also_good_sync"
    assert rows[f"{long_name}.json"]["status"] == "broken"
    assert (
        "its DAGs cannot be built: ValueError: tag cannot be longer than 100 characters"
        in rows[f"{long_name}.json"]["notes"]
    )
    assert rows["broken.json"]["status"] == "broken" and "not valid JSON" in rows["broken.json"]["notes"]
    assert rows["nothing.json"]["notes"] == "no such file or folder"
    clash = next(row for row in rows.values() if "name the config 'good'" in row["notes"])
    assert clash["status"] == "broken"


def test_airflow_cupid_config_check_of_good_files_exits_0_with_a_table(tmp_path: Path) -> None:
    path = write(tmp_path, "sample.json", (REPO / "tests" / "data" / "cupid-go-testConfig.json").read_text())
    result = airflow_cupid("config", "check", str(path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "cupid_sample_sync" in result.stdout and "| ok" in result.stdout
    assert "has no scheme" in result.stdout  # the sample's warnings are shown

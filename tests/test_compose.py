"""The docker-compose stack is well-formed and everything it points at exists (checked without Docker)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import pytest
import yaml
from compose_spec import PyCompose

import cupid_airflow
from cupid_airflow.core.config import load_config

if TYPE_CHECKING:
    from conftest import MariaDB

REPO = Path(__file__).resolve().parent.parent
COMPOSE_FILE = REPO / "docker-compose.yaml"
DOCKERFILE = REPO / "docker" / "Dockerfile"
IMAGE = f"cupid-airflow:{cupid_airflow.__version__}"
AIRFLOW_SERVICES = {
    "airflow-apiserver",
    "airflow-scheduler",
    "airflow-dag-processor",
    "airflow-triggerer",
    "airflow-init",
}
CELERY_SERVICES = {"airflow-worker", "flower"}
MYSQL_SERVICES = {"source-db", "destination-db"}
REQUIRED_SERVICES = AIRFLOW_SERVICES | CELERY_SERVICES | MYSQL_SERVICES | {"postgres", "receiver", "redis"}
CLUSTER_SCRIPT = REPO / "scripts" / "cluster.sh"

_VARIABLE = re.compile(r"\$\$|\$\{(\w+)(?:(:?[-?])([^}]*))?\}|\$(\w+)")


def interpolate(text: str, variables: dict[str, str] | None = None) -> str:
    """Compose's variable interpolation: ``${X:-d}`` -> X or ``d``, ``${X}`` -> X or empty, ``$$`` -> ``$``."""
    variables = variables or {}

    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name, operator, default = match.group(1) or match.group(4), match.group(2), match.group(3)
        if operator == ":-" and variables.get(name):
            return variables[name]
        if operator in ("-", ":-"):
            return variables.get(name, default) if operator == "-" else default
        return variables.get(name, "")

    return _VARIABLE.sub(replace, text)


def load(variables: dict[str, str] | None = None) -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(interpolate(COMPOSE_FILE.read_text(), variables))
    return loaded


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    """The compose file as ``docker compose config`` would see it with no .env: interpolated, merged."""
    return load()


@pytest.fixture(scope="module")
def celery_compose() -> dict[str, Any]:
    """The compose file with ``AIRFLOW_EXECUTOR=CeleryExecutor`` (run with ``--profile celery``)."""
    return load({"AIRFLOW_EXECUTOR": "CeleryExecutor"})


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    result: dict[str, dict[str, Any]] = compose["services"]
    return result


def environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment", {})
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {key: str(value) for key, value in env.items()}


def bind_mounts(service: dict[str, Any]) -> list[tuple[str, str]]:
    """``(host path, container path)`` of each bind mount; named volumes are left out."""
    mounts = []
    for volume in service.get("volumes", []):
        source, target = volume.split(":")[:2]
        if source.startswith((".", "/")):
            mounts.append((source, target))
    return mounts


def test_compose_file_is_valid_under_the_compose_specification(compose: dict[str, Any]) -> None:
    parsed = PyCompose.from_json(json.dumps(compose))
    parsed.validate()

    assert set(parsed.service_names()) >= REQUIRED_SERVICES


def test_airflow_services_run_the_image_built_from_this_repo(services: dict[str, dict[str, Any]]) -> None:
    for name in AIRFLOW_SERVICES | CELERY_SERVICES | {"receiver"}:
        service = services[name]
        assert service["image"] == IMAGE, name
        assert service["build"] == {"context": ".", "dockerfile": "docker/Dockerfile"}, name


def test_airflow_uses_local_executor_on_the_postgres_metadata_db(services: dict[str, dict[str, Any]]) -> None:
    for name in AIRFLOW_SERVICES | CELERY_SERVICES:
        env = environment(services[name])
        assert env["AIRFLOW__CORE__EXECUTOR"] == "LocalExecutor", name
        assert urlsplit(env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]).hostname == "postgres", name
        assert services[name]["depends_on"]["postgres"]["condition"] == "service_healthy", name
    for name in AIRFLOW_SERVICES - {"airflow-init"}:
        assert services[name]["depends_on"]["airflow-init"]["condition"] == "service_completed_successfully"
    assert services["airflow-init"]["environment"]["_AIRFLOW_DB_MIGRATE"] == "true"


def test_databases_have_healthchecks(services: dict[str, dict[str, Any]]) -> None:
    for name in MYSQL_SERVICES | {"postgres"}:
        assert services[name]["healthcheck"]["test"], name
    for name in MYSQL_SERVICES:
        assert services[name]["image"] == "mysql:8.4"
        assert "mysqladmin ping" in " ".join(services[name]["healthcheck"]["test"])


def test_airflow_services_mount_the_dags_folder(services: dict[str, dict[str, Any]]) -> None:
    for name in AIRFLOW_SERVICES | CELERY_SERVICES:
        assert ("./dags", "/opt/airflow/dags") in bind_mounts(services[name]), name


def test_every_referenced_path_exists(compose: dict[str, Any], services: dict[str, dict[str, Any]]) -> None:
    declared_volumes = set(compose.get("volumes") or {})
    for name, service in services.items():
        if "build" in service:
            context = REPO / service["build"]["context"]
            assert context.is_dir(), name
            assert (context / service["build"]["dockerfile"]).is_file(), name
        for source, _ in bind_mounts(service):
            assert (REPO / source).exists(), f"{name}: {source}"
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if not source.startswith((".", "/")):
                assert source in declared_volumes, f"{name}: volume {source} is not declared"
    for name in MYSQL_SERVICES:
        init = {target: source for source, target in bind_mounts(services[name])}
        scripts = sorted((REPO / init["/docker-entrypoint-initdb.d"]).glob("*.sql"))
        assert scripts, f"{name}: no init scripts"


def test_dockerfile_extends_airflow_and_installs_this_package_with_locked_versions() -> None:
    instructions = [
        line.strip()
        for line in DOCKERFILE.read_text().splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    text = "\n".join(instructions)

    assert instructions[0] == "FROM apache/airflow:3.3.2"
    assert "uv export --frozen --no-dev --extra celery" in text
    assert re.search(r"pip install .*-r /tmp/requirements.txt /opt/cupid-airflow", text)
    copied = [
        source
        for line in instructions
        if line.startswith("COPY")
        for source in line.split()[1:-1]
        if not source.startswith("--")
    ]
    assert {"pyproject.toml", "uv.lock", "cupid_airflow"} <= set(copied)
    for source in copied:
        assert (REPO / source).exists(), source


def test_the_default_stack_needs_no_profile(services: dict[str, dict[str, Any]]) -> None:
    always = {name for name, service in services.items() if not service.get("profiles")}

    assert always >= AIRFLOW_SERVICES | MYSQL_SERVICES | {"postgres", "receiver"}
    assert always.isdisjoint(CELERY_SERVICES | {"redis"})
    for name in always:
        for dependency, how in (services[name].get("depends_on") or {}).items():
            assert dependency in always or how.get("required") is False, f"{name} needs {dependency}"


def test_the_celery_profile_is_valid_under_the_compose_specification(celery_compose: dict[str, Any]) -> None:
    PyCompose.from_json(json.dumps(celery_compose)).validate()


def test_the_celery_profile_runs_two_workers_on_a_redis_broker(celery_compose: dict[str, Any]) -> None:
    services = celery_compose["services"]
    for name in AIRFLOW_SERVICES | CELERY_SERVICES:
        env = environment(services[name])
        assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor", name
        broker = urlsplit(env["AIRFLOW__CELERY__BROKER_URL"])
        assert (broker.scheme, broker.hostname, broker.port) == ("redis", "redis", 6379), name
        backend = urlsplit(env["AIRFLOW__CELERY__RESULT_BACKEND"].removeprefix("db+"))
        metadata = urlsplit(env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"])
        assert (backend.scheme, backend.netloc, backend.path) == (metadata.scheme, metadata.netloc, metadata.path)
    assert services["redis"]["profiles"] == ["celery", "flower"]
    assert "redis-cli" in services["redis"]["healthcheck"]["test"]

    worker = services["airflow-worker"]
    assert worker["profiles"] == ["celery"]
    assert worker["command"] == "celery worker"
    assert worker["deploy"]["replicas"] == 2
    assert "inspect ping" in " ".join(worker["healthcheck"]["test"])
    assert environment(worker)["DUMB_INIT_SETSID"] == "0"  # warm shutdown: running tasks finish
    assert worker["depends_on"]["redis"]["condition"] == "service_healthy"
    assert worker["depends_on"]["airflow-init"]["condition"] == "service_completed_successfully"
    assert worker["depends_on"]["postgres"]["condition"] == "service_healthy"

    flower = services["flower"]
    assert flower["profiles"] == ["flower"]
    assert flower["command"] == "celery flower"
    assert flower["depends_on"]["redis"]["condition"] == "service_healthy"


def test_compose_and_cluster_sh_run_the_same_airflow_components(services: dict[str, dict[str, Any]]) -> None:
    script = CLUSTER_SCRIPT.read_text()
    in_cluster = set(re.findall(r'launch "\$name" airflow (celery \w+|[a-z-]+)', script))
    in_compose = {services[name]["command"] for name in (AIRFLOW_SERVICES | CELERY_SERVICES) - {"airflow-init"}}

    assert in_compose == {"api-server", "scheduler", "dag-processor", "triggerer", "celery worker", "celery flower"}
    assert in_cluster == in_compose


def test_connections_point_at_the_demo_databases(services: dict[str, dict[str, Any]]) -> None:
    env = environment(services["airflow-scheduler"])
    for variable, host in [
        ("AIRFLOW_CONN_CUPID_SOURCE", "source-db"),
        ("AIRFLOW_CONN_CUPID_DESTINATION", "destination-db"),
    ]:
        uri = urlsplit(env[variable])
        assert (uri.scheme, uri.hostname, uri.port, uri.path) == ("mysql", host, 3306, "/demo"), variable
        assert uri.password == environment(services[host])["MYSQL_ROOT_PASSWORD"], variable
        assert environment(services[host])["MYSQL_DATABASE"] == "demo"


def test_the_stack_config_uses_its_connections_and_the_receiver(services: dict[str, dict[str, Any]]) -> None:
    scheduler = services["airflow-scheduler"]
    env = environment(scheduler)
    mounts = {target: source for source, target in bind_mounts(scheduler)}
    config_files = sorted((REPO / mounts[env["CUPID_CONFIG_FOLDER"]]).glob("*.json"))
    assert config_files

    receiver = services["receiver"]["command"]
    assert receiver[:3] == ["python", "-m", "cupid_airflow.demo.receiver"]
    receiver_port = int(receiver[receiver.index("--port") + 1])
    for path in config_files:
        config = load_config(path)
        for connection in [config.src, *config.des]:
            assert f"AIRFLOW_CONN_{(connection.conn_id or '').upper()}" in env, path
        for des in config.des:
            url = urlsplit(des.callback_notification.url or "")
            assert (url.hostname, url.port) == ("receiver", receiver_port), path


@pytest.mark.integration
def test_init_scripts_create_the_demo_tables(mariadb: MariaDB, fresh_database: str) -> None:
    tables = {}
    connection = mariadb.connect(fresh_database)
    try:
        cursor = connection.cursor()
        for side in ("source", "destination"):
            for script in sorted((REPO / "docker" / "mysql-init" / side).glob("*.sql")):
                for statement in script.read_text().split(";"):
                    if statement.strip():
                        cursor.execute(statement)
            tables[side] = describe(cursor, fresh_database, "user")
            cursor.execute("DROP TABLE user")
    finally:
        connection.close()

    source, destination = tables["source"], tables["destination"]
    assert source["id"] == ("bigint", "PRI", "auto_increment")
    assert source["number"][1] == "UNI"
    assert source["update_time"][:2] == ("datetime", "MUL")
    assert destination["number"][1] == "PRI"
    assert {"number", "name", "avatar"} <= set(source) & set(destination)


def describe(cursor: Any, database: str, table: str) -> dict[str, tuple[str, str, str]]:
    """``column -> (data type, key, extra)`` from information_schema."""
    cursor.execute(
        "SELECT column_name, data_type, column_key, extra FROM information_schema.columns "
        "WHERE table_schema = %s AND table_name = %s",
        (database, table),
    )
    return {row[0]: (row[1], row[2], row[3]) for row in cursor.fetchall()}


def test_the_api_server_loads_the_providers_plugin_and_only_it_pays_for_eager_discovery(
    services: dict[str, dict[str, Any]],
) -> None:
    assert environment(services["airflow-apiserver"])["AIRFLOW__CORE__LAZY_DISCOVER_PROVIDERS"] == "false"
    for name in ("airflow-scheduler", "airflow-dag-processor", "airflow-triggerer"):
        assert "AIRFLOW__CORE__LAZY_DISCOVER_PROVIDERS" not in environment(services[name]), name

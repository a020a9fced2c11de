"""Shared test fixtures: an isolated Airflow home with a SQLite metadata DB, and the local MariaDB.

Airflow reads its configuration once, when it is first imported, so the environment below is
set at import time of this file, before any test module imports ``airflow``. Every test session
gets a fresh ``AIRFLOW_HOME`` in a temporary folder (removed at exit); set
``CUPID_TEST_AIRFLOW_HOME`` to keep one folder across sessions instead (it is kept on exit).
Subprocesses started from tests (``airflow ...`` commands) inherit the same environment.

Fixtures
--------
``airflow_db`` (session)
    Runs ``airflow db migrate`` once and yields the ``AIRFLOW_HOME`` path. Request it in any
    test that touches the metadata DB (``dag.test()``, Variables, XCom, ``airflow`` commands).
``run_dag`` (function)
    ``run_dag(dag, **test_kwargs) -> DagRun``: registers an in-memory DAG in the metadata DB
    (Airflow 3 refuses ``dag.test()`` for a DAG that was never serialized) and runs
    ``dag.test(**test_kwargs)`` in-process. A failing task does not raise: assert on
    ``dag_run.state`` and on each ``dag_run.get_task_instance(task_id).state``.
``xcom_value`` (function)
    ``xcom_value(dag_run, task_id, key="return_value")`` reads an XCom of a finished run.
``airflow_variables`` (function)
    ``.get(key)``, ``.set(key, value)``, ``.delete(key)`` on the metadata DB from test code
    (outside a task, where ``airflow.sdk.Variable`` is unavailable). ``.get`` returns None for a
    missing key.
``mariadb`` (session)
    A :class:`MariaDB` with host, port, user and password of the test server (127.0.0.1:3306,
    root, empty password; override with ``CUPID_TEST_MYSQL_HOST``/``PORT``/``USER``/``PASSWORD``),
    plus ``connect(database)``, ``uri(database)`` (an Airflow connection URI) and
    ``go_dsn(database)`` (the DSN form cupid config files use).
``fresh_database`` (function)
    Creates an empty, uniquely named database on that server, yields its name, drops it after.
``other_database`` (function)
    A second empty database on that server (a destination elsewhere), dropped after.
``receivers`` (function)
    ``receivers(**kwargs) -> Receiver``: starts a callback receiver (tests/support/receivers.py)
    on 127.0.0.1 in a background thread; every one started is stopped after the test.

The metadata DB is shared by all tests of a session: use unique DAG ids and Variable keys. To give a
task an Airflow connection, set ``AIRFLOW_CONN_<ID>`` with ``monkeypatch.setenv`` (``dag.test()``
runs tasks in this process, so they see it), e.g.
``monkeypatch.setenv("AIRFLOW_CONN_CUPID_SOURCE", mariadb.uri(fresh_database))``.
"""

from __future__ import annotations

import atexit
import hashlib
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import pytest

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    import MySQLdb.connections

    from tests.support.receivers import Receiver


def _prepare_airflow_home() -> Path:
    kept = os.environ.get("CUPID_TEST_AIRFLOW_HOME")
    if kept:
        home = Path(kept).resolve()
        home.mkdir(parents=True, exist_ok=True)
    else:
        home = Path(tempfile.mkdtemp(prefix="cupid-airflow-test-"))
        atexit.register(shutil.rmtree, home, ignore_errors=True)
    (home / "dags").mkdir(exist_ok=True)
    return home


AIRFLOW_HOME = _prepare_airflow_home()

os.environ.update(
    {
        "AIRFLOW_HOME": str(AIRFLOW_HOME),
        "AIRFLOW__CORE__DAGS_FOLDER": str(AIRFLOW_HOME / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(AIRFLOW_HOME / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        # Unit-test mode would only silence the "execute called outside the Task Runner" warning,
        # and it prints a log line on stdout of every `airflow` command, breaking `-o json`.
        "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{AIRFLOW_HOME / 'airflow.db'}",
        # One secret for the whole session, so that Airflow processes started by tests trust
        # each other's execution-API tokens.
        "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_urlsafe(32),
        "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(AIRFLOW_HOME / "logs"),
    }
)


def _airflow_cli() -> str:
    beside_python = Path(sys.executable).with_name("airflow")
    if beside_python.exists():
        return str(beside_python)
    found = shutil.which("airflow")
    if found is None:
        raise RuntimeError("the `airflow` command is not installed in this environment; run scripts/setup.sh")
    return found


@pytest.fixture(scope="session")
def airflow_db() -> Iterator[Path]:
    """Migrate the session's SQLite metadata DB once; yield ``AIRFLOW_HOME``."""
    started = time.monotonic()
    result = subprocess.run(
        [_airflow_cli(), "db", "migrate"],
        env=os.environ.copy(),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if result.returncode != 0:
        pytest.fail(f"airflow db migrate failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    print(f"airflow db migrate: {time.monotonic() - started:.1f}s in {AIRFLOW_HOME}")
    yield AIRFLOW_HOME


@pytest.fixture
def run_dag(airflow_db: Path) -> Callable[..., Any]:
    """Return ``run(dag, **test_kwargs) -> DagRun``: register the DAG, then ``dag.test()`` it."""
    from airflow.dag_processing.bundles.manager import DagBundlesManager
    from airflow.dag_processing.collection import update_dag_parsing_results_in_db
    from airflow.serialization.serialized_objects import LazyDeserializedDAG
    from airflow.utils.session import create_session

    def run(dag: Any, **test_kwargs: Any) -> Any:
        with create_session() as session:
            DagBundlesManager().sync_bundles_to_db(session=session)
            session.flush()
            update_dag_parsing_results_in_db(
                "dags-folder",
                None,
                [LazyDeserializedDAG.from_dag(dag)],
                {},
                None,
                set(),
                session=session,
            )
        return dag.test(**test_kwargs)

    return run


@pytest.fixture
def xcom_value(airflow_db: Path) -> Callable[..., Any]:
    """Return ``read(dag_run, task_id, key="return_value")``: one XCom value of a finished run."""
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    def read(dag_run: Any, task_id: str, key: str = "return_value") -> Any:
        with create_session() as session:
            row = session.scalars(
                XComModel.get_many(run_id=dag_run.run_id, dag_ids=dag_run.dag_id, task_ids=task_id, key=key)
            ).first()
            if row is None:
                raise KeyError(f"no XCom {key!r} from {dag_run.dag_id}.{task_id} in run {dag_run.run_id}")
            return XComModel.deserialize_value(row)

    return read


class AirflowVariables:
    """Read and write Airflow Variables in the metadata DB from test code."""

    def get(self, key: str) -> str | None:
        from airflow.models.variable import Variable
        from airflow.utils.session import create_session
        from sqlalchemy import select

        with create_session() as session:
            variable = session.scalar(select(Variable).where(Variable.key == key))
            return None if variable is None else variable.val

    def set(self, key: str, value: str) -> None:
        from airflow.models.variable import Variable
        from airflow.utils.session import create_session

        self.delete(key)
        with create_session() as session:
            session.add(Variable(key=key, val=value))

    def delete(self, key: str) -> None:
        from airflow.models.variable import Variable
        from airflow.utils.session import create_session
        from sqlalchemy import delete

        with create_session() as session:
            session.execute(delete(Variable).where(Variable.key == key))


@pytest.fixture
def airflow_variables(airflow_db: Path) -> AirflowVariables:
    """Variables in the metadata DB, readable and writable outside a running task."""
    return AirflowVariables()


@dataclass(frozen=True)
class MariaDB:
    """Where the test MariaDB/MySQL server listens, and how to reach one of its databases."""

    host: str
    port: int
    user: str
    password: str

    def connect(self, database: str | None = None, **kwargs: Any) -> MySQLdb.connections.Connection:
        """Open a mysqlclient connection (autocommit on, utf8mb4); the caller closes it."""
        import MySQLdb

        params: dict[str, Any] = {
            "host": self.host,
            "port": self.port,
            "user": self.user,
            "password": self.password,
            "charset": "utf8mb4",
            "autocommit": True,
        }
        if database is not None:
            params["database"] = database
        params.update(kwargs)
        return MySQLdb.connect(**params)

    def uri(self, database: str) -> str:
        """An Airflow connection URI, for ``AIRFLOW_CONN_<ID>``."""
        credentials = quote(self.user, safe="")
        if self.password:
            credentials += ":" + quote(self.password, safe="")
        return f"mysql://{credentials}@{self.host}:{self.port}/{database}"

    def go_dsn(self, database: str) -> str:
        """A Go-driver DSN, as written in cupid config files."""
        return f"{self.user}:{self.password}@tcp({self.host}:{self.port})/{database}?charset=utf8mb4"


@pytest.fixture(scope="session")
def mariadb() -> MariaDB:
    """The test database server; fails the test with a hint when it is not answering."""
    server = MariaDB(
        host=os.environ.get("CUPID_TEST_MYSQL_HOST", "127.0.0.1"),
        port=int(os.environ.get("CUPID_TEST_MYSQL_PORT", "3306")),
        user=os.environ.get("CUPID_TEST_MYSQL_USER", "root"),
        password=os.environ.get("CUPID_TEST_MYSQL_PASSWORD", ""),
    )
    try:
        server.connect().close()
    except Exception as error:
        pytest.fail(
            f"cannot reach MariaDB at {server.host}:{server.port} as {server.user!r}: {error}; "
            "run scripts/setup.sh to start it"
        )
    return server


@pytest.fixture
def fresh_database(mariadb: MariaDB, request: pytest.FixtureRequest) -> Iterator[str]:
    """Create an empty database named after the test (``cupid_t_<hash>_<random>``); drop it afterwards."""
    test_hash = hashlib.sha1(request.node.nodeid.encode()).hexdigest()[:8]
    name = f"cupid_t_{test_hash}_{secrets.token_hex(4)}"
    _execute(mariadb, f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4")
    try:
        yield name
    finally:
        _execute(mariadb, f"DROP DATABASE IF EXISTS `{name}`")


@pytest.fixture
def other_database(mariadb: MariaDB) -> Iterator[str]:
    """A second uniquely named database (a destination elsewhere), dropped afterwards."""
    name = f"cupid_t_other_{secrets.token_hex(6)}"
    _execute(mariadb, f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4")
    try:
        yield name
    finally:
        _execute(mariadb, f"DROP DATABASE IF EXISTS `{name}`")


@pytest.fixture
def receivers() -> Iterator[Callable[..., Receiver]]:
    """Start callback receivers on loopback; all are stopped after the test."""
    from tests.support.receivers import Receiver

    started: list[Receiver] = []

    def start(**kwargs: Any) -> Receiver:
        receiver = Receiver(**kwargs).start()
        started.append(receiver)
        return receiver

    yield start
    for receiver in started:
        receiver.stop()


def _execute(server: MariaDB, statement: str) -> None:
    connection = server.connect()
    try:
        connection.cursor().execute(statement)
    finally:
        connection.close()


# -- a skip is a failure ------------------------------------------------------------------------------------
# A test that cannot run (a server it needs did not start, a program is missing) must not leave the run green:
# every skip is listed with its reason and the session fails. CUPID_ALLOW_SKIPS=1 allows them for a local run.


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    skipped = terminalreporter.stats.get("skipped", [])
    if skipped and not os.environ.get("CUPID_ALLOW_SKIPS"):
        terminalreporter.section("skipped tests fail the run", sep="=", red=True, bold=True)
        for report in skipped:
            reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
            terminalreporter.line(f"SKIPPED {report.nodeid}: {reason}", red=True)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None and reporter.stats.get("skipped") and not os.environ.get("CUPID_ALLOW_SKIPS"):
        session.exitstatus = pytest.ExitCode.TESTS_FAILED

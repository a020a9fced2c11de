"""A running Airflow for tests and benchmarks: api-server, scheduler and dag-processor in their own home.

Each stack has its own ``AIRFLOW_HOME`` with an ``airflow.cfg`` (SQLite metadata DB, LocalExecutor,
SimpleAuthManager users with known passwords, provider plugins loaded), the repository's DAG file
and a configs folder. The processes run in their own process groups and are stopped as groups.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from airflow.api_fastapi.auth.managers.simple.simple_auth_manager import SimpleAuthManager

from tests.support.receivers import free_port

REPO = Path(__file__).resolve().parents[2]
# user -> role; ``scoped_<config>`` users may only touch that config's DAGs (ScopedAuthManager)
USERS = {"viewer": "viewer", "editor": "user", "admin": "admin"}


class ScopedAuthManager(SimpleAuthManager):
    """SimpleAuthManager, except that a user named ``scoped_<config>`` may only reach DAGs of that config."""

    def is_authorized_dag(self, *, method: Any, user: Any, access_entity: Any = None, details: Any = None) -> bool:
        name = getattr(user, "username", "")
        if name.startswith("scoped_"):
            dag_id = getattr(details, "id", None) or ""
            if not dag_id.startswith(f"cupid_{name.removeprefix('scoped_')}_"):
                return False
        return bool(super().is_authorized_dag(method=method, user=user, access_entity=access_entity, details=details))


@dataclass
class AirflowStack:
    """Airflow processes serving ``http://127.0.0.1:<port>``; ``users`` maps user names to passwords."""

    home: Path
    users: dict[str, str] = field(default_factory=dict)
    port: int = 0
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)
    extra_env: dict[str, str] = field(default_factory=dict)  # e.g. AIRFLOW_CONN_<ID> for the processes
    _tokens: dict[str, str] = field(default_factory=dict)

    @property
    def dags_folder(self) -> Path:
        return self.home / "dags"

    @property
    def config_folder(self) -> Path:
        return self.home / "dags" / "cupid"

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @classmethod
    def prepare(cls, home: Path, extra_users: dict[str, str] | None = None) -> AirflowStack:
        """Write the home (config, DAG file, passwords) and migrate its metadata DB."""
        stack = cls(home=home, port=free_port())
        roles = {**USERS, **(extra_users or {})}
        stack.users = {user: secrets.token_urlsafe(12) for user in roles}
        stack.config_folder.mkdir(parents=True)
        shutil.copy(REPO / "dags" / "cupid_dags.py", stack.dags_folder / "cupid_dags.py")
        (home / "passwords.json").write_text(json.dumps(stack.users), encoding="utf-8")
        (home / "airflow.cfg").write_text(
            f"""[core]
dags_folder = {stack.dags_folder}
plugins_folder = {home / "plugins"}
load_examples = False
executor = LocalExecutor
parallelism = 8
auth_manager = tests.support.airflow_stack.ScopedAuthManager
simple_auth_manager_users = {",".join(f"{u}:{r}" for u, r in roles.items())}
simple_auth_manager_passwords_file = {home / "passwords.json"}
execution_api_server_url = {stack.base_url}/execution/
dags_are_paused_at_creation = True

[database]
sql_alchemy_conn = sqlite:///{home / "airflow.db"}

[api]
base_url = {stack.base_url}
port = {stack.port}
host = 127.0.0.1
workers = 1

[api_auth]
jwt_secret = {secrets.token_urlsafe(32)}

[logging]
base_log_folder = {home / "logs"}

[scheduler]
scheduler_heartbeat_sec = 2

[dag_processor]
refresh_interval = 5
min_file_process_interval = 5
""",
            encoding="utf-8",
        )
        stack.run_cli("db", "migrate", timeout=300)
        return stack

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
        env["AIRFLOW_HOME"] = str(self.home)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
        env.pop("CUPID_CONFIG_FOLDER", None)
        env.update(self.extra_env)
        return env

    def run_cli(self, *args: str, timeout: float = 120) -> str:
        result = subprocess.run(
            [_airflow(), *args], env=self.env(), capture_output=True, text=True, timeout=timeout, check=False
        )
        if result.returncode != 0:
            raise RuntimeError(f"airflow {' '.join(args)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
        return result.stdout

    def start(self, components: tuple[str, ...] = ("api-server", "scheduler", "dag-processor")) -> AirflowStack:
        for component in components:
            log = open(self.home / f"{component}.log", "wb")  # noqa: SIM115 - closed with the process
            args, env = [_airflow(), component], self.env()
            if component == "api-server":  # providers' plugins (the cupid page) load only so, as in docker-compose
                args += ["--port", str(self.port)]
                env["AIRFLOW__CORE__LAZY_DISCOVER_PROVIDERS"] = "False"
            self.processes.append(
                subprocess.Popen(args, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
            )
        self.wait_for(lambda: self._healthy(), 180, "the api-server to answer")
        return self

    def stop(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + 20
        for process in self.processes:
            try:
                process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(10)
        self.processes.clear()

    def logs(self) -> str:
        return "\n".join(
            f"--- {p.name} ---\n{p.read_text(errors='replace')[-4000:]}" for p in sorted(self.home.glob("*.log"))
        )

    def wait_for(self, check: Any, timeout: float, what: str) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for process in self.processes:
                if process.poll() is not None:
                    raise RuntimeError(f"an Airflow process exited ({process.args}) waiting for {what}\n{self.logs()}")
            value = check()
            if value:
                return value
            time.sleep(0.5)
        raise TimeoutError(f"waited {timeout} s for {what}\n{self.logs()}")

    def _healthy(self) -> bool:
        try:
            return self.request("GET", "/api/v2/monitor/health")[0] == 200
        except OSError:
            return False

    # -- HTTP ----------------------------------------------------------------------------------------------
    def token(self, user: str) -> str:
        if user not in self._tokens:
            status, body = self.request("POST", "/auth/token", body={"username": user, "password": self.users[user]})
            if status not in (200, 201):
                raise RuntimeError(f"no token for {user}: {status} {body!r}")
            self._tokens[user] = body["access_token"]
        return self._tokens[user]

    def request(
        self,
        method: str,
        path: str,
        *,
        user: str | None = None,
        body: Any = None,
        headers: dict[str, str] | None = None,
        raw: bytes | None = None,
        timeout: float = 30,
        follow_redirects: bool = True,
    ) -> tuple[int, Any]:
        """``(status, JSON body or text)`` of one request, as ``user`` (a Bearer token) or anonymous.

        A redirect not followed answers ``(status, Location)``.
        """
        sent = dict(headers or {})
        data = raw
        if body is not None:
            data = json.dumps(body).encode()
            sent.setdefault("Content-Type", "application/json")
        if user is not None:
            sent["Authorization"] = f"Bearer {self.token(user)}"
        request = urllib.request.Request(self.base_url + path, data=data, method=method, headers=sent)
        opener = urllib.request.build_opener() if follow_redirects else urllib.request.build_opener(_NoRedirect)
        try:
            with opener.open(request, timeout=timeout) as answer:
                return answer.status, _decode(answer.read(), answer.headers.get("Content-Type", ""))
        except urllib.error.HTTPError as err:
            if 300 <= err.code < 400:
                return err.code, err.headers.get("Location")
            return err.code, _decode(err.read(), err.headers.get("Content-Type", ""))

    def wait_for_dag(self, dag_id: str, timeout: float = 120) -> None:
        self.wait_for(lambda: self.request("GET", f"/api/v2/dags/{dag_id}", user="admin")[0] == 200, timeout, dag_id)

    def unpause(self, dag_id: str) -> None:
        status, body = self.request("PATCH", f"/api/v2/dags/{dag_id}", user="admin", body={"is_paused": False})
        if status != 200:
            raise RuntimeError(f"cannot unpause {dag_id}: {status} {body!r}")


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


def _decode(data: bytes, content_type: str) -> Any:
    if "json" in content_type:
        return json.loads(data or b"null")
    return data.decode("utf-8", "replace")


def _airflow() -> str:
    beside = Path(sys.executable).with_name("airflow")
    return str(beside) if beside.exists() else "airflow"

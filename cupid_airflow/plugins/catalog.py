"""The configs the page can show, and reusable connections to their state databases."""

from __future__ import annotations

import contextlib
import threading
import time
from dataclasses import replace
from typing import TYPE_CHECKING

from cupid_airflow.core.pool import IO_TIMEOUT_SECOND, BoundedStore, PoolNotFound, close_quietly

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from cupid_airflow.core.config import CupidConfig
    from cupid_airflow.core.destinations import DestinationRegistry
    from cupid_airflow.core.sql import ConnectionParams, LazyConnection

PARAMS_TTL_SECOND = 60.0  # an Airflow connection edited in the UI is picked up within a minute
IDLE_PER_DATABASE = 4
STALE_SECOND = 30.0  # an idle connection older than this is checked before it is used again


class Catalog:
    """Config files of the configs folder (the DAG factory's, by the same rules), loaded once per change.

    A config that cannot be loaded, or whose name several files claim, is not shown: the config
    errors DAG reports it.
    """

    def __init__(self) -> None:
        self._loaded: dict[Path, tuple[tuple[int, int], CupidConfig | None]] = {}
        self._lock = threading.Lock()

    def configs(self) -> dict[str, CupidConfig]:
        """Every good config by name, sorted by name."""
        from airflow.configuration import conf

        from cupid_airflow.dag_factory import _config_files  # the factory's rule for names several files claim

        files, _ = _config_files(conf.get("core", "dags_folder"))
        found: dict[str, CupidConfig] = {}
        with self._lock:
            for name, path in sorted(files.items()):
                config = self._load(path)
                if config is not None:
                    found[name] = config
        return found

    def config(self, name: str) -> CupidConfig:
        config = self.configs().get(name)
        if config is None:
            raise PoolNotFound(f"no config {name!r} in the configs folder")
        return config

    def _load(self, path: Path) -> CupidConfig | None:
        import warnings

        from cupid_airflow.core.config import load_config

        try:
            stat = path.stat()
        except OSError:
            return None
        stamp = (stat.st_mtime_ns, stat.st_size)
        cached = self._loaded.get(path)
        if cached is not None and cached[0] == stamp:
            return cached[1]
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                config: CupidConfig | None = load_config(path)
        except Exception:
            config = None
        self._loaded[path] = (stamp, config)
        return config


class StateConnections:
    """Connections to the configs' state databases, reused across requests, one request at a time each.

    Parameters of an Airflow connection are looked up again after ``PARAMS_TTL_SECOND``.
    """

    def __init__(self) -> None:
        self._params: dict[tuple[str | None, ...], tuple[float, ConnectionParams]] = {}
        self._idle: dict[ConnectionParams, list[tuple[tuple[BoundedStore, DestinationRegistry], float]]] = {}
        self._lock = threading.Lock()

    def params(self, config: CupidConfig) -> ConnectionParams:
        state = config.state_connection
        key = (state.conn_id, state.dsn, state.user, state.password)
        now = time.monotonic()
        with self._lock:
            cached = self._params.get(key)
        if cached is not None and cached[0] > now:
            return cached[1]
        from cupid_airflow.connections import resolve_connection

        params = resolve_connection(state)
        params = replace(params, io_timeout_second=min(params.io_timeout_second, IO_TIMEOUT_SECOND))
        with self._lock:
            self._params[key] = (now + PARAMS_TTL_SECOND, params)
        return params

    @contextlib.contextmanager
    def open(self, config: CupidConfig) -> Iterator[tuple[BoundedStore, DestinationRegistry]]:
        """A store and a registry of the config's state database; given back for reuse when done."""
        from cupid_airflow.core.destinations import DestinationRegistry

        params = self.params(config)
        with self._lock:
            idle = self._idle.setdefault(params, [])
            found = idle.pop() if idle else None
        if found is None:
            pair = (BoundedStore(params), DestinationRegistry(params))
        else:
            pair, since = found
            if time.monotonic() - since > STALE_SECOND:
                for connection in pair:
                    _drop_if_gone(connection)
        try:
            yield pair
        finally:  # a connection that failed has already dropped itself and reconnects when used again
            with self._lock:
                idle = self._idle.setdefault(params, [])
                keep = len(idle) < IDLE_PER_DATABASE
                if keep:
                    idle.append((pair, time.monotonic()))
            if not keep:
                close_quietly(*pair)


def _drop_if_gone(connection: LazyConnection) -> None:
    """After a while idle, the server may have closed a connection (``wait_timeout``): reconnect on next use."""
    conn = getattr(connection, "_conn", None)
    if conn is None:
        return
    try:
        conn.ping()
    except Exception:
        connection.close()

"""The Airflow plugin: a "cupid" page in the UI's navigation, served by an app mounted at ``/cupid``."""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from airflow.configuration import conf
from airflow.plugins_manager import AirflowPlugin

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, MutableMapping

URL_PREFIX = "/cupid"
ROOT = urlsplit(conf.get("api", "base_url", fallback="") or "/").path.rstrip("/")  # Airflow behind a path prefix


class LazyApp:
    """The page's ASGI app, built on its first request.

    Every Airflow process that loads plugins imports this module; only the api-server serves the
    page, so the web app and Airflow's API security modules are imported there alone.
    """

    def __init__(self) -> None:
        self._app: Any = None
        self._lock = threading.Lock()

    async def __call__(
        self,
        scope: MutableMapping[str, Any],
        receive: Callable[[], Awaitable[MutableMapping[str, Any]]],
        send: Callable[[MutableMapping[str, Any]], Awaitable[None]],
    ) -> None:
        if self._app is None:
            with self._lock:
                if self._app is None:
                    from cupid_airflow.plugins.api import create_app

                    self._app = create_app()
        await self._app(scope, receive, send)

    def __repr__(self) -> str:
        return "cupid_airflow.plugins.api.create_app()"


class CupidPlugin(AirflowPlugin):
    """The delivery store and failure pool of every config, in the Airflow UI."""

    name = "cupid"
    fastapi_apps = [{"app": LazyApp(), "url_prefix": URL_PREFIX, "name": "cupid failure pool"}]
    external_views = [
        {
            "name": "cupid",
            "href": f"{ROOT}{URL_PREFIX}/",
            "url_route": "cupid",
            "destination": "nav",
            "icon": f"{ROOT}{URL_PREFIX}/static/cupid.svg",
        }
    ]

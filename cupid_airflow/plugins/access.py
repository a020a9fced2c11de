"""Who may see and change a config's failure pool (Airflow's auth manager), cross-site refusal, the audit log."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import urlsplit

from fastapi import HTTPException, Request, status

if TYPE_CHECKING:
    from airflow.api_fastapi.auth.managers.models.base_user import BaseUser

    from cupid_airflow.core.config import CupidConfig

Access = Literal["read", "edit"]


def dag_ids(name: str, config: CupidConfig | None = None) -> list[str]:
    """The DAGs of a config: access to its items is access to all of them."""
    ids = [f"cupid_{name}_sync", f"cupid_{name}_failure_pool"]
    if config is not None and config.reconcile.enabled:
        ids.append(config.reconcile_dag_id)
    return ids


def allowed(user: BaseUser, name: str, access: Access, config: CupidConfig | None = None) -> bool:
    """Whether the user may read (``GET``) or edit (``PUT``) every DAG of the config."""
    from airflow.api_fastapi.app import get_auth_manager
    from airflow.api_fastapi.auth.managers.models.resource_details import DagDetails
    from airflow.configuration import conf

    ids = dag_ids(name, config)
    teams: dict[str, str | None] = {}
    if conf.getboolean("core", "multi_team", fallback=False):
        from airflow.models.dag import DagModel

        teams = DagModel.get_dag_id_to_team_name_mapping(ids)
    method: Literal["GET", "PUT"] = "GET" if access == "read" else "PUT"
    return get_auth_manager().batch_is_authorized_dag(
        [{"method": method, "details": DagDetails(id=dag_id, team_name=teams.get(dag_id))} for dag_id in ids],
        user=user,
    )


def require(user: BaseUser, name: str, access: Access, config: CupidConfig | None = None) -> None:
    if not allowed(user, name, access, config):
        raise HTTPException(status.HTTP_403_FORBIDDEN, "Forbidden")


def refuse_cross_site(request: Request) -> None:
    """Refuse a change asked for by another site.

    As Airflow's own API: the session cookie is ``SameSite=Lax`` (other sites' POSTs carry none)
    and changes are JSON bodies (an HTML form of another site cannot send one without a CORS
    preflight, which only ``[api] access_control_allow_origins`` pass). On top, a browser's
    ``Origin`` must be this server's or one of those origins.
    """
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != "application/json":
        raise HTTPException(status.HTTP_415_UNSUPPORTED_MEDIA_TYPE, "changes are sent as application/json")
    origin = request.headers.get("origin")
    if origin is None:
        if request.headers.get("sec-fetch-site") == "cross-site":
            raise HTTPException(status.HTTP_403_FORBIDDEN, "cross-site request refused")
        return
    if origin.rstrip("/") in _trusted_origins(request):
        return
    raise HTTPException(status.HTTP_403_FORBIDDEN, "cross-site request refused")


def _trusted_origins(request: Request) -> set[str]:
    from airflow.configuration import conf

    trusted = {o.rstrip("/") for o in conf.getlist("api", "access_control_allow_origins", fallback=[]) or []}
    host = request.headers.get("host")
    if host:
        trusted |= {f"http://{host}", f"https://{host}"}
    base_url = conf.get("api", "base_url", fallback="") or ""
    if base_url:
        parts = urlsplit(base_url)
        trusted.add(f"{parts.scheme}://{parts.netloc}")
    return trusted


def audit(user: BaseUser, event: str, config: CupidConfig, extra: dict[str, Any]) -> None:
    """Record a change in Airflow's audit log (table ``log``), under the config's failure-pool DAG."""
    from airflow.models.log import Log
    from airflow.utils.session import create_session

    with create_session() as session:
        session.add(
            Log(
                event=event,
                owner=user.get_name(),
                owner_display_name=user.get_name(),
                dag_id=config.failure_pool_dag_id,
                extra=json.dumps(extra, default=str),
            )
        )

"""The HTTP side of the cupid page: the page itself and the JSON endpoints behind it, mounted at ``/cupid``.

Every endpoint needs a signed-in user (401 otherwise); a config's items need the right to read all
of its DAGs, requeue and purge the right to edit them (403). Database work runs in the server's
thread pool (the endpoints are plain functions), through :mod:`cupid_airflow.core.pool`'s bounded
statements.
"""

from __future__ import annotations

import dataclasses
import html
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

from airflow.api_fastapi.core_api.security import GetUserDep, bearer_scheme, get_user
from fastapi import Depends, FastAPI, HTTPException, Query, Request, status
from fastapi import Path as PathParam
from fastapi.responses import FileResponse, JSONResponse, RedirectResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from cupid_airflow.core import pool, pool_actions
from cupid_airflow.core.config import STEM_RE
from cupid_airflow.core.store import STATUSES
from cupid_airflow.plugins import access
from cupid_airflow.plugins.catalog import Catalog, StateConnections

if TYPE_CHECKING:
    from airflow.api_fastapi.auth.managers.models.base_user import BaseUser

    from cupid_airflow.core.config import CupidConfig

STATIC = Path(__file__).with_name("static")
ASSETS = {"pool.js": "text/javascript", "pool.css": "text/css", "cupid.svg": "image/svg+xml"}
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
        "frame-ancestors 'self'; base-uri 'self'; form-action 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}
MAX_ID = 2**64 - 1
DEFAULT_STATUSES = ["parked", "dead"]

ConfigName = Annotated[str, PathParam(max_length=100, pattern=STEM_RE.pattern)]
Destination = Annotated[str, PathParam(max_length=64, pattern=r"^[A-Za-z0-9_$]{1,64}$")]
ItemId = Annotated[int, PathParam(ge=1, le=MAX_ID)]


class FilterBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    status: list[str] = Field(default_factory=lambda: list(DEFAULT_STATUSES), min_length=1, max_length=len(STATUSES))
    type: int | None = Field(default=None, ge=1, le=3)
    key_prefix: str = Field(default="", max_length=pool.KEY_PREFIX_CAP)
    min_age_second: int | None = Field(default=None, ge=0, le=pool.AGE_CAP_SECOND)
    max_age_second: int | None = Field(default=None, ge=0, le=pool.AGE_CAP_SECOND)

    def to_filter(self) -> pool.PoolFilter:
        return pool.PoolFilter(
            tuple(self.status), self.type, self.key_prefix, self.min_age_second, self.max_age_second
        )


class ActionBody(BaseModel):
    """An action on given item ids, or on every item of a filter; ``confirm: false`` only previews it."""

    model_config = ConfigDict(extra="forbid")

    destination: str = Field(max_length=64, pattern=r"^[A-Za-z0-9_$]{1,64}$")
    ids: list[Annotated[int, Field(ge=1, le=MAX_ID)]] | None = Field(
        default=None, min_length=1, max_length=pool.MAX_PAGE
    )
    filter: FilterBody | None = None
    up_to_id: int | None = Field(default=None, ge=1, le=MAX_ID)
    undelivered: bool = False
    confirm: bool = False


def create_app() -> FastAPI:
    app = FastAPI(title="cupid failure pool", docs_url=None, redoc_url=None, openapi_url=None)
    catalog = Catalog()
    connections = StateConnections()
    page_text = (STATIC / "index.html").read_text(encoding="utf-8")

    @app.exception_handler(pool.PoolQueryError)
    def _bad_question(request: Request, err: pool.PoolQueryError) -> Response:
        code = 404 if isinstance(err, pool.PoolNotFound) else 422
        return _json({"detail": str(err)}, code)

    @app.exception_handler(pool.PoolUnavailable)
    def _unavailable(request: Request, err: pool.PoolUnavailable) -> Response:
        return _json({"detail": str(err)}, status.HTTP_503_SERVICE_UNAVAILABLE)

    def readable(user: BaseUser, name: str, need: access.Access = "read") -> CupidConfig:
        """The config, once the user may ``need`` it (checked before it is looked up: 403 before 404)."""
        access.require(user, name, need)
        config = catalog.config(name)
        access.require(user, name, need, config)
        return config

    @app.get("/")
    async def page(request: Request) -> Response:
        """The page for a signed-in user; anyone else is sent to Airflow's login."""
        from airflow.api_fastapi.app import API_ROOT_PATH, get_auth_manager

        try:
            await get_user(request, None, await bearer_scheme(request))
        except HTTPException:
            login = get_auth_manager().get_url_login(next_url=f"{API_ROOT_PATH}plugin/cupid")
            return RedirectResponse(login, status.HTTP_302_FOUND)
        base = request.scope.get("root_path", "").rstrip("/") + "/"
        text = page_text.replace("{{base}}", html.escape(base)).replace("{{airflow}}", html.escape(API_ROOT_PATH))
        return Response(text, media_type="text/html", headers=SECURITY_HEADERS)

    @app.get("/static/{name}")
    def asset(name: str, user: GetUserDep) -> Response:
        if name not in ASSETS:
            raise HTTPException(status.HTTP_404_NOT_FOUND, "Not Found")
        return FileResponse(STATIC / name, media_type=ASSETS[name], headers=SECURITY_HEADERS)

    @app.get("/api/configs")
    def configs(user: GetUserDep) -> Response:
        shown = [
            {
                "config": name,
                "dags": access.dag_ids(name, config),
                "can_edit": access.allowed(user, name, "edit", config),
            }
            for name, config in catalog.configs().items()
            if access.allowed(user, name, "read", config)
        ]
        return _json({"configs": shown})

    @app.get("/api/configs/{config}/overview")
    def overview(config: ConfigName, user: GetUserDep) -> Response:
        found = readable(user, config)
        with connections.open(found) as (store, registry):
            configured = pool.configured_destinations(registry, found)
            return _json(dataclasses.asdict(pool.overview(store, registry, found.name, configured)))

    @app.get("/api/configs/{config}/destinations/{destination}/items")
    def items(
        config: ConfigName,
        destination: Destination,
        user: GetUserDep,
        statuses: Annotated[list[str], Query(alias="status", min_length=1, max_length=6)] = DEFAULT_STATUSES,
        mismatch_type: Annotated[int | None, Query(alias="type", ge=1, le=3)] = None,
        key_prefix: Annotated[str, Query(max_length=pool.KEY_PREFIX_CAP)] = "",
        min_age_second: Annotated[int | None, Query(ge=0, le=pool.AGE_CAP_SECOND)] = None,
        max_age_second: Annotated[int | None, Query(ge=0, le=pool.AGE_CAP_SECOND)] = None,
        cursor: Annotated[str | None, Query(max_length=64)] = None,
        limit: Annotated[int, Query(ge=1, le=pool.MAX_PAGE)] = 50,
        order: Literal["newest", "oldest"] = "newest",
    ) -> Response:
        found = readable(user, config)
        chosen = pool.PoolFilter(tuple(statuses), mismatch_type, key_prefix, min_age_second, max_age_second)
        with connections.open(found) as (store, _):
            result = pool.page(
                store, found.name, destination, chosen, cursor=cursor, limit=limit, newest_first=order == "newest"
            )
        return _json(dataclasses.asdict(result))

    @app.get("/api/configs/{config}/items/{item_id}")
    def item(config: ConfigName, item_id: ItemId, user: GetUserDep) -> Response:
        found = readable(user, config)
        with connections.open(found) as (store, _):
            return _json(dataclasses.asdict(pool.item_detail(store, found.name, item_id)))

    @app.post("/api/configs/{config}/{action}", dependencies=[Depends(access.refuse_cross_site)])
    def act(config: ConfigName, action: Literal["requeue", "purge"], body: ActionBody, user: GetUserDep) -> Response:
        """Preview an action (``confirm: false``), or do it and record it in Airflow's audit log."""
        found = readable(user, config, "edit")
        selection = pool_actions.Selection(
            body.destination,
            None if body.ids is None else tuple(body.ids),
            None if body.filter is None else body.filter.to_filter(),
            body.up_to_id,
        )
        with connections.open(found) as (store, _):
            if not body.confirm:
                preview = pool_actions.preview(store, found.name, action, selection, undelivered=body.undelivered)
                return _json(dataclasses.asdict(preview))
            asked = {"config": found.name, **body.model_dump(exclude={"confirm"}, exclude_none=True)}
            try:
                outcome = pool_actions.apply(store, found.name, action, selection, undelivered=body.undelivered)
            except pool.PoolQueryError:
                raise  # refused before anything changed
            except Exception as err:  # part of it may be done: say so in the audit log
                access.audit(user, f"cupid.{action}", found, {**asked, "failed": type(err).__name__})
                raise
        access.audit(user, f"cupid.{action}", found, {**asked, **dataclasses.asdict(outcome)})
        return _json(dataclasses.asdict(outcome))

    return app


def _json(data: Any, code: int = 200) -> Response:
    return JSONResponse(data, status_code=code, headers=SECURITY_HEADERS)

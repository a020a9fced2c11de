"""Resolve config connections through Airflow's hooks: MySQL (MySqlHook), callbacks (HttpHook), secrets."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from airflow.sdk.exceptions import AirflowFailException

from cupid_airflow.core.compare import DestinationSpec
from cupid_airflow.core.config import check_headers, check_http_url
from cupid_airflow.core.delivery import CallbackTarget
from cupid_airflow.core.redact import is_secret_name, url_secrets
from cupid_airflow.core.sql import ConnectionParams
from cupid_airflow.core.sync import SyncPlan

if TYPE_CHECKING:
    from collections.abc import Iterable

    from cupid_airflow.core.config import CallbackNotification, CupidConfig, Destination, _Connection

# HTTP connection extras HttpHook treats as options, not headers; the ones cupid cannot honour are refused
HONOURED_HTTP_OPTIONS = ("verify", "verify_ssl", "proxies", "proxy", "timeout", "cert", "allow_redirects",
                         "max_redirects", "trust_env")
# extra -> (the value cupid cannot honour, why)
REFUSED_HTTP_OPTIONS = {
    "stream": (True, "cupid reads every answer itself"),
    "check_response": (False, "cupid judges every answer itself: 2xx is delivered, anything else is retried"),
    "srv_lookup": (True, "DNS SRV lookups are not supported for callbacks"),
}
# MySQL connection extras that would change what the byte-exact compare reads, or how
REFUSED_MYSQL_EXTRAS = {
    "client": "cupid reads raw bytes through mysqlclient only",
    "use_unicode": "cupid compares raw bytes",
    "conv": "cupid compares raw bytes",
}


class CupidConnectionError(AirflowFailException):
    """A connection cupid cannot use as configured; retrying does not help, so the task fails at once."""


# -- MySQL ------------------------------------------------------------------------------------------


def resolve_connection(connection: _Connection) -> ConnectionParams:
    """A config connection (``connId`` or a DSN, made an Airflow connection) resolved by MySqlHook's own
    connection settings (TLS ``ssl``/``ssl_mode``, ``init_command``, ``charset``, ``unix_socket``...).

    :raises CupidConnectionError: no login, or an extra that would change the raw-bytes results.
    """
    if connection.dsn:
        return mysql_params(dsn_connection(connection.connection_params()), connection.describe())
    from airflow.providers.mysql.hooks.mysql import MySqlHook

    return mysql_params(MySqlHook.get_connection(connection.conn_id or ""), connection.describe())


def dsn_connection(params: ConnectionParams) -> Any:
    """An Airflow connection for a parsed DSN (its query parameters are not used: see docs/connections.md)."""
    from airflow.sdk import Connection

    extra = {"unix_socket": params.unix_socket} if params.unix_socket else {}
    return Connection(
        conn_id="cupid_dsn",
        conn_type="mysql",
        host=params.host,
        port=params.port,
        login=params.user,
        password=params.password,
        schema=params.database or "",
        extra=json.dumps(extra),
    )


def mysql_params(conn: Any, what: str) -> ConnectionParams:
    """What :func:`cupid_airflow.core.sql.connect` needs, from ``MySqlHook._get_conn_config_mysql_client``;
    only the result conversions (raw bytes) and the cursor class stay cupid's."""
    from airflow.providers.mysql.hooks.mysql import MySqlHook

    extra = conn.extra_dejson if isinstance(conn.extra_dejson, dict) else {}
    for key, why in REFUSED_MYSQL_EXTRAS.items():
        if key in extra and not (key == "client" and extra[key] == "mysqlclient"):
            raise CupidConnectionError(f"{what}: extra {key!r} is not accepted: {why}")
    if not conn.login:
        raise CupidConnectionError(f"{what} has no login: set the user cupid connects as (it never assumes root)")
    hook = MySqlHook(init_command=extra.get("init_command"), local_infile=bool(extra.get("local_infile")))
    options = dict(hook._get_conn_config_mysql_client(conn))
    for key in ("cursorclass", "use_unicode"):
        options.pop(key, None)
    password = options.pop("passwd", "")
    register(password)
    return ConnectionParams(
        host=options.pop("host"),
        port=int(options.pop("port")),
        user=options.pop("user"),
        password=password,
        database=options.pop("db") or None,
        unix_socket=options.pop("unix_socket", None),
        options=options,
    )


def destination_identities(config: CupidConfig) -> list[str]:
    """Each destination's stable identity, from the state database (see ``core.destinations``)."""
    from cupid_airflow.core.destinations import DestinationRegistry

    registry = DestinationRegistry(resolve_connection(config.state_connection))
    try:
        return registry.identities(config.name, config.destination_keys)
    finally:
        registry.close()


def build_sync_plan(config: CupidConfig, identities: list[str]) -> SyncPlan:
    """Everything a sync run needs, with every connection resolved (and the config's secrets masked).

    :param identities: each destination's identity (:func:`destination_identities`).
    """
    register_secrets(config)
    src = config.src
    destinations = {
        name: (
            resolve_connection(des),
            DestinationSpec(name=name, table=des.table, by_column=des.by_column, columns=dict(des.columns)),
        )
        for name, des in zip(identities, config.des, strict=True)
    }
    return SyncPlan(
        config=config.name,
        source=resolve_connection(src),
        table=src.table,
        id_column=src.id_column,
        by_column=src.by_column,
        destinations=destinations,
        insert=src.insert,
        update=src.update,
        update_column=src.update_column,
        update_time_format=src.update_time_formate,
        update_time_zone=src.update_time_zone,
        update_scan_second=src.update_scan_second,
        late_commit_second=src.late_commit_second,
        late_commit_max_gaps=src.late_commit_max_gaps,
        batch_size=src.batch_size,
        max_rows_per_run=src.max_rows_per_run,
        max_seconds_per_run=src.max_seconds_per_run,
        lookup_connections=src.lookup_connections,
    )


# -- callbacks (HTTP) -------------------------------------------------------------------------------


def callback_target(config: CupidConfig, des: Destination) -> CallbackTarget:
    """Where and how one destination's mismatches are POSTed: its ``url``, or its ``httpConnId`` with
    HttpHook's semantics (known extras are options, the rest headers); config ``headers`` win.

    :raises CupidConnectionError: an HTTP connection or HMAC secret cupid cannot use.
    """
    register_secrets(config)
    callback = des.callback_notification
    options: dict[str, Any] = {}
    headers: dict[str, str] = {}
    url = callback.url or ""
    if callback.http_conn_id:
        url, headers, options = http_connection_target(callback)
    headers.update(callback.headers)
    timeout = callback.timeout_second
    if "timeout" in options and "timeout_second" not in callback.model_fields_set:
        timeout = options.pop("timeout")
    options.pop("timeout", None)
    register(*(value for name, value in headers.items() if is_secret_name(name)))
    return CallbackTarget(
        url=url,
        headers=headers,
        timeout_second=timeout,
        concurrency=des.worker_number or config.worker_number,
        rate_limit_per_second=callback.rate_limit_per_second,
        hmac_secret=hmac_secret(callback),
        **options,
    )


def http_connection_target(callback: CallbackNotification) -> tuple[str, dict[str, str], dict[str, Any]]:
    """(url, headers, :class:`CallbackTarget` options) of an ``httpConnId`` with its ``endpoint``."""
    from airflow.providers.http.hooks.http import (
        HttpHook,
        _process_extra_options_from_connection,
        _url_from_endpoint,
    )

    conn_id = callback.http_conn_id or ""
    what = f"HTTP connection {conn_id!r}"
    conn = HttpHook.get_connection(conn_id)
    host = conn.host or ""
    base = host if "://" in host else f"{conn.schema or 'http'}://{host}"
    if conn.port:
        base = f"{base}:{conn.port}"
    url = _url_from_endpoint(base, callback.endpoint)
    try:
        check_http_url(url, "the callback url")
    except ValueError as err:
        raise CupidConnectionError(f"{what}: {err}") from None
    extra = conn.extra_dejson if isinstance(conn.extra_dejson, dict) else {}
    refused = [
        f"{key!r} = {extra[key]!r} ({why})"
        for key, (value, why) in REFUSED_HTTP_OPTIONS.items()
        if key in extra and _flag(extra[key]) == value
    ]
    if refused:
        raise CupidConnectionError(f"{what}: extra {', '.join(refused)} cannot be honoured for callbacks")
    header_extras, known = _process_extra_options_from_connection(conn, {})
    headers = _extra_headers(header_extras, what)
    if conn.login and not any(name.lower() == "authorization" for name in headers):
        import base64

        token = base64.b64encode(f"{conn.login}:{conn.password or ''}".encode()).decode()
        headers["Authorization"] = f"Basic {token}"
        register(token)
    return url, headers, _http_options(known, url, what)


def _extra_headers(extras: dict[str, Any], what: str) -> dict[str, str]:
    headers: dict[str, str] = {}
    for name, value in extras.items():
        if isinstance(value, dict | list):
            raise CupidConnectionError(
                f"{what}: extra {name!r} is not a header value (a {type(value).__name__}); the extras cupid "
                f"honours as options are {', '.join(HONOURED_HTTP_OPTIONS)}, the rest are sent as headers"
            )
        headers[name] = str(value)
    try:
        return check_headers(headers, f"{what} extra")
    except ValueError as err:
        raise CupidConnectionError(str(err)) from None


def _http_options(known: dict[str, Any], url: str, what: str) -> dict[str, Any]:
    """HttpHook's known options, as :class:`CallbackTarget` fields."""
    options: dict[str, Any] = {}
    verify = known.get("verify_ssl")
    if verify is not None:
        if isinstance(verify, str) and verify.lower() in ("true", "false"):
            verify = verify.lower() == "true"
        if isinstance(verify, str):
            options["ca_bundle"] = verify
        else:
            options["verify_ssl"] = bool(verify)
    proxies = known.get("proxy")
    if proxies:
        scheme = url.partition("://")[0].lower()
        proxy = proxies if isinstance(proxies, str) else proxies.get(scheme) or proxies.get("all")
        if proxy:
            options["proxy"] = proxy
            register(*url_secrets(proxy))
    if known.get("timeout") is not None:
        options["timeout"] = _number(known["timeout"], "timeout", what)
    cert = known.get("cert")
    if cert:
        options["client_cert"] = (cert, None) if isinstance(cert, str) else (str(cert[0]), str(cert[1]))
    if known.get("allow_redirects") is not None:
        options["allow_redirects"] = _flag(known["allow_redirects"])
    if known.get("max_redirects") is not None:
        options["max_redirects"] = int(_number(known["max_redirects"], "max_redirects", what))
    if known.get("trust_env") is not None:
        options["trust_env"] = _flag(known["trust_env"])
    return options


def _number(value: Any, name: str, what: str) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise CupidConnectionError(
            f"{what}: extra {name!r} must be one number of seconds here, not {type(value).__name__}"
        ) from None
    if number <= 0:
        raise CupidConnectionError(f"{what}: extra {name!r} must be more than 0")
    return number


def _flag(value: Any) -> bool:
    return value.lower() in ("true", "1", "yes") if isinstance(value, str) else bool(value)


def hmac_secret(callback: CallbackNotification) -> str | None:
    """The HMAC key of a callback (None when it signs nothing); an empty or missing one is an error."""
    if callback.hmac_secret_variable:
        from airflow.sdk import Variable

        secret = Variable.get(callback.hmac_secret_variable, default=None)
        if not secret:
            raise CupidConnectionError(
                f"hmacSecretVariable {callback.hmac_secret_variable!r} is "
                f"{'empty' if secret is not None else 'not set'}: callbacks would go unsigned or be signed "
                "with an empty key"
            )
    elif callback.hmac_secret_conn_id:
        from airflow.sdk import BaseHook

        secret = BaseHook.get_connection(callback.hmac_secret_conn_id).password
        if not secret:
            raise CupidConnectionError(
                f"hmacSecretConnId {callback.hmac_secret_conn_id!r}: the connection has no password, which is "
                "where the HMAC secret goes"
            )
    else:
        return None
    register(secret)
    return str(secret)


# -- secrets ----------------------------------------------------------------------------------------


def register_secrets(config: CupidConfig) -> None:
    """Register every secret of a config with Airflow's log masker (call at task start)."""
    register(*config.secrets())


def register(*secrets: str | None) -> None:
    """Mask these values in every task log line (and the supervisor's), as Airflow does for passwords."""
    from airflow.sdk.log import mask_secret

    for secret in _unique(secrets):
        mask_secret(secret)


def _unique(values: Iterable[str | None]) -> list[str]:
    return [v for v in dict.fromkeys(v for v in values if v)]

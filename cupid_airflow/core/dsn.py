"""Parse the DSNs of the original cupid versions; never leak their passwords."""

from __future__ import annotations

import re

from cupid_airflow.core.sql import ConnectionParams

GO_DSN_RE = re.compile(
    r"^(?:(?P<userinfo>.*)@)?(?:(?P<net>[a-z0-9]+)(?:\((?P<addr>[^)]*)\))?)?/(?P<db>[^?/]*)(?:\?(?P<params>.*))?$"
)
GO_DSN_FORM = "user:password@tcp(host:port)/database?charset=utf8"
PDO_DSN_FORM = "mysql:dbname=database;host=host;port=3306"


class DsnError(ValueError):
    """A DSN that cannot be parsed; the message never contains the password."""


def mask_dsn(dsn: str) -> str:
    """Return the DSN with any password replaced by ``***``."""
    match = GO_DSN_RE.match(dsn)
    if match and match.group("userinfo") and ":" in match.group("userinfo"):
        user = match.group("userinfo").split(":", 1)[0]
        return f"{user}:***@{dsn[match.end('userinfo') + 1 :]}"
    if "@" in dsn:
        return "***@" + dsn.rsplit("@", 1)[1]
    return dsn


def parse_go_dsn(dsn: str) -> ConnectionParams:
    """Parse ``user:password@tcp(host:port)/db?params`` (go-sql-driver/mysql)."""
    match = GO_DSN_RE.match(dsn.strip())
    if not match:
        raise DsnError(f"cannot parse DSN {mask_dsn(dsn)!r}: expected the form {GO_DSN_FORM}")
    user, _, password = (match.group("userinfo") or "").partition(":")
    if not user:
        raise DsnError(f"DSN {mask_dsn(dsn)!r} names no user: write it as {GO_DSN_FORM}")
    net = match.group("net") or "tcp"
    addr = match.group("addr") or ""
    database = match.group("db") or None
    if net == "unix":
        if not addr:
            raise DsnError(f"DSN {mask_dsn(dsn)!r}: unix(...) needs a socket path")
        return ConnectionParams(user=user, password=password, database=database, unix_socket=addr)
    if net != "tcp":
        raise DsnError(f"DSN {mask_dsn(dsn)!r}: network {net!r} is not supported (accepted: tcp, unix)")
    host, port = _host_port(addr or "127.0.0.1:3306", dsn)
    return ConnectionParams(host=host, port=port, user=user, password=password, database=database)


def parse_pdo_dsn(dsn: str, user: str | None, password: str | None) -> ConnectionParams:
    """Parse the PHP version's ``mysql:dbname=db;host=h;port=3306`` with separate credentials."""
    body = dsn.strip()[len("mysql:") :]
    fields: dict[str, str] = {}
    for part in filter(None, (p.strip() for p in body.split(";"))):
        name, sep, value = part.partition("=")
        if not sep:
            raise DsnError(f"PDO DSN {dsn!r}: {part!r} is not name=value (expected the form {PDO_DSN_FORM})")
        fields[name.strip().lower()] = value.strip()
    unknown = set(fields) - {"dbname", "host", "port", "charset", "unix_socket"}
    if unknown:
        raise DsnError(
            f"PDO DSN {dsn!r}: unknown field(s) {', '.join(sorted(unknown))} "
            "(accepted: dbname, host, port, charset, unix_socket)"
        )
    if not user:
        raise DsnError(f"PDO DSN {dsn!r} needs a 'user' key beside it (and 'password' when the user has one)")
    port_text = fields.get("port", "3306")
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise DsnError(f"PDO DSN {dsn!r}: port {port_text!r} is not a number from 1 to 65535")
    return ConnectionParams(
        host=fields.get("host", "127.0.0.1"),
        port=int(port_text),
        user=user,
        password=password or "",
        database=fields.get("dbname") or None,
        unix_socket=fields.get("unix_socket") or None,
    )


def parse_dsn(dsn: str, user: str | None = None, password: str | None = None) -> ConnectionParams:
    """Parse either DSN form; PDO DSNs start with ``mysql:``."""
    if dsn.strip().startswith("mysql:"):
        return parse_pdo_dsn(dsn, user, password)
    if user is not None or password is not None:
        raise DsnError(
            f"DSN {mask_dsn(dsn)!r} carries its own credentials: 'user' and 'password' keys go only "
            f"with a PDO DSN ({PDO_DSN_FORM})"
        )
    return parse_go_dsn(dsn)


def _host_port(addr: str, dsn: str) -> tuple[str, int]:
    host, sep, port_text = addr.rpartition(":")
    if not sep:
        return addr, 3306
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise DsnError(f"DSN {mask_dsn(dsn)!r}: port {port_text!r} is not a number from 1 to 65535")
    return host.strip("[]") or "127.0.0.1", int(port_text)

"""Resolve config connections (Airflow connection ids or DSNs) into connection parameters."""

from __future__ import annotations

from typing import TYPE_CHECKING

from cupid_airflow.core.compare import DestinationSpec
from cupid_airflow.core.sql import ConnectionParams
from cupid_airflow.core.sync import SyncPlan

if TYPE_CHECKING:
    from cupid_airflow.core.config import CupidConfig, _Connection


def resolve_connection(connection: _Connection) -> ConnectionParams:
    """Turn ``connId`` (through :class:`MySqlHook`'s connection lookup) or a DSN into parameters."""
    if connection.dsn:
        return connection.connection_params()
    from airflow.providers.mysql.hooks.mysql import MySqlHook

    conn = MySqlHook.get_connection(connection.conn_id or "")
    extra = conn.extra_dejson if isinstance(conn.extra_dejson, dict) else {}
    return ConnectionParams(
        host=conn.host or "127.0.0.1",
        port=int(conn.port or 3306),
        user=conn.login or "root",
        password=conn.password or "",
        database=conn.schema or None,
        unix_socket=extra.get("unix_socket"),
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
    """Everything a sync run needs, with every connection resolved.

    :param identities: each destination's identity (:func:`destination_identities`).
    """
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

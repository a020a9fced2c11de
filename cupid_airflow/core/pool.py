"""The failure pool as people see it: overview, filtered keyset pages, one item's story.

Shared by the UI page and the command line (the actions are in :mod:`cupid_airflow.core.pool_actions`).
Every function returns plain data (dataclasses) and reads through :class:`BoundedStore`, whose
statements are cut off after a few seconds. Counts stop at ``COUNT_CAP`` (a page must stay fast
with millions of delivered items); pages are keyset pages by item id, one index range per status.
Free text (errors, notes, callback targets) is passed through
:func:`~cupid_airflow.core.redact.redact`; bodies sent are the user's row data, shown as sent.
"""

from __future__ import annotations

import base64
import contextlib
import re
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from cupid_airflow.core.redact import path_shape, redact, url_shape
from cupid_airflow.core.sql import describe_error, is_identifier, literal_int
from cupid_airflow.core.store import STORE_TABLE, DeliveryStore
from cupid_airflow.core.store_rows import (
    DEAD,
    DELIVERED,
    ITEM_COLUMNS,
    PARKED,
    PENDING,
    RESOLVED,
    STATUSES,
    SUPERSEDED,
    UNDELIVERED,
    StoredItem,
    stored_item,
)

if TYPE_CHECKING:
    from collections.abc import Sequence

    from cupid_airflow.core.config import CupidConfig
    from cupid_airflow.core.destinations import DestinationRegistry
    from cupid_airflow.core.sql import ConnectionParams

MAX_PAGE = 500  # items of one page, and ids of one selection
MAX_DESTINATIONS = 200  # destinations of one config the overview shows
COUNT_CAP = 100_000  # counts stop here: "100,000+"
RECENT_SECOND = 86_400  # delivered and resolved are counted over the last 24 hours
ATTEMPTS_SHOWN = 20
STATEMENT_SECOND = 2.0
IO_TIMEOUT_SECOND = 10
KEY_PREFIX_CAP = 255
AGE_CAP_SECOND = 10 * 366 * 86_400
TYPES = (1, 2, 3)
ERROR_SHOWN = 300  # characters of an error in a list; the item view shows it all

TIMEOUT_ERRORS = frozenset({1969, 3024})  # MariaDB max_statement_time, MySQL max_execution_time
NO_TABLE = 1146
UNKNOWN_VARIABLE = 1193


class PoolQueryError(ValueError):
    """A question the pool cannot answer as asked (a bad filter, an unknown item); the message says why."""


class PoolNotFound(PoolQueryError):
    """No such config, destination or item."""


class PoolUnavailable(RuntimeError):
    """The state database did not answer in time, or has no delivery store yet."""


class BoundedStore(DeliveryStore):
    """The delivery store for people's questions: reads and writes time out after a few seconds.

    Every statement is cut off after ``statement_second`` (MariaDB ``max_statement_time``, MySQL
    ``max_execution_time`` for reads), lock waits after 5 s, and a server that stops answering
    after ``IO_TIMEOUT_SECOND`` per read or write.
    """

    def __init__(
        self, params: ConnectionParams, table: str = STORE_TABLE, statement_second: float = STATEMENT_SECOND
    ) -> None:
        super().__init__(replace(params, io_timeout_second=min(params.io_timeout_second, IO_TIMEOUT_SECOND)), table)
        self.statement_second = statement_second

    @property
    def conn(self) -> Any:
        fresh = self._conn is None
        conn = super().conn
        if fresh:
            try:
                _limit_statements(conn, self.statement_second)
            except Exception:
                self.close()
                raise
        return conn

    def query(self, sql: str, args: Sequence[Any] | None = None) -> list[tuple[Any, ...]]:
        """Rows of one bounded statement; a database error is :class:`PoolUnavailable`."""
        try:
            return list(self._execute(sql, args).fetchall())
        except Exception as err:
            raise unavailable(err, self.params) from err


def _limit_statements(conn: Any, second: float) -> None:
    cursor = conn.cursor()
    cursor.execute("SET SESSION innodb_lock_wait_timeout = 5")
    try:
        cursor.execute(f"SET SESSION max_statement_time = {second:.3f}")  # MariaDB, in seconds
    except Exception as err:
        if _code(err) != UNKNOWN_VARIABLE:
            raise
        cursor.execute(f"SET SESSION max_execution_time = {int(second * 1000)}")  # MySQL, SELECTs, in ms


def _code(err: BaseException) -> int | None:
    args = getattr(err, "args", ())
    return args[0] if args and isinstance(args[0], int) else None


def unavailable(err: Exception, params: ConnectionParams) -> Exception:
    """A database error as :class:`PoolUnavailable` with a message people may read; other errors as they are."""
    code = _code(err)
    if code in TIMEOUT_ERRORS:
        return PoolUnavailable("the state database took too long to answer; narrow the filter or try again")
    if code == NO_TABLE:
        return PoolUnavailable("there is no delivery store in the state database yet (no task has run)")
    if type(err).__module__.startswith(("MySQLdb", "_mysql")) or isinstance(err, OSError):
        return PoolUnavailable(f"the state database failed: {redact(describe_error(err, params))}")
    return err


# -- the config's destinations ------------------------------------------------------------------------------


@dataclass(frozen=True)
class ConfiguredDestination:
    """A destination of the config file, as the state database knows it.

    :param identity: its identity in the store; None for an unnamed destination no task has seen yet.
    :param name: its ``des[].name``, or ``desN`` by position.
    :param callback: where its callbacks go, without secrets.
    """

    identity: str | None
    name: str
    callback: str


def configured_destinations(registry: DestinationRegistry, config: CupidConfig) -> list[ConfiguredDestination]:
    """The config's destinations and their identities, read without registering anything."""
    try:
        rows = registry.rows(config.name)
    except Exception as err:
        raise unavailable(err, registry.params) from err
    labels = {row["fingerprint"]: row["destination"] for row in rows if row["fingerprint"]}
    found = []
    for (name, fingerprint), shown, des in zip(
        config.destination_keys, config.destination_names, config.des, strict=True
    ):
        callback = des.callback_notification
        if callback.url:
            target = url_shape(callback.url)
        else:
            target = f"connection {callback.http_conn_id} {path_shape(callback.endpoint)}".rstrip()
        found.append(ConfiguredDestination(name or labels.get(fingerprint), shown, target))
    return found


def check_destination(destination: str) -> str:
    """A destination identity as the store keeps it (a name or a ``desN`` label), or PoolQueryError."""
    if not is_identifier(destination):
        raise PoolQueryError(f"{destination[:64]!r} is not a destination name")
    return destination


# -- overview ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DestinationOverview:
    """One destination of a config: items by status, ages, claims, circuit and the last error.

    ``counts`` has ``pending``, ``parked``, ``dead`` and ``superseded`` (all items), and
    ``delivered`` and ``resolved`` (ended in the last 24 h); a count in ``capped`` is at least that.
    """

    destination: str
    name: str
    configured: bool
    registered: bool
    callback: str | None
    counts: dict[str, int]
    capped: list[str]
    oldest_pending_second: int | None
    oldest_parked_second: int | None
    claimed: int
    circuit_failures: int
    circuit_open_second: float
    circuit_opened: bool
    last_send_error: str | None
    last_error: str | None
    last_error_at: str | None
    orphaned: int  # undelivered items of a destination the config no longer has: nothing sends them


@dataclass(frozen=True)
class ConfigOverview:
    config: str
    destinations: list[DestinationOverview]
    count_cap: int = COUNT_CAP
    recent_second: int = RECENT_SECOND
    orphaned: dict[str, int] = field(default_factory=dict)


def overview(
    store: BoundedStore,
    registry: DestinationRegistry,
    config: str,
    configured: Sequence[ConfiguredDestination],
    cap: int = COUNT_CAP,
) -> ConfigOverview:
    """Every destination of a config that is configured or has items, with its counts and state."""
    in_store = _destinations_in_store(store, config)
    names = [d.identity for d in configured if d.identity] + sorted(set(in_store) - {d.identity for d in configured})
    counts, oldest = _counts(store, config, names, cap)
    claimed = {
        r[0].decode(): int(r[1])
        for r in store.query(
            f"SELECT destination, COUNT(*) FROM {store.table} FORCE INDEX (ix_claim) WHERE claim_token IS NOT NULL "
            "AND config = %s AND claimed_until >= NOW(6) GROUP BY destination",
            (config,),
        )
    }
    errors = _last_errors(store, config, names)
    by_identity = {d.identity: d for d in configured if d.identity}
    result = []
    for name in names:
        known = by_identity.get(name)
        try:
            circuit = registry.circuit(config, name)
        except Exception as err:
            raise unavailable(err, registry.params) from err
        error, error_at = errors.get(name, (None, None))
        counted = counts[name]
        result.append(
            DestinationOverview(
                destination=name,
                name=known.name if known else name,
                configured=known is not None,
                registered=True,
                callback=known.callback if known else None,
                counts={s: min(n, cap) for s, n in counted.items()},
                capped=sorted(s for s, n in counted.items() if n > cap),
                oldest_pending_second=oldest[name].get(PENDING),
                oldest_parked_second=oldest[name].get(PARKED),
                claimed=claimed.get(name, 0),
                circuit_failures=circuit.failures,
                circuit_open_second=circuit.open_for_second,
                circuit_opened=circuit.opened,
                last_send_error=redact(circuit.last_error),
                last_error=redact(error),
                last_error_at=error_at,
                orphaned=0 if known else sum(min(counted[s], cap) for s in UNDELIVERED),
            )
        )
    for unseen in (d for d in configured if not d.identity):
        result.append(
            DestinationOverview(
                unseen.name, unseen.name, True, False, unseen.callback, dict.fromkeys(_COUNTED, 0), [],
                None, None, 0, 0, 0.0, False, None, None, None, 0,
            )
        )  # fmt: skip
    orphaned = {d.destination: d.orphaned for d in result if d.orphaned}
    return ConfigOverview(config, result, cap, RECENT_SECOND, orphaned)


def _destinations_in_store(store: BoundedStore, config: str) -> list[str]:
    """The destinations that have items, one index dive each (``DISTINCT`` would read every item)."""
    found: list[str] = []
    while len(found) < MAX_DESTINATIONS:
        after = " AND destination > %s" if found else ""
        sql = f"SELECT MIN(destination) FROM {store.table} WHERE config = %s{after}"
        rows = store.query(sql, (config, *found[-1:]))
        if rows[0][0] is None:
            break
        found.append(rows[0][0].decode())
    return found


_COUNTED = (PENDING, PARKED, DEAD, SUPERSEDED, DELIVERED, RESOLVED)
_RECENT = (DELIVERED, RESOLVED)  # counted over the last RECENT_SECOND only


def _counts(
    store: BoundedStore, config: str, names: Sequence[str], cap: int
) -> tuple[dict[str, dict[str, int]], dict[str, dict[str, int]]]:
    """Capped counts by status and oldest queued ages of each destination, in one statement."""
    parts: list[str] = []
    args: list[Any] = []
    where = f"FROM {store.table} WHERE config = %s AND destination = %s AND status = %s"
    for n, name in enumerate(names):
        for status in _COUNTED:
            recent = f" AND updated_at >= NOW(6) - INTERVAL {RECENT_SECOND} SECOND" if status in _RECENT else ""
            limit = literal_int(cap + 1)
            parts.append(f"SELECT {n}, '{status}', 'count', COUNT(*) FROM (SELECT 1 {where}{recent} LIMIT {limit}) c")
            args += [config, name, status]
        for status in (PENDING, PARKED):
            parts.append(f"SELECT {n}, '{status}', 'oldest', TIMESTAMPDIFF(SECOND, MIN(queued_at), NOW(6)) {where}")
            args += [config, name, status]
    counts: dict[str, dict[str, int]] = {name: dict.fromkeys(_COUNTED, 0) for name in names}
    oldest: dict[str, dict[str, int]] = {name: {} for name in names}
    if not parts:
        return counts, oldest
    for n, status, kind, value in store.query(" UNION ALL ".join(parts), args):
        name = names[int(n)]
        if value is None:
            continue
        target = counts if kind == b"count" else oldest
        target[name][status.decode()] = int(value)
    return counts, oldest


def _last_errors(store: BoundedStore, config: str, names: Sequence[str]) -> dict[str, tuple[str, str]]:
    """The newest error (or note) among each destination's parked and dead items, and when."""
    parts: list[str] = []
    args: list[Any] = []
    for n, name in enumerate(names):
        for status in (PARKED, DEAD):
            parts.append(
                f"(SELECT {n}, COALESCE(last_error, note), updated_at FROM {store.table} WHERE config = %s "
                "AND destination = %s AND status = %s AND (last_error IS NOT NULL OR note IS NOT NULL) "
                "ORDER BY updated_at DESC LIMIT 1)"
            )
            args += [config, name, status]
    found: dict[str, tuple[str, str]] = {}
    if not parts:
        return found
    for n, error, at in store.query(" UNION ALL ".join(parts), args):
        name, when = names[int(n)], at.decode()
        if name not in found or when > found[name][1]:
            found[name] = (error.decode("utf-8", "replace"), when)
    return found


# -- filtered pages ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PoolFilter:
    """Which items of a destination: statuses, type, key prefix, age (seconds since queued).

    An item's age counts from when it was detected or last queued (parked, requeued).
    """

    statuses: tuple[str, ...] = (PARKED, DEAD)
    type: int | None = None
    key_prefix: str = ""
    min_age_second: int | None = None
    max_age_second: int | None = None

    def __post_init__(self) -> None:
        if not self.statuses:
            raise PoolQueryError(f"choose at least one status ({', '.join(STATUSES)})")
        unknown = [s for s in self.statuses if s not in STATUSES]
        if unknown:
            raise PoolQueryError(f"unknown status {unknown[0][:32]!r} (accepted: {', '.join(STATUSES)})")
        if len(set(self.statuses)) != len(self.statuses):
            raise PoolQueryError("a status is given twice")
        if self.type is not None and self.type not in TYPES:
            raise PoolQueryError("type is 1 (missing), 2 (different) or 3 (deleted at the source)")
        if len(self.key_prefix.encode("utf-8")) > KEY_PREFIX_CAP:
            raise PoolQueryError(f"a key prefix is at most {KEY_PREFIX_CAP} bytes")
        for age in (self.min_age_second, self.max_age_second):
            if age is not None and not 0 <= age <= AGE_CAP_SECOND:
                raise PoolQueryError(f"an age is 0 to {AGE_CAP_SECOND} seconds")
        if (
            self.min_age_second is not None
            and self.max_age_second is not None
            and self.min_age_second > self.max_age_second
        ):
            raise PoolQueryError("the minimum age is above the maximum age")

    def where(self) -> tuple[str, list[Any]]:
        """The filter's conditions beyond config, destination and status, and their arguments."""
        sql, args = "", []
        if self.type is not None:
            sql += f" AND type = {literal_int(self.type)}"
        if self.key_prefix:
            pattern = self.key_prefix.encode("utf-8")
            for special in (b"\\", b"%", b"_"):
                pattern = pattern.replace(special, b"\\" + special)
            sql += " AND row_key LIKE %s"
            args.append(pattern + b"%")
        if self.min_age_second is not None:
            sql += f" AND queued_at <= NOW(6) - INTERVAL {literal_int(self.min_age_second)} SECOND"
        if self.max_age_second is not None:
            sql += f" AND queued_at >= NOW(6) - INTERVAL {literal_int(self.max_age_second)} SECOND"
        return sql, args


@dataclass(frozen=True)
class ItemView:
    """An item as a list or the item view shows it; ``key`` is its text (``base64:`` when not UTF-8)."""

    id: int
    config: str
    destination: str
    key: str
    key_columns: list[str]
    type: int
    origin: str
    source_id: str | None
    status: str
    revision: int
    attempts: int
    claimed: bool
    idempotency_key: str | None
    last_http_status: int | None
    last_error: str | None
    note: str | None
    detected_at: str
    queued_at: str
    updated_at: str
    delivered_at: str | None
    age_second: int


@dataclass(frozen=True)
class ItemPage:
    """One page of items, newest queued first (or oldest first); ``next_cursor`` continues it (None: the end)."""

    items: list[ItemView]
    next_cursor: str | None
    newest_first: bool


def key_text(key: bytes) -> str:
    try:
        return key.decode("utf-8")
    except UnicodeDecodeError:
        return "base64:" + base64.b64encode(key).decode("ascii")


def _view(row: tuple[Any, ...], error_cap: int | None = ERROR_SHOWN) -> ItemView:
    """An item of a row of ``ITEM_COLUMNS`` followed by its age."""
    item: StoredItem = stored_item(row)
    error = redact(item.last_error)
    if error is not None and error_cap is not None and len(error) > error_cap:
        error = error[:error_cap] + "..."
    return ItemView(
        id=item.id,
        config=item.config,
        destination=item.destination,
        key=key_text(item.row_key),
        key_columns=list(item.key_columns),
        type=item.type,
        origin=item.origin,
        source_id=None if item.source_id is None else str(item.source_id),
        status=item.status,
        revision=item.revision,
        attempts=item.attempts,
        claimed=item.claimed,
        idempotency_key=item.idempotency_key,
        last_http_status=item.last_http_status,
        last_error=error,
        note=redact(item.note),
        detected_at=item.detected_at,
        queued_at=item.queued_at,
        updated_at=item.updated_at,
        delivered_at=item.delivered_at,
        age_second=int(row[-1]),
    )


def page(
    store: BoundedStore,
    config: str,
    destination: str,
    pool_filter: PoolFilter,
    *,
    cursor: str | None = None,
    limit: int = 50,
    newest_first: bool = True,
) -> ItemPage:
    """A keyset page of a destination's items matching the filter, by when they were queued.

    One query per status, each read in the order of index ``(config, destination, status,
    queued_at, id)`` from the cursor on (or, with a key prefix, the matches of
    ``(config, destination, status, row_key)`` sorted, when they are few); the pages are merged.
    A filter that matches a small part of very many items (a rare type among a million delivered
    ones, a broad key prefix far down the list) can take longer than the statement limit: the
    answer is then :class:`PoolUnavailable`, asking for a narrower filter.
    """
    if not 1 <= limit <= MAX_PAGE:
        raise PoolQueryError(f"a page has 1 to {MAX_PAGE} items")
    check_destination(destination)
    extra, extra_args = pool_filter.where()
    if cursor is not None:
        queued_at, item_id = _parse_cursor(cursor)
        before, after = ("<", "<=") if newest_first else (">", ">=")
        extra += f" AND queued_at {after} %s AND (queued_at {before} %s OR id {before} {literal_int(item_id)})"
        extra_args = [*extra_args, queued_at, queued_at]
    order = "DESC" if newest_first else "ASC"
    # by queued_at: that index (its own choice otherwise goes wrong with a cursor); with a key prefix,
    # the server weighs the prefix's range (few keys) against reading by queued_at (most keys match)
    index = "USE INDEX (ix_key, ix_age)" if pool_filter.key_prefix else "FORCE INDEX (ix_age)"
    parts = [
        f"(SELECT {ITEM_COLUMNS}, TIMESTAMPDIFF(SECOND, queued_at, NOW(6)) FROM {store.table} {index} "
        f"WHERE config = %s AND destination = %s AND status = %s{extra} "
        f"ORDER BY queued_at {order}, id {order} LIMIT {limit + 1})"
        for _ in pool_filter.statuses
    ]
    args: list[Any] = []
    for status in pool_filter.statuses:
        args += [config, destination, status, *extra_args]
    rows = store.query(" UNION ALL ".join(parts) + f" ORDER BY queued_at {order}, id {order} LIMIT {limit + 1}", args)
    items = [_view(r) for r in rows[:limit]]
    last = items[-1] if len(rows) > limit else None
    return ItemPage(items, None if last is None else f"{last.queued_at}|{last.id}", newest_first)


CURSOR_RE = re.compile(r"^(\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}(?:\.\d{1,6})?)\|(\d{1,20})$")


def _parse_cursor(cursor: str) -> tuple[str, int]:
    match = CURSOR_RE.match(cursor)
    if not match:
        raise PoolQueryError("not a cursor of this list (use next_cursor of the page before)")
    return match.group(1), int(match.group(2))


# -- one item --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ItemDetail:
    """An item with what was detected and its newest attempts (bodies as sent, answers, keys)."""

    item: ItemView
    differences: dict[str, Any] | None
    attempts: list[dict[str, Any]]
    attempts_shown: int


def item_detail(store: BoundedStore, config: str, item_id: int) -> ItemDetail:
    if not 1 <= item_id < 2**64:
        raise PoolNotFound(f"no item {item_id} in config {config!r}")
    rows = store.query(
        f"SELECT {ITEM_COLUMNS}, TIMESTAMPDIFF(SECOND, queued_at, NOW(6)) FROM {store.table} "
        f"WHERE id = {literal_int(item_id)} AND config = %s",
        (config,),
    )
    if not rows:
        raise PoolNotFound(f"no item {item_id} in config {config!r}")
    stored = stored_item(rows[0])
    try:
        attempts = store.attempts_of(item_id, limit=ATTEMPTS_SHOWN)
    except Exception as err:
        raise unavailable(err, store.params) from err
    for attempt in attempts:
        attempt["error"] = redact(attempt["error"])
    return ItemDetail(_view(rows[0], error_cap=None), stored.differences, attempts, ATTEMPTS_SHOWN)


def close_quietly(*connections: Any) -> None:
    for connection in connections:
        with contextlib.suppress(Exception):
            connection.close()

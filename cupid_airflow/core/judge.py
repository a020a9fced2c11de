"""Judge claimed items on the rows as they are now, just before sending: what to send, if anything.

The destination is read first, then the source: a commit that changes both in between can only
make the source look newer than the destination, never older, so a body never carries a source
row older than the destination's. Equal rows end the item (``resolved``); otherwise the body is
built from the current source row and its type derived again (1 missing, 2 different, 3 deleted
at the source — only where deletes are detected, and only when the source holds no row for the
key under the destination's collation either).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

from cupid_airflow.core.compare import DELETED, DIFFERENT, MISSING, DestinationReader, DestinationSpec, Lookup
from cupid_airflow.core.detection import column_names, composite_key, composite_parts, differences
from cupid_airflow.core.payload import CallbackBody, build_body, row_version
from cupid_airflow.core.sql import (
    ConnectionParams,
    LazyConnection,
    literal_int,
    quote_identifier,
    quote_table,
    split_table,
)

if TYPE_CHECKING:
    from collections.abc import Sequence

    from cupid_airflow.core.store import ClaimedItem

log = logging.getLogger(__name__)

COMPOSITE_KEYS_PER_QUERY = 200

SEND = "send"
RESOLVED = "resolved"
DEAD = "dead"

Row = dict[str, bytes | None]


@dataclass(frozen=True)
class JudgeSpec:
    """Where one destination's items are judged: the source table and the destination table.

    :param destination: the destination's identity (items, bodies).
    :param detect_deletes: a key the source no longer has, but the destination does, is sent as
        type 3 (``reconcile.detectDeletes``); otherwise such an item ends as resolved.
    """

    config: str
    destination: str
    source: ConnectionParams
    table: str
    id_column: str
    by_column: str
    target: ConnectionParams
    spec: DestinationSpec
    detect_deletes: bool = False


@dataclass(frozen=True)
class Verdict:
    """What to do with one claimed item."""

    item: ClaimedItem
    action: str  # send | resolved | dead
    reason: str | None = None
    type: int = 0
    body: CallbackBody | None = None
    version: str = ""


class _Side(LazyConnection):
    """One side's connection; rows come back as dicts of raw bytes."""

    def rows(self, sql: str | bytes) -> list[Row]:
        cursor = self._execute(sql)  # type: ignore[arg-type]
        names = [d[0].decode() if isinstance(d[0], bytes) else d[0] for d in cursor.description]
        return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]


class Judge:
    """Judges items of one destination; keeps a connection to each side until :meth:`close`."""

    def __init__(self, spec: JudgeSpec) -> None:
        self.spec = spec
        self.source = _Side(spec.source)
        self.target = _Side(spec.target)
        self.reader = DestinationReader(spec.spec, list(spec.spec.columns), key_column=spec.by_column)
        self._source_table = quote_table(spec.table)
        self._target_table = quote_table(spec.spec.table)
        self._collation: tuple[str, str] | None = None

    def close(self) -> None:
        self.source.close()
        self.target.close()

    def judge(self, items: Sequence[ClaimedItem]) -> list[Verdict]:
        """One verdict per item, in order."""
        verdicts: dict[int, Verdict] = {}
        single = [i for i in items if not i.key_columns]
        if single:
            verdicts.update(self._judge_single(single))
        composite = [i for i in items if i.key_columns]
        if composite:
            verdicts.update(self._judge_composite(composite))
        return [verdicts[i.id] for i in items]

    # -- keys of src.byColumn ---------------------------------------------------------------------
    def _judge_single(self, items: list[ClaimedItem]) -> dict[int, Verdict]:
        keys = sorted({i.row_key for i in items})
        held = self.reader.lookup(self.target.conn, keys)  # the destination first
        whole = self._whole_destination_rows(keys, held) if self.spec.detect_deletes else {}
        current = self._source_rows(items)
        verdicts = {}
        for item in items:
            try:
                verdicts[item.id] = self._verdict(item, current.get(item.row_key), held, whole)
            except Exception as err:  # one item that cannot be judged never stops the others
                log.exception("item %d cannot be judged", item.id)
                verdicts[item.id] = Verdict(item, DEAD, f"cannot be judged: {type(err).__name__}: {err}")
        return verdicts

    def _source_rows(self, items: list[ClaimedItem]) -> dict[bytes, Row]:
        """The current source row of each item's key: found by id first (the index), then by key."""
        by = self.spec.by_column
        found: dict[bytes, Row] = {}
        ids = sorted({i.source_id for i in items if i.source_id is not None})
        if ids:
            id_list = ", ".join(literal_int(i) for i in ids)
            for row in self.source.rows(
                f"SELECT * FROM {self._source_table} WHERE {quote_identifier(self.spec.id_column)} IN ({id_list})"
            ):
                key = row[column_names(row, [by])[by]]
                if key is not None:
                    found[key] = row
        rest = sorted({i.row_key for i in items if i.row_key not in found})
        wanted = set(rest)
        if rest:
            conn = self.source.conn
            sql = f"SELECT * FROM {self._source_table} WHERE {quote_identifier(by)} IN ".encode()
            for row in self.source.rows(sql + conn.literal(tuple(rest))):
                key = row[column_names(row, [by])[by]]
                if key is not None and key in wanted:  # the exact key, not a twin under the source's collation
                    found.setdefault(key, row)
        return found

    def _verdict(self, item: ClaimedItem, row: Row | None, held: Lookup, whole: dict[bytes, Row]) -> Verdict:
        spec = self.spec
        if row is None:
            return self._gone_from_source(item, held, whole)
        names = column_names(row, [spec.by_column, *spec.spec.columns])
        expected = tuple(row[names[c]] for c in spec.spec.columns)
        actual = held.rows.get(item.row_key)
        if actual is None:
            return self._send(item, MISSING, row, names[spec.by_column], None, None)
        differing = differences([names[c] for c in spec.spec.columns], expected, actual)
        twin = held.twins.get(item.row_key)
        if twin is not None:
            differing[names[spec.by_column]] = (item.row_key, twin)
        if not differing:
            return Verdict(item, RESOLVED, "the destination holds the source row")
        return self._send(item, DIFFERENT, row, names[spec.by_column], differing, None)

    def _gone_from_source(self, item: ClaimedItem, held: Lookup, whole: dict[bytes, Row]) -> Verdict:
        if not self.spec.detect_deletes:
            return Verdict(item, RESOLVED, "the source has no row with this key any more (detectDeletes is off)")
        destination_row = whole.get(item.row_key)
        if destination_row is None:
            return Verdict(item, RESOLVED, "neither the source nor the destination has a row with this key")
        if self._source_has_twin(item.row_key):
            return Verdict(
                item, RESOLVED, "the source holds this key in other bytes (equal under the destination's collation)"
            )
        return self._send(item, DELETED, {}, self.spec.by_column, None, destination_row)

    def _whole_destination_rows(self, keys: list[bytes], held: Lookup) -> dict[bytes, Row]:
        """Whole destination rows by requested key (for a type 3's ``desColumn``)."""
        wanted = [held.twins.get(k, k) for k in keys if k in held.rows]
        if not wanted:
            return {}
        by = self.spec.spec.by_column
        conn = self.target.conn
        sql = f"SELECT * FROM {self._target_table} WHERE {quote_identifier(by)} IN ".encode()
        rows = {}
        for row in self.target.rows(sql + conn.literal(tuple(wanted))):
            rows[row[column_names(row, [by])[by]]] = row
        return {k: rows[held.twins.get(k, k)] for k in keys if held.twins.get(k, k) in rows}

    def _source_has_twin(self, key: bytes) -> bool:
        """Whether the source holds a key equal to this one under the destination key's collation."""
        charset, collation = self._destination_collation()
        by = quote_identifier(self.spec.by_column)
        conn = self.source.conn
        sql = (
            f"SELECT 1 FROM {self._source_table} WHERE CONVERT({by} USING {charset}) COLLATE {collation} = "
            f"CONVERT(".encode() + conn.literal(key) + f" USING {charset}) COLLATE {collation} LIMIT 1".encode()
        )
        try:
            return bool(self.source.rows(sql))
        except Exception as err:
            log.warning("collation check of a deleted key failed (%s); treating the key as still held", err)
            return True  # never ask to delete a row we could not prove gone

    def _destination_collation(self) -> tuple[str, str]:
        if self._collation is None:
            database, table = split_table(self.spec.spec.table, self.spec.target.database)
            rows = self.target.rows(
                b"SELECT CHARACTER_SET_NAME, COLLATION_NAME FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = "
                + (self.target.conn.literal(database) if database else b"DATABASE()")
                + b" AND TABLE_NAME = "
                + self.target.conn.literal(table)
                + b" AND COLUMN_NAME = "
                + self.target.conn.literal(self.spec.spec.by_column),
            )
            if not rows or rows[0]["CHARACTER_SET_NAME"] is None:
                charset, collation = "binary", "binary"
            else:
                charset = (rows[0]["CHARACTER_SET_NAME"] or b"").decode()
                collation = (rows[0]["COLLATION_NAME"] or b"").decode()
            quote_identifier(charset)  # names from the server, checked before they go into SQL
            quote_identifier(collation)
            self._collation = (charset, collation)
        return self._collation

    # -- composite keys (reconcile.keyColumns) ---------------------------------------------------------
    def _judge_composite(self, items: list[ClaimedItem]) -> dict[int, Verdict]:
        verdicts: dict[int, Verdict] = {}
        groups: dict[tuple[str, ...], list[ClaimedItem]] = {}
        for item in items:
            groups.setdefault(item.key_columns, []).append(item)
        for columns, members in groups.items():
            mapping = {c.lower(): d for c, d in self.spec.spec.columns.items()}
            unmapped = [c for c in columns if c.lower() not in mapping]
            if unmapped:
                for item in members:
                    verdicts[item.id] = Verdict(item, DEAD, f"key column(s) {', '.join(unmapped)} are no longer mapped")
                continue
            keys = sorted({i.row_key for i in members})
            target_columns = [mapping[c.lower()] for c in columns]
            held_rows = self._by_tuple(self.target, self._target_table, target_columns, keys, twins=True)
            current = self._by_tuple(self.source, self._source_table, list(columns), keys)
            for item in members:
                row, held = current.get(item.row_key), held_rows.get(item.row_key)
                verdicts[item.id] = self._composite_verdict(item, columns, row, held)
        return verdicts

    def _composite_verdict(
        self, item: ClaimedItem, columns: tuple[str, ...], row: Row | None, held: Row | None
    ) -> Verdict:
        key_column = ",".join(columns)
        if row is None:
            if not self.spec.detect_deletes or held is None:
                return Verdict(item, RESOLVED, "the source has no row with this key any more")
            return self._send(item, DELETED, {}, key_column, None, held)
        if held is None:
            return self._send(item, MISSING, row, key_column, None, None)
        names = column_names(row, self.spec.spec.columns)
        targets = column_names(held, self.spec.spec.columns.values())
        pairs = self.spec.spec.columns.items()
        differing = differences(
            [names[c] for c, _ in pairs], [row[names[c]] for c, _ in pairs], [held[targets[d]] for _, d in pairs]
        )
        if not differing:
            return Verdict(item, RESOLVED, "the destination holds the source row")
        return self._send(item, DIFFERENT, row, key_column, differing, None)

    def _by_tuple(
        self, side: _Side, table: str, columns: list[str], keys: list[bytes], *, twins: bool = False
    ) -> dict[bytes, Row]:
        """Rows by composite key; NULL parts match NULL (``<=>``), as the reconcile matched them.

        With ``twins``, a requested key the table holds only in other bytes (equal under its
        collation) is matched to that row, asked of the server key by key.
        """
        rows: dict[bytes, Row] = {}
        extra: list[Row] = []
        for start in range(0, len(keys), COMPOSITE_KEYS_PER_QUERY):
            group = keys[start : start + COMPOSITE_KEYS_PER_QUERY]
            where = b" OR ".join(self._tuple_match(side, columns, k) for k in group)
            for row in side.rows(f"SELECT * FROM {table} WHERE ".encode() + where):
                names = column_names(row, columns)
                key = composite_key([row[names[c]] for c in columns])
                rows[key] = row
                if key not in group:
                    extra.append(row)
        unmatched = [k for k in keys if k not in rows]
        if twins and extra and unmatched:
            for start in range(0, len(unmatched), COMPOSITE_KEYS_PER_QUERY):
                group = unmatched[start : start + COMPOSITE_KEYS_PER_QUERY]
                sql = b" UNION ALL ".join(
                    f"SELECT {n} AS cupid_request, t.* FROM {table} t WHERE ".encode()
                    + self._tuple_match(side, columns, k)
                    for n, k in enumerate(group)
                )
                for row in side.rows(sql):
                    request = group[int(row.pop("cupid_request") or 0)]
                    rows.setdefault(request, row)
        return {k: rows[k] for k in keys if k in rows}

    @staticmethod
    def _tuple_match(side: _Side, columns: list[str], key: bytes) -> bytes:
        conn = side.conn
        parts = zip(columns, composite_parts(key), strict=True)
        return b"(" + b" AND ".join(quote_identifier(c).encode() + b" <=> " + conn.literal(p) for c, p in parts) + b")"

    # -- bodies ---------------------------------------------------------------------------------------
    def _send(
        self,
        item: ClaimedItem,
        kind: int,
        row: Row,
        key_column: str,
        differing: dict[str, tuple[bytes | None, bytes | None]] | None,
        destination_row: Row | None,
    ) -> Verdict:
        spec = self.spec
        body = build_body(
            config=spec.config,
            item_id=item.id,
            mismatch_type=kind,
            source_row=row,
            destination=spec.destination,
            destination_table=spec.spec.table,
            key_column=key_column,
            row_key=item.row_key,
            differences=differing,
            detected_at=item.detected_at,
            destination_row=destination_row,
        )
        version = row_version(row) if kind != DELETED else "d" + row_version(destination_row or {})[1:]
        return Verdict(item, SEND, None, kind, body, version)


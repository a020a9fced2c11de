"""Requeue and purge in the failure pool, by item ids or by a filter, with a preview to confirm first.

The store's rules hold: items a dispatcher has claimed are left alone (and counted), a requeued
item whose key already has a live item stays as it is. A filter action touches only items up to
the newest id its preview counted, in chunks, at most ``ACTION_CAP`` per call.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from cupid_airflow.core.pool import (
    MAX_PAGE,
    BoundedStore,
    PoolFilter,
    PoolQueryError,
    check_destination,
    unavailable,
)
from cupid_airflow.core.sql import literal_int
from cupid_airflow.core.store_rows import DEAD, DELIVERED, PARKED, RESOLVED, STATUSES, SUPERSEDED

if TYPE_CHECKING:
    from collections.abc import Sequence

ACTION_CHUNK = 1_000
ACTION_CAP = 50_000  # items one call acts on; what is left is acted on by the next
REQUEUE_FROM = (PARKED, DEAD, DELIVERED, RESOLVED)
PURGE_FREELY = (DELIVERED, RESOLVED, SUPERSEDED)


@dataclass(frozen=True)
class Selection:
    """The items an action is asked for: given ids, or every item matching a filter.

    A filter selection acts only on items up to ``up_to_id``, the newest id its preview counted:
    what arrived after the person confirmed is not touched.
    """

    destination: str
    ids: tuple[int, ...] | None = None
    pool_filter: PoolFilter | None = None
    up_to_id: int | None = None

    def __post_init__(self) -> None:
        check_destination(self.destination)
        if (self.ids is None) == (self.pool_filter is None):
            raise PoolQueryError("select items either by ids or by a filter")
        if self.ids is not None:
            if not 1 <= len(self.ids) <= MAX_PAGE:
                raise PoolQueryError(f"select 1 to {MAX_PAGE} item ids")
            if any(not 1 <= i < 2**64 for i in self.ids):
                raise PoolQueryError("item ids are positive 64-bit integers")


@dataclass(frozen=True)
class ActionPreview:
    """What an action would do: ``matched`` items it applies to (``claimed`` of them being sent now,
    which it will leave alone), ``ineligible`` selected items it does not apply to (status, not found)."""

    action: str
    matched: int
    claimed: int
    ineligible: int
    capped: bool
    up_to_id: int | None


@dataclass(frozen=True)
class ActionOutcome:
    """What an action did: ``acted`` on items, ``skipped_claimed`` (being sent), ``skipped_other``
    (changed meanwhile, or for a requeue, the key already has a live item), ``ineligible`` selected
    ids it does not apply to; ``remaining``: more items match than one request acts on
    (``ACTION_CAP``), run it again for the rest."""

    action: str
    acted: int
    skipped_claimed: int
    skipped_other: int
    ineligible: int
    remaining: bool


def eligible_statuses(action: str, *, undelivered: bool = False) -> tuple[str, ...]:
    """Statuses an action applies to: requeue ended and parked items; purge ended items, and
    undelivered ones only when the person says they accept losing them."""
    if action == "requeue":
        return REQUEUE_FROM
    if action == "purge":
        return STATUSES if undelivered else PURGE_FREELY
    raise PoolQueryError(f"unknown action {action[:32]!r} (accepted: requeue, purge)")


def _statuses_of(action: str, selection: Selection, undelivered: bool) -> tuple[str, ...]:
    allowed = eligible_statuses(action, undelivered=undelivered)
    if selection.pool_filter is None:
        return allowed
    refused = [s for s in selection.pool_filter.statuses if s not in allowed]
    if refused and action == "purge":
        raise PoolQueryError(
            f"purging {', '.join(refused)} items loses them before they are delivered; confirm with undelivered=true"
        )
    if refused:
        raise PoolQueryError(f"{', '.join(refused)} items cannot be requeued (accepted: {', '.join(allowed)})")
    return selection.pool_filter.statuses


def preview(
    store: BoundedStore, config: str, action: str, selection: Selection, *, undelivered: bool = False
) -> ActionPreview:
    """Count what an action on the selection would touch, without touching anything."""
    statuses = _statuses_of(action, selection, undelivered)
    if selection.ids is not None:
        rows = store.query(
            f"SELECT status, claimed_until IS NOT NULL AND claimed_until >= NOW(6) FROM {store.table} "
            f"WHERE config = %s AND destination = %s AND id IN ({', '.join(literal_int(i) for i in selection.ids)})",
            (config, selection.destination),
        )
        hits = [r for r in rows if r[0].decode() in statuses]
        held = sum(int(r[1] or 0) for r in hits)
        return ActionPreview(action, len(hits), held, len(set(selection.ids)) - len(hits), False, None)
    assert selection.pool_filter is not None
    extra, extra_args = selection.pool_filter.where()
    where = f"FROM {store.table} WHERE config = %s AND destination = %s AND status = %s"
    parts, args = [], []
    for status in statuses:  # capped counts through the index; the newest id; claims through theirs
        parts.append(f"SELECT 'matched', COUNT(*) FROM (SELECT 1 {where}{extra} LIMIT {ACTION_CAP + 1}) x")
        parts.append(f"SELECT 'newest', MAX(id) {where}")
        args += [config, selection.destination, status, *extra_args, config, selection.destination, status]
    parts.append(
        f"SELECT 'claimed', COUNT(*) FROM {store.table} FORCE INDEX (ix_claim) WHERE claim_token IS NOT NULL "
        f"AND claimed_until >= NOW(6) AND config = %s AND destination = %s "
        f"AND status IN ({', '.join(['%s'] * len(statuses))}){extra}"
    )
    args += [config, selection.destination, *statuses, *extra_args]
    counted = store.query(" UNION ALL ".join(parts), args)
    matched = sum(int(r[1]) for r in counted if r[0] == b"matched")
    claimed = sum(int(r[1]) for r in counted if r[0] == b"claimed")
    newest = max((int(r[1]) for r in counted if r[0] == b"newest" and r[1] is not None), default=None)
    return ActionPreview(action, min(matched, ACTION_CAP), min(claimed, matched), 0, matched > ACTION_CAP, newest)


def apply(
    store: BoundedStore, config: str, action: str, selection: Selection, *, undelivered: bool = False
) -> ActionOutcome:
    """Requeue or purge the selection through the store (claimed items are left alone and counted)."""
    statuses = _statuses_of(action, selection, undelivered)
    if selection.ids is not None:
        only = f" AND id IN ({', '.join(literal_int(i) for i in selection.ids)})"
        found = _chunk(store, config, selection, statuses, only)
        free = [i for i, held in found if not held]
        acted = _act(store, config, action, statuses, free)
        ineligible = len(set(selection.ids)) - len(found)
        return ActionOutcome(action, acted, len(found) - len(free), len(free) - acted, ineligible, False)
    if selection.up_to_id is None:
        raise PoolQueryError("an action on a filter needs up_to_id from its preview (the confirmation step)")
    acted = claimed = other = 0
    remaining = False
    # parked first: requeued items of the other statuses become parked, and must not be met again
    for status in sorted(statuses, key=lambda s: s != PARKED):
        after = 0
        while not remaining:
            found = _chunk(store, config, selection, (status,), f" AND id > {literal_int(after)}", ordered=True)
            if not found:
                break
            if acted + claimed + other >= ACTION_CAP:
                remaining = True
                break
            after = found[-1][0]
            free = [i for i, held in found if not held]
            done = _act(store, config, action, (status,), free)
            acted += done
            claimed += len(found) - len(free)
            other += len(free) - done
    return ActionOutcome(action, acted, claimed, other, 0, remaining)


def _chunk(
    store: BoundedStore, config: str, selection: Selection, statuses: Sequence[str], only: str, ordered: bool = False
) -> list[tuple[int, bool]]:
    """(id, claimed) of selected items in the statuses: one chunk of a filter, or the given ids."""
    extra, extra_args = ("", []) if selection.pool_filter is None else selection.pool_filter.where()
    if selection.up_to_id is not None:
        extra += f" AND id <= {literal_int(selection.up_to_id)}"
    rows = store.query(
        f"SELECT id, claimed_until IS NOT NULL AND claimed_until >= NOW(6) FROM {store.table} "
        f"WHERE config = %s AND destination = %s AND status IN ({', '.join(['%s'] * len(statuses))}){extra}{only}"
        + (f" ORDER BY id LIMIT {ACTION_CHUNK}" if ordered else ""),
        [config, selection.destination, *statuses, *extra_args],
    )
    return [(int(r[0]), bool(int(r[1] or 0))) for r in rows]


def _act(store: BoundedStore, config: str, action: str, statuses: Sequence[str], ids: list[int]) -> int:
    if not ids:
        return 0
    try:
        if action == "requeue":
            return store.requeue(config, ids, statuses=statuses)
        return store.purge(config, statuses, ids)
    except Exception as err:
        raise unavailable(err, store.params) from err

"""One reconcile run: verify a source table against each destination and record what differs."""

from __future__ import annotations

import logging
import time
import zlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from cupid_airflow.core.compare import DELETED, DIFFERENT, MISSING
from cupid_airflow.core.reconcile.checkpoint import CheckpointStore, LockLost
from cupid_airflow.core.reconcile.findings import Findings
from cupid_airflow.core.reconcile.gates import Budget
from cupid_airflow.core.reconcile.judge import Judge
from cupid_airflow.core.reconcile.keys import same_pairing
from cupid_airflow.core.reconcile.state import (
    CHECKSUM,
    COMPARE,
    DESTINATION,
    DONE,
    FORMAT_VERSION,
    SIDES,
    SOURCE,
    Verify,
    fingerprint,
)
from cupid_airflow.core.reconcile.sweep import ComparePass
from cupid_airflow.core.reconcile.table import HASH_CRC32C, HASH_REVERSE, ReconcileError, TableSide
from cupid_airflow.core.reconcile.walk import checksum_pass
from cupid_airflow.core.sql import ConnectionParams, describe_error

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from cupid_airflow.core.compare import DestinationSpec
    from cupid_airflow.core.reconcile.judge import Tally
    from cupid_airflow.core.store import DeliveryStore
    from cupid_airflow.core.store_rows import RecordOutcome
    from cupid_airflow.core.sync import CursorStore

log = logging.getLogger(__name__)

# strings whose folds differ between collation implementations if any do: case, accents, spacing,
# expansions, non-Latin scripts
FOLD_PROBES = (
    "abc",
    "ABC ",
    "Ab c",
    "café",
    "CAFE",
    "Straße",
    "STRASSE",
    "æ",
    "ǅ",
    "İi",
    "ﬁ",
    "日本語",
    "٣",
    "\u00a0x",
)


@dataclass(frozen=True)
class ReconcileSettings:
    """How a reconcile run works and how hard it may load the servers.

    :param detect_deletes: record destination rows without a source row as type 3.
    :param chunk_size: rows of each side's first checksum chunk; later chunks follow ``target_chunk_second``.
    :param min_chunk_size: the smallest chunk, in rows.
    :param max_chunk_size: the largest chunk, in rows.
    :param target_chunk_second: chunk sizes adapt so one chunk query takes about this long.
    :param max_seconds_per_run: pause (checkpoint) after this long; the next run resumes.
    :param max_chunks_per_run: pause after this many chunk queries (checksum chunks, then judged batches) on
        either side (None: no limit).
    :param max_threads_running: wait while a server's ``Threads_running`` is above this (None: no gate).
    :param max_replica_lag_second: wait while a server that is a replica lags more than this (None: no gate).
    :param wait_second: how long to wait before checking a busy server again.
    :param bucket_rows: rows per hash bucket aimed at; the bucket count follows the larger table.
    :param min_buckets: the fewest hash buckets.
    :param max_buckets: the most hash buckets (a checksum-phase checkpoint holds 12 bytes per bucket).
    :param max_compare_rows: rows of differing buckets one ordered read returns per table at most (the server
        sorts them); more are read in several bucket ranges, one more scan each.
    :param checkpoint_second: write the checkpoint at most this often, and only after progress.
    :param fetch_batch: candidates judged (and re-read) per batch.
    :param max_checkpoint_age_second: a checkpoint of a verify that began longer ago than this is not resumed:
        the verify starts over (None: no bound).
    """

    detect_deletes: bool = False
    chunk_size: int = 20000
    min_chunk_size: int = 1000
    max_chunk_size: int = 1_000_000
    target_chunk_second: float = 0.5
    max_seconds_per_run: float = 1800.0
    max_chunks_per_run: int | None = None
    max_threads_running: int | None = None
    max_replica_lag_second: int | None = None
    wait_second: float = 1.0
    bucket_rows: int = 32
    min_buckets: int = 4096
    max_buckets: int = 65536
    max_compare_rows: int = 10_000_000
    checkpoint_second: float = 10.0
    fetch_batch: int = 1000
    max_checkpoint_age_second: float | None = 7 * 86400.0


@dataclass
class ReconcileOutcome:
    """What one reconcile run did for one destination."""

    phase: str = CHECKSUM
    complete: bool = False
    resumed: bool = False
    verify_started_at: str | None = None
    buckets: int | None = None
    differing_buckets: int | None = None
    chunks: dict[str, int] = field(default_factory=lambda: dict.fromkeys(SIDES, 0))
    rows_checked: dict[str, int] = field(default_factory=lambda: dict.fromkeys(SIDES, 0))
    rows_compared: dict[str, int] = field(default_factory=lambda: dict.fromkeys(SIDES, 0))
    rows: dict[str, int] = field(default_factory=lambda: dict.fromkeys(SIDES, 0))
    null_keys: dict[str, int] = field(default_factory=lambda: dict.fromkeys(SIDES, 0))
    found: dict[int, int] = field(default_factory=lambda: {MISSING: 0, DIFFERENT: 0, DELETED: 0})
    extra: int = 0
    deferred: int = 0
    recorded: int = 0
    changed: int = 0
    key_bytes_only: int = 0
    duplicate_keys: int = 0
    waited_second: float = 0.0
    checksum_second: float = 0.0
    compare_second: float = 0.0
    record_second: float = 0.0
    seconds: float = 0.0
    error: str | None = None

    def add(self, tally: Tally) -> None:
        self.found[MISSING] += tally.missing
        self.found[DIFFERENT] += tally.different
        self.found[DELETED] += tally.deleted
        self.extra += tally.extra
        self.deferred += tally.deferred
        self.changed += tally.changed
        self.key_bytes_only += tally.key_bytes_only
        self.duplicate_keys += tally.duplicate_keys

    def as_dict(self) -> dict[str, Any]:
        return {
            "phase": self.phase,
            "complete": self.complete,
            "resumed": self.resumed,
            "verifyStartedAt": self.verify_started_at,
            "buckets": self.buckets,
            "differingBuckets": self.differing_buckets,
            "chunks": dict(self.chunks),
            "rowsChecked": dict(self.rows_checked),
            "rowsCompared": dict(self.rows_compared),
            "rows": dict(self.rows),
            "nullKeys": dict(self.null_keys),
            "missing": self.found[MISSING],
            "different": self.found[DIFFERENT],
            "deleted": self.found[DELETED],
            "extraNotRecorded": self.extra,
            "deferred": self.deferred,
            "recorded": self.recorded,
            "changedWhileRead": self.changed,
            "keyBytesOnly": self.key_bytes_only,
            "duplicateKeys": self.duplicate_keys,
            "waitedSecond": round(self.waited_second, 3),
            "checksumSecond": round(self.checksum_second, 3),
            "compareSecond": round(self.compare_second, 3),
            "recordSecond": round(self.record_second, 3),
            "seconds": round(self.seconds, 3),
            "error": self.error,
        }


class ReconcileRun:
    """Verify a source table against each destination; record every mismatch for delivery.

    :param checkpoints: where verifies are checkpointed (default: ``cupid_reconcile_checkpoint`` in the
        delivery store's database).
    :param progress: where a small progress summary is mirrored per destination (Airflow Variables in
        production, so the UI shows it); None for none.
    :param restart: ignore any checkpoint and start every verify over.
    :param key_columns: two or more source columns that match rows instead of ``by_column``
        (``reconcile.keyColumns``); each destination's names come from its ``columns`` mapping.
    """

    def __init__(
        self,
        *,
        config: str,
        source: ConnectionParams,
        table: str,
        id_column: str,
        by_column: str,
        destinations: dict[str, tuple[ConnectionParams, DestinationSpec]],
        settings: ReconcileSettings,
        store: DeliveryStore,
        checkpoints: CheckpointStore | None = None,
        progress: CursorStore | None = None,
        restart: bool = False,
        key_columns: Sequence[str] | None = None,
    ) -> None:
        if key_columns is not None and len(key_columns) < 2:
            raise ReconcileError("key_columns needs two or more columns (else use by_column)")
        self.key_columns = list(key_columns) if key_columns else None
        self.config = config
        self.source = source
        self.table = table
        self.id_column = id_column
        self.by_column = by_column
        self.destinations = destinations
        self.settings = settings
        self.store = store
        self.checkpoints = checkpoints or CheckpointStore(store.params)
        self.progress = progress
        self.restart = restart

    def run(self) -> dict[str, Any]:
        started = time.monotonic()
        deadline = started + self.settings.max_seconds_per_run
        outcomes: dict[str, ReconcileOutcome] = {}
        self.store.ensure_schema()
        self.checkpoints.ensure_schema()
        try:
            names = list(self.destinations)
            for n, name in enumerate(names):
                params, spec = self.destinations[name]
                outcome = outcomes[name] = ReconcileOutcome()
                # each destination gets a fair share of what is left of the run's time
                share = (deadline - time.monotonic()) / (len(names) - n)
                began = time.monotonic()
                try:
                    _Verification(self, name, params, spec, outcome).run(time.monotonic() + max(0.0, share))
                except Exception as err:  # one broken destination does not stop the others
                    outcome.error = describe_error(err, params, self.source)
                    log.error("reconcile of destination %s failed: %s", name, outcome.error)
                outcome.seconds = time.monotonic() - began
        finally:
            self.checkpoints.close()
        return {
            "config": self.config,
            "seconds": round(time.monotonic() - started, 3),
            "destinations": {n: o.as_dict() for n, o in outcomes.items()},
        }


class _Verification:
    """One destination's part of a run: lock, load or start the verify, run its phases, checkpoint."""

    def __init__(
        self, run: ReconcileRun, name: str, params: ConnectionParams, spec: DestinationSpec, outcome: ReconcileOutcome
    ) -> None:
        self.run_ = run
        self.name = name
        self.spec = spec
        self.outcome = outcome
        self.settings = run.settings
        self.checkpoints = run.checkpoints
        columns = list(spec.columns)
        source_keys = destination_keys = None
        if run.key_columns:
            source_keys = run.key_columns
            destination_keys = [_mapped_name(spec, c) for c in run.key_columns]
        self.sides = {
            SOURCE: TableSide(SOURCE, run.source, run.table, run.by_column, columns, source_keys, run.id_column),
            DESTINATION: TableSide(
                DESTINATION, params, spec.table, spec.by_column, [spec.columns[c] for c in columns], destination_keys
            ),
        }
        self.readers: dict[str, TableSide] = {}
        self._findings: Findings
        self._saved_at = time.monotonic()
        self._saved_mark: tuple[Any, ...] | None = None
        # the server writes a batch's findings while the next batch is judged; a checkpoint (and the run's
        # end) waits for them first, so no checkpoint ever passes a finding that is not recorded
        self._recorder = run.store.recorder()
        self._recording_failed = False

    def run(self, deadline: float) -> None:
        if not self.checkpoints.lock(self.run_.config, self.name):
            raise ReconcileError("another reconcile run of this destination is in progress")
        try:
            for side in self.sides.values():
                side.prepare()
            self.readers = {role: side.reader() for role, side in self.sides.items()}
            run = self.run_
            self._findings = Findings(run.config, self.name, tuple(run.key_columns or ()))
            verify = self._load()
            verify.runs += 1
            budget = Budget(deadline, self.settings.max_chunks_per_run, self.outcome)
            try:
                self._phases(verify, budget)
            finally:
                self._finish(verify)
        finally:
            self.checkpoints.unlock()
            for side in [*self.sides.values(), *self.readers.values()]:
                side.close()

    def _phases(self, verify: Verify, budget: Budget) -> None:
        began = time.monotonic()
        if verify.phase == CHECKSUM:
            checksum_pass(verify, self.sides, self.settings, budget, lambda: self._checkpoint(verify, budget))
            self.outcome.checksum_second += time.monotonic() - began
            if not all(verify.sides[r].done for r in SIDES):
                return
            verify.begin_compare(self.settings.max_compare_rows)
            log.info(
                "destination %s: checksums done (%d/%d rows), %d of %d buckets differ",
                self.name,
                verify.sides[SOURCE].rows,
                verify.sides[DESTINATION].rows,
                verify.differing_buckets,
                verify.buckets,
            )
            self._checkpoint(verify, budget, force=True)
        began = time.monotonic()
        try:
            self._compare(verify, budget)
        finally:
            self.outcome.compare_second += time.monotonic() - began

    def _compare(self, verify: Verify, budget: Budget) -> None:
        folds = self._folds() if verify.phase == COMPARE else {}
        while verify.phase == COMPARE:
            source, destination = self.readers[SOURCE], self.readers[DESTINATION]
            judge = Judge(
                source,
                destination,
                detect_deletes=self.settings.detect_deletes,
                folded=folds[SOURCE] != source.fold_sql(None),
                same_pairing=same_pairing(source.keys, destination.keys),
                paired=verify.paired,
            )
            compare = ComparePass(
                verify,
                self.sides,
                self.readers,
                judge,
                folds,
                self.settings,
                budget,
                lambda tally: self._record(verify, tally),
                lambda force: self._checkpoint(verify, budget, force=force),
            )
            if not compare.run():
                return
            if verify.sweep == 1 and verify.deferred and self.settings.detect_deletes:
                log.info("destination %s: %d rows to decide once every twin is known", self.name, verify.deferred)
                verify.sweep, verify.range_index, verify.position = 2, 0, None
            else:
                verify.phase = DONE
        log.info(
            "destination %s: verify complete: %d missing, %d different, %d deleted at source, %d extra not recorded",
            self.name,
            *(verify.found[k] for k in ("missing", "different", "deleted", "extra")),
        )

    def _folds(self) -> dict[str, str]:
        """How each table folds its key for the compare's groups: under the destination's collation when the
        source server folds a probe of tricky strings exactly as the destination's does, else by bytes."""
        source, destination = self.sides[SOURCE], self.sides[DESTINATION]
        theirs = destination.keys
        exact = True
        for ours, other in zip(source.keys, theirs, strict=True):
            if other.collation is None or other.charset in (None, "binary"):
                exact = exact and (ours.data_type == other.data_type or same_pairing([ours], [other]))
                continue
            there = destination.fold_probe(other, FOLD_PROBES)
            exact = exact and there is not None and source.fold_probe(other, FOLD_PROBES) == there
        if not exact:
            log.info("destination %s: keys are paired by bytes, collation twins by lookups", self.name)
            return {SOURCE: source.fold_sql(None), DESTINATION: destination.fold_sql(None)}
        return {SOURCE: source.fold_sql(theirs), DESTINATION: destination.fold_sql(theirs)}

    def _record(self, verify: Verify, tally: Tally) -> None:
        if not tally.findings:
            return
        began = time.monotonic()
        records = self._findings.records(tally.findings)
        self.checkpoints.check()  # a run that lost its lock records nothing more
        self._recorded(verify, lambda: self._recorder.add(records), began)

    def _flush(self, verify: Verify) -> None:
        """Wait until every finding handed to the recorder is recorded; raise what recording raised."""
        self._recorded(verify, self._recorder.flush, time.monotonic())

    def _recorded(self, verify: Verify, recording: Callable[[], RecordOutcome], began: float) -> None:
        try:
            recorded = recording().new
        except BaseException:
            self._recording_failed = True
            raise
        finally:
            self.outcome.record_second += time.monotonic() - began
        self.outcome.recorded += recorded
        verify.recorded += recorded

    # -- checkpoints --------------------------------------------------------------------------
    def _load(self) -> Verify:
        source, destination = self.sides[SOURCE], self.sides[DESTINATION]
        method = HASH_CRC32C if source.has_crc32c and destination.has_crc32c else HASH_REVERSE
        options = {"detectDeletes": self.settings.detect_deletes, "hash": method}
        wanted = fingerprint(source.shape(), destination.shape(), options)
        if self.run_.restart:
            self.checkpoints.clear(self.run_.config, self.name)
        stored = None if self.run_.restart else self.checkpoints.load(self.run_.config, self.name)
        age_bound = self.settings.max_checkpoint_age_second
        if stored is not None:
            state = stored.state
            if state.get("formatVersion") != FORMAT_VERSION or state.get("fingerprint") != wanted:
                log.info(
                    "destination %s: tables, columns, types or options changed since the checkpoint; starting over",
                    self.name,
                )
            elif age_bound is not None and stored.age_second > age_bound:
                log.info(
                    "destination %s: the checkpointed verify began %.0f s ago (more than %.0f s); starting over",
                    self.name,
                    stored.age_second,
                    age_bound,
                )
            else:
                try:
                    verify = Verify.restore(state, stored.blob)
                except (KeyError, ValueError, TypeError, zlib.error) as err:
                    log.warning("destination %s: unreadable reconcile checkpoint (%s); starting over", self.name, err)
                else:
                    self.outcome.resumed = True
                    self._saved_mark = self._mark(verify)
                    log.info(
                        "destination %s: resuming the verify started %s (phase %s)",
                        self.name,
                        verify.started_at,
                        verify.phase,
                    )
                    return verify
        settings = self.settings
        rows = max(source.estimated_rows, destination.estimated_rows)
        buckets = min(settings.max_buckets, max(settings.min_buckets, rows // max(1, settings.bucket_rows)))
        log.info("destination %s: new verify, %d hash buckets, row hash %s", self.name, buckets, method)
        verify = Verify.start(wanted, self.checkpoints.now(), buckets, method, settings.chunk_size)
        self._saved_mark = self._mark(verify)  # nothing worth writing before the first progress
        return verify

    @staticmethod
    def _mark(verify: Verify) -> tuple[Any, ...]:
        """What changes with progress (and only with progress)."""
        sides = (s.chunks for s in verify.sides.values())
        return (verify.phase, verify.sweep, verify.range_index, verify.position, *sides)

    def _checkpoint(self, verify: Verify, budget: Budget, *, force: bool = False) -> None:
        """Write the checkpoint when the verify moved since the last write, at most every ``checkpoint_second``
        unless ``force``. Waiting (a load gate, a slow query) writes nothing."""
        with budget.lock:
            mark = self._mark(verify)
            if mark == self._saved_mark:
                return
            if not force and time.monotonic() - self._saved_at < self.settings.checkpoint_second:
                return
        self._flush(verify)  # the checkpoint's position is past these findings: they are recorded first
        with budget.lock:
            mark = self._mark(verify)
            state, blob = verify.state_json(), verify.blob()
            summary = verify.progress()
        self.checkpoints.save_snapshot(self.run_.config, self.name, verify.started_at, state, blob)
        self._saved_at, self._saved_mark = time.monotonic(), mark
        self._mirror(summary)

    def _finish(self, verify: Verify) -> None:
        outcome = self.outcome
        try:
            if not self._recording_failed:
                self._flush(verify)
        except Exception as err:
            log.error("destination %s: recording findings failed: %s", self.name, err)
            if outcome.error is None:
                outcome.error = f"recording failed: {type(err).__name__}: {err}"[:1000]
        finally:
            self._recorder.close()
        outcome.phase = verify.phase
        outcome.complete = verify.phase == DONE and not self._recording_failed
        outcome.verify_started_at = verify.started_at
        outcome.buckets = verify.buckets
        outcome.differing_buckets = None if verify.phase == CHECKSUM else verify.differing_buckets
        for side, progress in verify.sides.items():
            outcome.rows[side] = progress.rows
            outcome.null_keys[side] = progress.null_keys
        try:
            if self._recording_failed:  # the position may be past findings not recorded: the last checkpoint stays
                log.info("destination %s: the checkpoint is kept where it was", self.name)
            elif verify.phase == DONE:
                self.checkpoints.clear(self.run_.config, self.name)
            elif self._mark(verify) != self._saved_mark:
                self.checkpoints.save(self.run_.config, self.name, verify)
                self._saved_mark = self._mark(verify)
        except LockLost as err:
            log.error("destination %s: %s", self.name, err)
            if outcome.error is None:
                outcome.error = str(err)
        except Exception as err:  # the state database failing must not hide what was found
            log.error("destination %s: reconcile checkpoint not written: %s", self.name, err)
            if outcome.error is None:
                outcome.error = f"checkpoint not written: {type(err).__name__}: {err}"[:1000]
        self._mirror({**verify.progress(), "complete": outcome.complete, "lastRun": outcome.as_dict()})

    def _mirror(self, summary: dict[str, Any]) -> None:
        if self.run_.progress is None:
            return
        try:
            self.run_.progress.save(self.name, summary)
        except Exception as err:  # progress is informative only
            log.warning("destination %s: reconcile progress not mirrored: %s", self.name, err)


def _mapped_name(spec: DestinationSpec, column: str) -> str:
    """The destination's name of a source column, from the destination's ``columns`` mapping."""
    if column in spec.columns:
        return spec.columns[column]
    lowered = column.lower()
    for source_column, destination_column in spec.columns.items():
        if source_column.lower() == lowered:
            return destination_column
    raise ReconcileError(f"key column {column!r} is not mapped in the columns of destination {spec.name}")

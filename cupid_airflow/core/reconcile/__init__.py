"""Full reconciliation: verify whole tables by hash-bucket checksums, then read only the differing buckets.

Incremental scans only see new ids and moved update columns. A reconcile run verifies the whole source
table against each destination:

1. **checksum** (:mod:`.walk`): each table is read in its *own* primary-key order (sequential IO, never a
   lookup by the other table's key), in chunks found by nibbling (``pk > last ORDER BY pk LIMIT 1 OFFSET
   n-1``). One query per chunk returns, per hash bucket of the key (``MOD(CRC32(key text), B)``), the row
   count and the ``BIT_XOR`` of a 64-bit row hash. Both tables add into one pair of arrays (source rows
   minus destination rows, the XOR of both): a bucket is equal when both are zero.
2. **compare** (:mod:`.walk`): one ordered read per table returns ``(bucket, key, row hash, pk)`` of the
   rows of the differing buckets, sorted by bucket by the server; the two streams merge bucket by bucket
   with little memory, whatever the number of differences. Source rows whose key and hash the destination
   lacks, and destination rows whose key the source lacks, are candidates.
3. **judge** (:mod:`.judge`): candidates are judged in batches on what the tables hold now, the
   destination read first and the source after it, exactly as the incremental compare judges: type 1
   missing, type 2 different, and type 3 (deleted at the source) for a destination row when
   ``detectDeletes`` is on and the source has no row for its key, by bytes and under the destination's
   collation (:mod:`.match`).

The row hash is ``CRC32(s) * CRC32C(s)`` over ``s = CONCAT_WS('|', ...)`` of the key and every compared
column as ``IF(c IS NULL, 'N', CONCAT(LENGTH(c), ':', c))`` (text in utf8mb4), so NULL differs from ``''``
and ``'ab'+'c'`` from ``'a'+'bc'``. The product is deliberate: CRC32 is linear, so the XOR of plain CRCs
misses two rows of a bucket changed the same way; the product of two different CRCs is not linear.
Servers without ``CRC32C`` (MySQL) use ``CRC32(s) * CRC32(REVERSE(s))`` on both sides.

Progress is checkpointed (:mod:`.checkpoint`, :mod:`.state`) in table ``cupid_reconcile_checkpoint`` of
the state database, under a lock that every write checks, so a paused or killed run resumes where it
stopped; a completed verify deletes its checkpoint. A verify is not a snapshot: see docs/config.md.
"""

from __future__ import annotations

from cupid_airflow.core.reconcile.checkpoint import CHECKPOINT_TABLE, CheckpointStore, LockLost
from cupid_airflow.core.reconcile.keys import composite_key, composite_parts
from cupid_airflow.core.reconcile.run import ReconcileOutcome, ReconcileRun, ReconcileSettings
from cupid_airflow.core.reconcile.table import ReconcileError, TableSide

__all__ = [
    "CHECKPOINT_TABLE",
    "CheckpointStore",
    "LockLost",
    "ReconcileError",
    "ReconcileOutcome",
    "ReconcileRun",
    "ReconcileSettings",
    "TableSide",
    "composite_key",
    "composite_parts",
]

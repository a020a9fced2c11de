"""Publish run summaries as Airflow metrics (StatsD or OpenTelemetry, whatever ``[metrics]`` configures)."""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger(__name__)


def _stats() -> Any:
    from airflow.sdk.observability.stats import Stats

    return Stats


def sync_metrics(summary: dict[str, Any]) -> dict[str, tuple[str, float]]:
    """Metric name -> (kind, value) for a compare summary; kind is ``incr`` or ``gauge``."""
    config = summary["config"]
    metrics: dict[str, tuple[str, float]] = {
        f"cupid.{config}.rows_scanned": ("incr", sum(summary["rowsScanned"].values())),
        f"cupid.{config}.recorded": ("incr", summary["recorded"]),
        f"cupid.{config}.null_keys": ("incr", summary["nullKeys"]),
    }
    for name, destination in summary["destinations"].items():
        prefix = f"cupid.{config}.{name}"
        metrics[f"{prefix}.missing"] = ("incr", destination["mismatches"]["missing"])
        metrics[f"{prefix}.different"] = ("incr", destination["mismatches"]["different"])
        if destination["lagRows"] is not None:
            metrics[f"{prefix}.lag_rows"] = ("gauge", destination["lagRows"])
        if destination["lagUpdateSecond"] is not None:
            metrics[f"{prefix}.lag_update_second"] = ("gauge", destination["lagUpdateSecond"])
        metrics[f"{prefix}.unavailable"] = ("gauge", 1 if destination["error"] else 0)
        late = destination.get("lateCommits")
        if late:
            metrics[f"{prefix}.late_gaps"] = ("gauge", late["gaps"])
            metrics[f"{prefix}.late_found"] = ("incr", late["found"])
            metrics[f"{prefix}.late_gaps_over_cap"] = ("incr", late["overCap"])
    return metrics


def delivery_metrics(summary: dict[str, Any]) -> dict[str, tuple[str, float]]:
    """Metric name -> (kind, value) for a delivery or failure-pool summary."""
    config = summary["config"]
    metrics: dict[str, tuple[str, float]] = {}
    for name, destination in summary["destinations"].items():
        prefix = f"cupid.{config}.{name}"
        for key in ("delivered", "resolved", "failed"):
            metrics[f"{prefix}.{key}"] = ("incr", destination[key])
    store = summary.get("store") or {}
    metrics[f"cupid.{config}.parked"] = ("incr", summary.get("parked", 0))
    for status in ("pending", "parked", "dead"):
        if status in store:
            metrics[f"cupid.{config}.pool.{status}"] = ("gauge", store[status])
    metrics[f"cupid.{config}.pool.oldest_parked_second"] = ("gauge", store.get("oldestParkedSecond") or 0)
    return metrics


def publish(metrics: dict[str, tuple[str, float]]) -> None:
    """Send metrics through Airflow's Stats; a metrics backend problem never fails a task."""
    try:
        stats = _stats()
        for name, (kind, value) in metrics.items():
            if kind == "incr":
                stats.incr(name, int(value))
            else:
                stats.gauge(name, value)
    except Exception as err:
        log.warning("cupid metrics not published: %s", err)

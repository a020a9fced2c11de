"""Cursors in Airflow Variables: one Variable per config and destination, editable in the UI."""

from __future__ import annotations

from typing import Any


def cursor_variable_key(config: str, destination: str, kind: str = "cursor") -> str:
    """The Variable that holds one destination's cursor (``cupid_user_des0_cursor``) or reconcile checkpoint
    (``cupid_user_des0_reconcile``)."""
    return f"cupid_{config}_{destination}_{kind}"


DESCRIPTIONS = {
    "cursor": (
        "cupid cursor of config {config!r}, destination {destination!r}: insertId is the next source id to scan, "
        "gaps the ids missing below it that are read again for late commits, updateTimeUtc the end of the last "
        "completed update window (source DB time, UTC). Edit insertId to rescan from there."
    ),
    "reconcile": (
        "cupid reconcile progress of config {config!r}, destination {destination!r} (phase, rows checksummed per "
        "table, differences found so far), for display only: the checkpoint itself is in table "
        "cupid_reconcile_checkpoint of the state database. Trigger the reconcile DAG with "
        '{{"restart": true}} to start the verify over.'
    ),
}


class VariableCursorStore:
    """Reads and writes cursors as JSON Variables through the Task SDK (inside a running task)."""

    def __init__(self, config: str, kind: str = "cursor") -> None:
        self.config = config
        self.kind = kind

    def load(self, destination: str) -> dict[str, Any] | None:
        from airflow.sdk import Variable

        key = cursor_variable_key(self.config, destination, self.kind)
        value = Variable.get(key, default=None, deserialize_json=True)
        if value is not None and not isinstance(value, dict):
            raise ValueError(f"Variable {key!r} must hold a JSON object like " + '{"insertId": 1}, not ' + repr(value))
        return value

    def save(self, destination: str, cursor: dict[str, Any]) -> None:
        from airflow.sdk import Variable

        Variable.set(
            cursor_variable_key(self.config, destination, self.kind),
            cursor,
            description=DESCRIPTIONS[self.kind].format(config=self.config, destination=destination),
            serialize_json=True,
        )

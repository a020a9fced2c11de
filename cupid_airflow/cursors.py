"""Cursors in Airflow Variables: one Variable per config and destination, editable in the UI."""

from __future__ import annotations

from typing import Any


def cursor_variable_key(config: str, destination: str) -> str:
    """The Variable that holds one destination's cursor, e.g. ``cupid_user_des0_cursor``."""
    return f"cupid_{config}_{destination}_cursor"


class VariableCursorStore:
    """Reads and writes cursors as JSON Variables through the Task SDK (inside a running task)."""

    def __init__(self, config: str) -> None:
        self.config = config

    def load(self, destination: str) -> dict[str, Any] | None:
        from airflow.sdk import Variable

        value = Variable.get(cursor_variable_key(self.config, destination), default=None, deserialize_json=True)
        if value is not None and not isinstance(value, dict):
            raise ValueError(
                f"Variable {cursor_variable_key(self.config, destination)!r} must hold a JSON object like "
                '{"insertId": 1}, not ' + repr(value)
            )
        return value

    def save(self, destination: str, cursor: dict[str, Any]) -> None:
        from airflow.sdk import Variable

        Variable.set(
            cursor_variable_key(self.config, destination),
            cursor,
            description=(
                f"cupid cursor of config {self.config!r}, destination {destination!r}: insertId is the next "
                "source id to scan, updateTime the end of the last completed update window (source DB time). "
                "Edit insertId to rescan from there."
            ),
            serialize_json=True,
        )

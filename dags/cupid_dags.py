"""cupid-airflow: one sync DAG and one failure-pool DAG per config file in the configs folder (dags/cupid/)."""

from __future__ import annotations

from pathlib import Path

from cupid_airflow.dag_factory import load_dags

globals().update(load_dags(Path(__file__).parent))

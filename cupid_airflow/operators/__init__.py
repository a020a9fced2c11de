"""cupid operators."""

from __future__ import annotations

from cupid_airflow.operators.callback import CallbackOperator
from cupid_airflow.operators.compare import MySqlCompareOperator
from cupid_airflow.operators.reconcile import MySqlReconcileOperator

__all__ = ["CallbackOperator", "MySqlCompareOperator", "MySqlReconcileOperator"]

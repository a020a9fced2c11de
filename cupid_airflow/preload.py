"""Load cupid's task-time modules in Airflow's long-lived processes, so every forked task process starts with them.

Airflow forks each task process from a long-lived one (a LocalExecutor worker, a Celery pool process),
then the task imports what it needs: about 0.06 CPU-seconds for an idle sync run (the DAG factory,
the compare's connections, MySQLdb, the mysql hook), 0.1 more for a delivery (aiohttp). Imported once
in the parent instead, a fork shares them for free. Enable it with one line in the deployment's
``airflow_local_settings.py`` (in ``$AIRFLOW_HOME/config/``, which Airflow imports in every process)::

    import cupid_airflow.preload  # noqa: F401
"""

from __future__ import annotations

import importlib

MODULES = (
    "cupid_airflow.dag_factory",
    "cupid_airflow.operators.compare",
    "cupid_airflow.operators.callback",
    "cupid_airflow.connections",
    "cupid_airflow.cursors",
    "cupid_airflow.metrics",
    "cupid_airflow.core.sync",
    "cupid_airflow.core.dispatch",
    "cupid_airflow.core.delivery",
    "airflow.providers.standard.operators.empty",
    "airflow.providers.mysql.hooks.mysql",
    "MySQLdb",
    "aiohttp",
)

for _module in MODULES:
    importlib.import_module(_module)

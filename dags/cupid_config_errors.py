"""cupid-airflow: reports every broken config file of the configs folder as one Airflow DAG import error.

The DAG file ``cupid_dags.py`` skips broken configs so the good ones still load.
"""

from __future__ import annotations

from pathlib import Path

from cupid_airflow.dag_factory import raise_config_errors

raise_config_errors(Path(__file__).parent)

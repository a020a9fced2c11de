"""``airflow cupid ...`` (and ``python -m cupid_airflow ...``): the failure pool and config checks."""

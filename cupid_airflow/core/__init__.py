"""The pure core of cupid-airflow: no Airflow imports below this package."""

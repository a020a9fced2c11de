"""cupid-airflow."""

"""cupid-airflow: compares MySQL sources with their CDC destinations and calls back on mismatches."""

__version__ = "0.1.0"

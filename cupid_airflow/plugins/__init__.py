"""The cupid page of the Airflow UI: the delivery store and failure pool of every config."""

"""Configuration people save in Prefect: the migration spec and the endpoint/notifier blocks."""

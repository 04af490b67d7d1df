"""One migration step a module: plain functions, each with a thin Prefect task wrapper."""

"""Composition: the Prefect flows and the CLI that runs them."""

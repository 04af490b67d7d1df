"""Throwaway local MongoDB deployments (real mongod processes in temp dirs) and sample data.

Used by `make demo`, the test suite and the benchmarks; nothing in the migration itself imports it.
"""

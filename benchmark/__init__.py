"""Benchmark tooling: `benchmark/run.py` runs a grid of training runs and aggregates them."""

"""Benchmarks: run as `python benchmarks/NAME.py` or `python -m benchmarks.NAME`."""

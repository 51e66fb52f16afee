"""Benchmark of the speech service against the same model called in-process: `python -m bench.run`."""

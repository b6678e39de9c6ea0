"""Benchmark scenarios: `unity bench [SCENARIO]` or `python -m bench.NAME`; each prints one JSON object."""

"""Benchmarks: `python -m bench <name> [options]` (see docs/benchmarks.md).

Each one starts its own stack (private redis-server, the sandbox in a process of its
own, real Celery workers, the API under uvicorn), prints a table and writes JSON to
bench/results/.
"""

"""Benchmarks: ``python -m llm_scratch.bench {throughput,overhead,profile,attention,generation,data,all}``.

Each prints a table and writes its figures as JSON (``--out``; default
``benchmarks/results/<name>.json``). See docs/guides/performance.md.
"""

BENCHMARKS = ("throughput", "overhead", "profile", "attention", "generation", "data")

"""Benchmarks: ``python -m llm_scratch.bench {throughput,overhead,profile,attention,generation,data,all}``,
and ``sweep`` (real sweeps, where each job's wall time goes: not part of ``all``).

Each prints a table and writes its figures as JSON (``--out``; default
``benchmarks/results/<name>.json``). See docs/guides/performance.md.
"""

BENCHMARKS = ("throughput", "overhead", "profile", "attention", "generation", "data")

"""Throughput benchmarks, run from the repository root: ``python -m bench.<name>`` (``make bench-*``).
Each prints ratios against a baseline measured in the same run; figures in docs/benchmarks.md."""

"""Throughput benchmarks of teachers and students on every inference backend, and their report.

    python -m pytest bench --bench-quick --benchmark-json=quick.json   # what CI runs (tests/test_bench_quick.py)
    python -m pytest bench --bench-full --benchmark-json=full.json     # the paper's Table 2 grid
    python -m bench.report full.json -o bench/results                  # markdown table + PNG plots
    python -m bench.run --full -o bench/results                        # both steps (or bench/run.sh)

See bench/README.md. ``python -m pytest`` from the repository root does not collect this folder
(``testpaths = ["tests"]``).
"""

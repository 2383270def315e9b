"""Benchmarks of wrn_fast: kernel microbenchmarks and whole-model throughput.

One entry point, ``python -m bench.run`` (see bench/README.md). Every run writes
its figures as data (``bench/results/<date>_<device>_<commit>.json`` plus a
markdown table, and one row per figure appended to ``bench/results/results.jsonl``);
``bench/plot.py`` draws the PNGs from that data.
"""

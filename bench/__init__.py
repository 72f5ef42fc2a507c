"""Benchmarks for ugram, each printing ratios against baselines measured in the same run.

Scripts (run from the repository root): ``bench/throughput.py`` (ugram end to end vs a plain
Python receiver), ``bench/run.py`` (every baseline, the goals P1-P6, ``--quick``) and
``bench/hotspots.py`` (py-spy/perf on the receiver and workers under load) and
``bench/compare.py`` (one handler, an older commit against the working tree). Modules:
``baselines`` (C and single-process Python receivers), ``harness`` (running a real ugram
server and checking handled == sent), ``handlers`` (ugram handlers), ``work`` (what those
handlers share with the baselines), ``pysend`` (Python senders), ``report`` (formatting).
Results: ``bench/RESULTS.md``.
"""

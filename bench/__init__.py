"""Benchmarks for ugram: ``python bench/run.py [SCENARIO ...] [--quick] [--rounds N]``.

One runner (``run``) and one table format (``table``). Scenarios: ``scenarios`` (the
baselines, ugram end to end, JSON, CPU-heavy, confined, compare), ``latency``, ``memory``,
``netns``, ``profile``; what they share: ``plan`` (options, sections, goal ratios) and
``measure`` (configs, the interleaved rounds). Running things: ``server`` (a real ugram
server under load), ``receivers`` (the C and Python baselines), ``senders`` and ``pysend``
(the load), ``procs`` (child processes), ``snapshot`` (ugram at a git revision), ``cbuild``
(the C programs in ``c/``); ``handlers`` and ``work`` (the per-record work). Results and
what they decided: ``bench/RESULTS.md``.
"""

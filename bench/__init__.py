"""Benchmarks for ugram: baselines (C and Python receivers) and handlers for the ugram side."""

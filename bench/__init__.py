"""Benchmarks and sweeps, each run as a script (``python bench/NAME.py``); a package so that tests can import them."""

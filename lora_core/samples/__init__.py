"""Bundled sample datasets (written by make_samples.py) for offline runs and tests."""

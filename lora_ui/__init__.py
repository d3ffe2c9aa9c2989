"""Helpers shared by the dashboard pages (pages/*.py).

Nothing here imports torch or transformers at import time: the engine functions that need them
import lazily, so a page renders its layout before any model is touched.
"""

"""The dashboard's layer between the pages (pages/*.py, layout only) and the engine (lora_core).

service.py is the one door to the engine; state.py owns session-state keys and lasting messages; widgets.py the
widgets several pages share; format.py how numbers, statuses and errors are written; charts.py, live.py,
config_form.py and compare.py turn engine data into figures, progress lines, form state and tables.

Nothing here imports torch or transformers at import time: the engine imports them inside the functions that
need a model, so a page renders its layout before any model is touched.
"""

"""Built-in RASP programs, one ``PROGRAM.py`` file each (the format ``mechwork zoo tracr`` reads).

Each becomes the zoo entry ``tracr_<file name>``. The files import tracr, so nothing here imports them:
the zoo reads their docstrings as text and compiles them only when an entry is built.
"""

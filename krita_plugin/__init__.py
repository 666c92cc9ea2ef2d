"""dragd's Krita 5 plug-in: the DragGAN docker and the Tools > Scripts > Drag (DragGAN) action.

Modules: ``session`` (settings, arrows from vector shapes, the selection mask, pixel helpers,
the job model; pure Python), ``connection`` (one run through the protocol client, never
blocking), ``glue`` (the only code touching Krita's documents), ``run`` (the run function:
QTimer-driven), ``docker`` and ``extension`` (the UI), ``entry`` (the module Krita loads,
installed as dragd_krita/__init__.py). Importing this package imports nothing from Krita,
Qt or zmq.
"""

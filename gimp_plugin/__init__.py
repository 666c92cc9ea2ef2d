"""dragd's GIMP 3 plug-in: Filters > Generative > Drag (DragGAN)...

Modules: ``session`` (settings, arrows, mask, job model; pure Python), ``runner`` (drives
one job through the protocol client), ``glue`` (the only code touching GIMP), ``dialog``
(GimpUi dialogs), ``plugin`` (the Gimp.PlugIn and its procedure), ``entry`` (the script
GIMP executes). Importing this package imports nothing from GIMP or zmq.
"""

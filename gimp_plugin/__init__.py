"""dragd's GIMP 3 plug-in: Filters > Generative > Drag (DragGAN)...

Modules (the Krita plug-in has the same ones for the same roles): ``model`` (settings,
arguments, path strokes -> arrows, the mask, the job model's wording; pure Python),
``host`` (the only code touching GIMP's images), ``run`` (drives the shared run of
``..plugin_common.task`` from a loop, inside one undo group), ``ui`` (GimpUi dialogs),
``plugin`` (the Gimp.PlugIn and its procedure), ``entry`` (the script GIMP executes).
Importing this package imports nothing from GIMP or zmq.
"""

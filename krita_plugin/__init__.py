"""dragd's Krita 5 plug-in: the DragGAN docker and the Tools > Scripts > Drag (DragGAN) action.

Modules (the GIMP plug-in has the same ones for the same roles): ``model`` (settings,
arrows from vector shapes, the selection mask, pixel helpers, the job model's wording;
pure Python), ``host`` (the only code touching Krita's documents), ``run`` (the run
function: drives the shared run of ``..plugin_common.task`` from a QTimer), ``ui`` (the
docker), ``plugin`` (registers the action and the docker with Krita), ``entry`` (the
module Krita loads, installed as dragd_krita/__init__.py). Importing this package imports
nothing from Krita, Qt or zmq.
"""

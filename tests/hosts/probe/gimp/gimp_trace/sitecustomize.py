"""Undo tracer for GIMP 3 plug-ins under test (not part of any plug-in).

GIMP 3.0's PDB offers no way to count undo steps or to undo from a script (only
gimp-image-undo-group-start/-end, -enable/-disable, -freeze/-thaw, -is-enabled). To check that an
operation made exactly one undo group, tests run GIMP with PYTHONPATH pointing here and
DRAGD_GIMP_TRACE naming a file: every Python process GIMP starts (python-fu-eval and each Python
plug-in) then imports this module, which wraps the state-changing methods of the Gimp classes and
appends one JSON line per call: {"pid", "prog", "call", "depth"}, where depth is the process's
undo-group nesting before the call. A plug-in that made one undo group shows exactly one
Image.undo_group_start and one Image.undo_group_end, and every other state-changing call between
them (depth 1).
"""
import json
import os
import sys

_TRACE = os.environ.get("DRAGD_GIMP_TRACE")

_PREFIXES = ("set_", "insert_", "remove_", "select_", "undo_group_", "add_", "delete", "merge",
             "fill", "edit_", "transform_", "stroke_new", "bezier_stroke", "update", "resize",
             "scale", "crop", "flip", "rotate", "feather", "none", "all", "invert", "grow",
             "shrink", "sharpen", "border", "flood", "translate", "take_selected", "clean_all",
             "flatten", "reorder_item", "raise_item", "lower_item", "attach_parasite",
             "detach_parasite", "convert_")


def _install(path):
    import gi

    gi.require_version("Gimp", "3.0")
    gi.require_version("Gegl", "0.4")
    from gi.repository import Gegl, Gimp

    prog = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "?"
    state = {"depth": 0}

    def record(call):
        with open(path, "a") as f:
            f.write(json.dumps({"pid": os.getpid(), "prog": prog, "call": call,
                                "depth": state["depth"]}) + "\n")

    def wrap(cls, name, fn):
        label = "%s.%s" % (cls.__name__, name)
        is_method = getattr(fn, "is_method", lambda: True)()

        def traced(*args, **kwargs):
            record(label)
            result = fn(*args, **kwargs)
            if name == "undo_group_start":
                state["depth"] += 1
            elif name == "undo_group_end":
                state["depth"] -= 1
            return result

        traced.__name__ = name
        setattr(cls, name, traced if is_method else staticmethod(traced))

    classes = [Gimp.Image, Gimp.Item, Gimp.Drawable, Gimp.Layer, Gimp.Channel, Gimp.Path,
               Gimp.Selection]
    for cls in classes:
        for name, fn in list(vars(cls).items()):
            if name.startswith(_PREFIXES) and callable(fn):
                wrap(cls, name, fn)
    wrap(Gegl.Buffer, "set", vars(Gegl.Buffer)["set"])


if _TRACE:
    try:
        _install(_TRACE)
    except Exception as exc:  # never break the host's Python because of the tracer
        with open(_TRACE, "a") as f:
            f.write(json.dumps({"pid": os.getpid(), "error": repr(exc)}) + "\n")

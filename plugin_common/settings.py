"""Constants and drag settings shared by both plug-ins."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict

# The protocol's own default (dragd.protocol.DEFAULT_ENDPOINT; a test keeps them equal), repeated
# here because the plug-ins' settings must import without pyzmq to say that it is missing.
DEFAULT_ENDPOINT = "tcp://127.0.0.1:5557"
START_COMMAND = "dragd serve"
PREVIEW_LAYER_NAME = "DragGAN preview (temporary)"

#: Nothing at all from the daemon for this long (hello unanswered, or no reply to the
#: client's pings while a job runs) counts as "the daemon is gone".
CONNECT_TIMEOUT = 5.0
#: After a stop/cancel request, how long the daemon may take to hand back the drag.
STOP_GRACE = 20.0
#: How long to wait for close_session at the end (best effort).
CLOSE_TIMEOUT = 2.0

#: Inversion qualities: the daemon owns what each means (daemon/edit/inversion.py PRESETS).
INVERSION_QUALITIES = ("fast", "balanced", "quality")
SPACES = ("w+", "w")
#: How the drag's result goes back into the layer (docs/PROTOCOL.md drag params ``paste``):
#: "detail" warps the layer's own pixels along the generator's correspondence, "resample"
#: scales the generated crop up. Detail is the default: on a photo it keeps the photo's
#: sharpness, where the model's resolution would blur it (docs/GIMP.md has the figures).
PASTE_MODES = ("detail", "resample")
#: The drag's rules (docs/PROTOCOL.md drag params ``method``); the first is the daemon's default.
METHODS = ("dragd", "draggan", "freedrag")
#: Face alignment (docs/PROTOCOL.md open_session ``align``): "auto" aligns the face when the
#: model wants it (the FFHQ models), "none" edits the selection's square as it is.
ALIGN_MODES = ("auto", "none")
#: The switch's name in both hosts' UIs, which the daemon's refusals are reworded to name.
ALIGN_SWITCH = "Face alignment"


@dataclass
class BaseDragSettings:
    """The fields of a drag both hosts edit. ``learning_rate`` 0 = the model's default.
    Each plug-in subclasses it with its own validation and persistence."""

    model: str = ""
    max_steps: int = 300
    learning_rate: float = 0.0
    lambda_mask: float = 20.0
    space: str = "w+"
    method: str = METHODS[0]
    inversion: str = "balanced"
    endpoint: str = DEFAULT_ENDPOINT
    live_preview: bool = True
    preview_every: int = 2
    preview_max_size: int = 256
    paste: str = "detail"
    align: str = ALIGN_MODES[0]

    def invert_fields(self) -> Dict[str, Any]:
        return {"method": "pti", "quality": self.inversion}

    def drag_params(self) -> Dict[str, Any]:
        return {
            "max_steps": int(self.max_steps),
            "lr": float(self.learning_rate) if self.learning_rate > 0 else None,
            "lambda_mask": float(self.lambda_mask),
            "space": self.space,
            "method": self.method,
            "preview_every": int(self.preview_every) if self.live_preview else 0,
            "preview_max_size": int(self.preview_max_size),
            "paste": self.paste,
        }

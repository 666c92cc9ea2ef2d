"""Checking the daemon's ``hello`` answer before a run: its limits, its models, whether
the request fits. Imports the protocol (and so pyzmq): :mod:`.task` imports it, the hosts'
models do not."""
from __future__ import annotations

from typing import Any, Dict, Tuple

from ..protocol import Limits
from .errors import UserError
from .messages import TOO_MANY_POINTS


def accept_hello(client: Any, fields: Dict[str, Any], *, model: str, endpoint: str,
                 n_points: int, size: Tuple[int, int],
                 too_many_points: str = TOO_MANY_POINTS,
                 scale_what: str = "layer") -> None:
    """Take the daemon's limits from ``hello`` into ``client.limits`` (unreadable ones
    keep the client's), then raise UserError when the daemon lacks ``model`` (or has no
    model at all while none is asked for), when there are more points than it takes
    (``too_many_points`` % (points, most)), or when the layer ``size`` (w, h) is larger
    than it accepts (the advice names ``scale_what``)."""
    try:
        client.limits = Limits.from_dict(fields.get("limits") or {})
    except (TypeError, ValueError):
        pass
    models = list(fields.get("models") or [])
    if model and models and model not in models:
        raise UserError("The daemon at %s has no model %r. Its models: %s. (Leave the model "
                        "empty to use the one it has loaded.)"
                        % (endpoint, model, ", ".join(models)))
    if not model and not fields.get("loaded_model") and not models:
        raise UserError("The daemon at %s has no model. Install or load one: 'dragd models "
                        "list' names the known ones, 'dragd models fetch NAME' downloads one, "
                        "and 'dragd serve --model NAME' starts the daemon with it." % endpoint)
    lim = client.limits
    if n_points > lim.max_points:
        raise UserError(too_many_points % (n_points, lim.max_points))
    w, h = size
    if w > lim.max_side or h > lim.max_side or w * h > lim.max_pixels:
        raise UserError("The layer is %dx%d; the daemon accepts at most %d pixels a side "
                        "and %d pixels in all. Scale the %s down or crop it."
                        % (w, h, lim.max_side, lim.max_pixels, scale_what))

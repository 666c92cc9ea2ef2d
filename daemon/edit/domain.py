"""Can the model represent this picture? A verdict from the pivot inversion, before tuning.

Pivotal tuning fits the generator's weights to almost any picture, so the tuned result says
little; the pivot (the best latent for the untouched model) says whether the picture lies in
the model's domain. Below the threshold the drag would move a smeared blob: the user is told
before waiting for one.

The threshold is a PSNR measured with `benchmarks/bench_domain.py` on the embedded default
model: its own domain (lab/portraits.py renders of seeds it never trained on) against the
photos scikit-image ships. A model may carry its own in its metadata (`domain_psnr`).
"""
from __future__ import annotations

from ..model.registry import REGISTRY
from .inversion import Inversion

#: dB; see the module doc (bench_domain.py: renders ≥ ..., photos ≤ ...).
DEFAULT_THRESHOLD_PSNR = 18.0


def threshold(model_info: dict) -> float:
    try:
        return float(model_info["domain_psnr"])
    except (KeyError, TypeError, ValueError):
        return DEFAULT_THRESHOLD_PSNR


def assess(inv: Inversion, model_info: dict, model_name: str) -> dict:
    """The `domain` info of open_session: verdict "good" | "poor", the pivot's PSNR and
    perceptual distance, the threshold, and when poor a sentence for the user."""
    limit = threshold(model_info)
    psnr, perceptual = float(inv.pivot.psnr), float(inv.pivot.perceptual)
    out = {"verdict": "good" if psnr >= limit else "poor", "psnr": round(psnr, 2),
           "perceptual": round(perceptual, 4), "perceptual_backend": inv.perceptual_backend,
           "threshold_psnr": limit}
    if out["verdict"] == "poor":
        others = ", ".join(f"{e.name} ({e.description.split(',')[0]})" for e in REGISTRY.values())
        out["message"] = (f"the model {model_name} cannot represent this picture: it reconstructs it at "
                          f"{psnr:.1f} dB PSNR, below the {limit:.1f} dB pictures of its own kind reach, so a "
                          f"drag would move a smeared copy; use a model made for such pictures "
                          f"(`dragd models list`: {others})")
    return out

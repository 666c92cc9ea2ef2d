"""Can the model represent this picture? A verdict from the pivot inversion, before tuning.

Pivotal tuning fits the generator's weights to almost any picture, so the tuned result says
little; the pivot (the best latent for the untouched model) says whether the picture lies in
the model's domain. Plain PSNR cannot tell: a flat, low-contrast photo (the moon, a clock)
reconstructs at a higher PSNR than the model's own portraits. What separates them is the error
against the picture's own contrast — ``contrast_snr`` = 10·log10(variance / MSE), the share of
the picture the model explains — and, for the embedded model, the perceptual distance the
inversion optimised (its discriminator's features: a scale of its own, so other models use it
only with a `domain_perceptual` of their own in their metadata).

Thresholds from `benchmarks/bench_domain.py` on the embedded default model (balanced pivot):
20 lab/portraits.py renders of seeds it never trained on have PSNR 18.3–24.3 dB, contrast SNR
3.88–6.81 dB and perceptual 0.074–0.172; 22 scikit-image photos and crops have PSNR 11.4–24.3
dB (no PSNR threshold separates them), contrast SNR −4.1–11.3 dB (17 below 3.7) and perceptual
0.034–0.583. The verdict gets all 20 renders and 20 of the 22 photos right; the two it calls
in-domain are flat enough for the model to draw them: the scanned `page` (4.09 dB, 0.137) and a
dark crop of `retina` (11.28 dB, 0.034). A model may carry its own thresholds (`domain_snr`,
`domain_perceptual`).
"""
from __future__ import annotations

import math

from ..model.registry import REGISTRY
from .image_prep import PreparedTarget
from .inversion import Inversion

#: dB of contrast SNR (module doc).
DEFAULT_THRESHOLD_SNR = 3.7
#: The embedded model's discriminator-feature distance (module doc).
DEFAULT_THRESHOLD_PERCEPTUAL = 0.185


def _number(info: dict, key: str) -> float | None:
    try:
        return float(info[key])
    except (KeyError, TypeError, ValueError):
        return None


def contrast_snr(psnr: float, prepared: PreparedTarget) -> float:
    """10·log10(variance / MSE) of the target (weighted, [0, 1] scale), from the PSNR (peak 1)."""
    t = (prepared.target.float() + 1) / 2
    w = prepared.weight.float().expand_as(t[:, :1]).expand_as(t)
    mean = (t * w).sum() / w.sum().clamp_min(1e-12)
    var = float(((t - mean) ** 2 * w).sum() / w.sum().clamp_min(1e-12))
    return psnr + 10 * math.log10(max(var, 1e-12))


def assess(inv: Inversion, prepared: PreparedTarget, model_info: dict, model_name: str) -> dict:
    """The `domain` info of open_session: verdict "good" | "poor", the pivot's PSNR, contrast
    SNR and perceptual distance, the thresholds, and when poor a sentence for the user."""
    psnr, perceptual = float(inv.pivot.psnr), float(inv.pivot.perceptual)
    snr = contrast_snr(psnr, prepared)
    snr_limit = _number(model_info, "domain_snr") or DEFAULT_THRESHOLD_SNR
    perc_limit = _number(model_info, "domain_perceptual")
    if perc_limit is None and model_name == "default" and inv.perceptual_backend == "discriminator":
        perc_limit = DEFAULT_THRESHOLD_PERCEPTUAL
    good = snr >= snr_limit and (perc_limit is None or perceptual <= perc_limit)
    out = {"verdict": "good" if good else "poor", "psnr": round(psnr, 2), "contrast_snr": round(snr, 2),
           "perceptual": round(perceptual, 4), "perceptual_backend": inv.perceptual_backend,
           "threshold_snr": snr_limit, "threshold_perceptual": perc_limit}
    if not good:
        why = (f"it explains only {snr:.1f} dB of the picture's contrast (pictures of its own kind: ≥ "
               f"{snr_limit:.1f} dB)" if snr < snr_limit else
               f"its perceptual distance is {perceptual:.3f} (pictures of its own kind: ≤ {perc_limit:.3f})")
        others = ", ".join(f"{e.name} ({e.description.split(',')[0]})" for e in REGISTRY.values())
        out["message"] = (f"the model {model_name} cannot represent this picture: {why}, so a drag would "
                          f"move a smeared copy of it; use a model made for such pictures "
                          f"(`dragd models list`: {others})")
    return out

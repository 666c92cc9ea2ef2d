"""Face detection and landmarks (dlib, the `faces` extra) on real photos scikit-image ships."""
from __future__ import annotations

import sys

import numpy as np
import pytest

from dragd.daemon.edit import faces

pytest.importorskip("dlib", reason="the faces extra: pip install 'dragd[faces]'")
skdata = pytest.importorskip("skimage.data", reason="scikit-image (the test extra) ships the photos")

# The astronaut's pupils (pixel indices), read off a 4× enlargement of the 512×512 photo.
LEFT_EYE, RIGHT_EYE = (202.5, 101.0), (246.0, 102.5)


def test_landmarks_sit_on_the_astronauts_eyes():
    found = faces.detect_faces(skdata.astronaut())
    assert found, "no face found in the astronaut portrait"
    lm = found[0].landmarks
    assert lm.shape == (68, 2)
    assert np.hypot(*(lm[36:42].mean(axis=0) - LEFT_EYE)) < 4
    assert np.hypot(*(lm[42:48].mean(axis=0) - RIGHT_EYE)) < 4
    x0, y0, x1, y1 = found[0].box
    assert x0 < LEFT_EYE[0] < x1 and y0 < LEFT_EYE[1] < y1


def test_the_cat_has_no_human_face():
    assert faces.detect_faces(skdata.chelsea()) == []


def test_without_the_extra_the_message_names_it_and_the_way_round(monkeypatch):
    faces._models.cache_clear()
    monkeypatch.setitem(sys.modules, "dlib", None)          # import dlib → ImportError
    try:
        with pytest.raises(faces.FacesUnavailable) as err:
            faces.detect_faces(skdata.astronaut())
        assert "pip install 'dragd[faces]'" in str(err.value)
        assert "alignment off" in str(err.value)
        assert not faces.available()
    finally:
        monkeypatch.undo()
        faces._models.cache_clear()


def test_predictor_is_found_without_importing_its_package():
    assert faces.predictor_path().endswith(faces.PREDICTOR_FILE)
    assert "face_recognition_models" not in sys.modules

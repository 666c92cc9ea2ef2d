"""FFHQ alignment and de-aligned paste-back on real photos (scikit-image's astronaut and cat)."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from dragd.daemon.edit import align, faces

pytest.importorskip("dlib", reason="the faces extra: pip install 'dragd[faces]'")
skdata = pytest.importorskip("skimage.data", reason="scikit-image (the test extra) ships the photos")

R = 256


def psnr(a, b) -> float:
    d = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    return float(10 * np.log10(255.0 ** 2 / max(np.mean(d ** 2), 1e-12)))


@pytest.fixture(scope="module")
def astronaut():
    return skdata.astronaut()


@pytest.fixture(scope="module")
def geo(astronaut):
    return align.locate(astronaut, R)


def pixel_centres(h, w):
    yy, xx = np.mgrid[:h, :w]
    return np.stack([xx + 0.5, yy + 0.5], axis=-1)


@pytest.mark.parametrize("angle", [15, -15])
@pytest.mark.parametrize("size, place", [(700, (1100, 700)), (1200, (700, 150))])
def test_alignment_undoes_scale_rotation_and_placement(astronaut, geo, angle, size, place):
    """Off-centre on a larger canvas, enlarged 1.4× and 2.3× (2.3× at −15° gives 25 dB
    without the landmarks' refinement on the aligned crop)."""
    ref = align.align_image(astronaut, geo)
    big = Image.fromarray(astronaut).resize((size, size), Image.Resampling.LANCZOS)
    big = big.rotate(angle, Image.Resampling.BICUBIC, expand=True, fillcolor=(128, 128, 128))
    canvas = Image.new("RGB", (2000, 1600), (40, 60, 80))
    canvas.paste(big, place)
    photo = np.asarray(canvas)
    moved = align.align_image(photo, align.locate(photo, R))
    assert psnr(moved, ref) >= 30


def test_de_align_of_an_untouched_crop_gives_the_photo_back(astronaut, geo):
    back = align.paste_aligned(astronaut, align.align_image(astronaut, geo), geo)
    inside = geo.contains(pixel_centres(*astronaut.shape[:2]))
    assert inside.sum() > 0.9 * geo.side ** 2
    assert psnr(back[inside], astronaut[inside]) >= 35
    assert np.array_equal(back[~inside], astronaut[~inside])


def test_alpha_and_everything_outside_the_square_are_untouched(astronaut, geo):
    rgba = np.dstack([astronaut, np.arange(512 * 512, dtype=np.uint32).reshape(512, 512) % 251]).astype(np.uint8)
    edited = np.full((R, R, 3), 7, dtype=np.uint8)
    out = align.paste_aligned(rgba, edited, geo)
    inside = geo.contains(pixel_centres(512, 512))
    assert np.array_equal(out[..., 3], rgba[..., 3])
    assert np.array_equal(out[~inside], rgba[~inside])
    deep = align.square_weight(geo.to_aligned(pixel_centres(512, 512)), geo, 0.05 * geo.side) >= 1
    assert (out[deep][:, :3] == 7).all()


def test_selection_limits_the_paste(astronaut, geo):
    sel = np.zeros((512, 512), dtype=np.uint8)
    sel[100:160, 180:270] = 255
    out = align.paste_aligned(astronaut, np.zeros((R, R, 3), np.uint8), geo, mask=sel)
    changed = (out != astronaut).any(-1)
    assert changed[100:160, 180:270].any()
    changed[100:160, 180:270] = False
    assert not changed.any()


def test_left_eye_lands_where_the_recipe_puts_it(astronaut, geo):
    lm = align.refine(astronaut, faces.detect_faces(astronaut)[0]).landmarks
    eye_left, eye_right = lm[36:42].mean(0), lm[42:48].mean(0)
    eye_avg = (eye_left + eye_right) / 2
    mouth = (lm[48] + lm[54]) / 2
    # The recipe's frame: centre eye_avg + 0.1·eye_to_mouth, axes x and y of half-length s.
    e2e, e2m = eye_right - eye_left, mouth - eye_avg
    x = e2e - np.flipud(e2m) * [-1, 1]
    x = x / np.hypot(*x) * max(2.0 * np.hypot(*e2e), 1.8 * np.hypot(*e2m))
    y = np.flipud(x) * [-1, 1]
    c = eye_avg + 0.1 * e2m
    rel = eye_left - c
    half = np.hypot(*x)
    expected = R / 2 + R / 2 * np.array([rel @ x, rel @ y]) / half ** 2 - 0.5   # aligned pixel index
    got = geo.layer_to_gen(eye_left)
    assert np.hypot(*(got - expected)) <= 1.0
    # And the pixels agree: the landmarks found on the aligned crop put the eye there too.
    on_crop = faces.detect_faces(align.align_image(astronaut, geo))[0].landmarks[36:42].mean(0)
    assert np.hypot(*(on_crop - got)) <= 1.5


def test_points_round_trip(geo):
    pts = np.array([[10.0, 20.0], [250.5, 130.25], [400.0, 7.0]])
    assert np.allclose(geo.gen_to_layer(geo.layer_to_gen(pts)), pts)


def test_the_cat_is_not_a_face():
    with pytest.raises(align.AlignError) as err:
        align.locate(skdata.chelsea(), R)
    msg = str(err.value)
    assert "no face found" in msg and "alignment off" in msg


def test_a_selection_away_from_the_face_is_a_clear_error(astronaut):
    with pytest.raises(align.AlignError) as err:
        align.locate(astronaut, R, roi=(400, 400, 500, 500))
    assert "select the face" in str(err.value)


def test_padding_where_the_square_leaves_the_photo(astronaut):
    corner = np.ascontiguousarray(astronaut[50:300, 100:360])   # the square leaves it at the top
    g = align.locate(corner, R)
    assert g.padded
    crop = align.align_image(corner, g)
    rows = g.layer_to_gen(np.array([[130.0, -20.0], [130.0, 40.0]]))[:, 1].round().astype(int)
    made_up, photo = crop[rows[0]].astype(float), crop[rows[1]].astype(float)
    # Above the photo: mirrored, blurred and faded towards the median, so far smoother.
    assert np.abs(np.diff(made_up, axis=0)).mean() < 0.5 * np.abs(np.diff(photo, axis=0)).mean()
    back = align.paste_aligned(corner, crop, g)
    inside = g.contains(pixel_centres(*corner.shape[:2]))
    assert np.array_equal(back[~inside], corner[~inside])


# ---------------------------------------------------------------------------------------------
# Through a real daemon


@pytest.fixture(scope="module")
def ffhq_model(tmp_path_factory):
    """An FFHQ-architecture generator (8 mapping layers, random weights, small channels) whose
    metadata says `align: ffhq`, as an FFHQ model's does."""
    import torch

    from dragd.daemon.model.checkpoints import save_native
    from dragd.daemon.model.stylegan2 import Generator

    torch.manual_seed(0)
    G = Generator(resolution=64, z_dim=32, w_dim=32, channel_base=1024, channel_max=32, mapping_layers=8).eval()
    path = tmp_path_factory.mktemp("ffhq") / "tiny-ffhq.safetensors"
    save_native(path, G, None, info={"source": "tests/test_align.py", "align": "ffhq"}, dtype=torch.float32)
    return path


@pytest.fixture(scope="module")
def ffhq_daemon(ffhq_model, tmp_path_factory):
    from daemon_fixture import start_daemon

    d = start_daemon(ffhq_model, tmp_path_factory.mktemp("daemon"))
    yield d
    d.stop()


def _image(arr):
    from dragd.protocol.image import Image as WireImage
    h, w, c = arr.shape
    return WireImage(np.ascontiguousarray(arr).tobytes(), w, h, c)


FAST = {"method": "w", "w_steps": 2}


def test_a_drag_on_the_aligned_astronaut_keeps_everything_outside_the_face(ffhq_daemon, astronaut):
    from dragd.protocol.client import Client

    with Client(ffhq_daemon.endpoint, timeout=120) as c:
        s = c.open_session(_image(astronaut), invert=FAST)
        info = s.info["info"]
        assert info["align"] == "ffhq", info
        assert info["domain"]["verdict"] in ("good", "poor") and "contrast_snr" in info["domain"]
        quad = np.array(info["align_quad"])
        centre = quad.mean(axis=0)
        previews = []
        results = [c.drag(s, [(tuple(centre), tuple(centre + [4.0, 2.0]))], max_steps=3, paste=paste,
                          preview_every=1, progress=lambda ev: previews.extend(ev.images.values()))
                   for paste in ("resample", "detail")]
    # Previews show the face's bounding box, the de-aligned generated pixels in it.
    box = align.AlignedGeometry(512, 512, tuple(map(tuple, np.array(info["align_quad"]))), 64).valid
    assert previews and all(max(p.width, p.height) == min(256, max(box[2] - box[0], box[3] - box[1]))
                            for p in previews)
    geo = align.AlignedGeometry(512, 512, tuple(map(tuple, quad)), 64)
    inside = geo.contains(pixel_centres(512, 512))
    for r in results:
        out = np.frombuffer(r.image.data, np.uint8).reshape(r.image.height, r.image.width, r.image.channels)
        assert out.shape == astronaut.shape
        assert np.array_equal(out[~inside], astronaut[~inside])
        assert not np.array_equal(out[inside], astronaut[inside])


def test_no_face_is_a_clear_error_and_alignment_off_still_edits(ffhq_daemon):
    from dragd.protocol.client import Client, RemoteError

    cat = skdata.chelsea()
    with Client(ffhq_daemon.endpoint, timeout=120) as c:
        with pytest.raises(RemoteError) as err:
            c.open_session(_image(cat), invert=FAST)
        assert err.value.code == "bad_value"
        assert "no face found" in err.value.message and "alignment off" in err.value.message
        s = c.open_session(_image(cat), invert=FAST, align="none")
        assert s.info["info"]["align"] == "none"
        with pytest.raises(RemoteError) as err:                 # a handle off the aligned face
            s2 = c.open_session(_image(skdata.astronaut()), invert=FAST, align="ffhq")
            c.drag(s2, [((500.0, 500.0), (505.0, 500.0))], max_steps=2)
        assert err.value.code == "bad_points"
        assert "outside the aligned square" in err.value.message


def test_dragd_align_writes_the_crop_and_prints_the_quad(tmp_path, astronaut, capsys):
    from dragd.daemon.cli import main

    src, out = tmp_path / "astronaut.png", tmp_path / "aligned.png"
    Image.fromarray(astronaut).save(src)
    assert main(["align", str(src), str(out), "--size", "128"]) == 0
    printed = capsys.readouterr().out
    with Image.open(out) as im:
        assert im.size == (128, 128)
    corners = [line.split() for line in printed.splitlines()[1:]]
    assert [c[0] for c in corners] == ["top-left", "bottom-left", "bottom-right", "top-right"]
    quad = np.array([[float(c[1]), float(c[2])] for c in corners])
    assert np.allclose(quad, align.locate(astronaut, 128).quad, atol=0.01)


def test_dragd_align_on_the_cat_says_why(tmp_path, capsys):
    from dragd.daemon.cli import main

    src = tmp_path / "cat.png"
    Image.fromarray(skdata.chelsea()).save(src)
    assert main(["align", str(src), str(tmp_path / "out.png")]) == 2
    assert "no face found" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# The domain check


def _inversion(psnr, perceptual=0.1):
    from types import SimpleNamespace
    return SimpleNamespace(pivot=SimpleNamespace(psnr=psnr, perceptual=perceptual),
                           perceptual_backend="discriminator")


def _target(std):
    """A prepared target whose [0, 1] values have this standard deviation."""
    import torch
    from types import SimpleNamespace
    t = torch.full((1, 3, 8, 8), 0.5)
    t[..., ::2] += std
    t[..., 1::2] -= std
    return SimpleNamespace(target=t * 2 - 1, weight=torch.ones(1, 1, 8, 8))


def test_domain_verdict_is_relative_to_the_pictures_contrast():
    from dragd.daemon.edit import domain

    limit = domain.DEFAULT_THRESHOLD_SNR
    # Contrast variance 0.01 (−20 dB): a PSNR of 20 + limit explains just enough.
    good = domain.assess(_inversion(20 + limit + 0.5), _target(0.1), {}, "default")
    assert good["verdict"] == "good" and "message" not in good, good
    assert good["contrast_snr"] == pytest.approx(limit + 0.5, abs=0.01)
    flat = domain.assess(_inversion(20 + limit + 0.5), _target(0.03), {}, "default")   # same PSNR, flat
    assert flat["verdict"] == "poor"
    assert "cannot represent this picture" in flat["message"] and "stylegan2-ffhq-512x512" in flat["message"]
    smeared = domain.assess(_inversion(30, perceptual=0.5), _target(0.1), {}, "default")
    assert smeared["verdict"] == "poor" and "perceptual distance" in smeared["message"]
    # Another model's discriminator has its own scale: no perceptual threshold unless it brings one.
    assert domain.assess(_inversion(30, perceptual=0.5), _target(0.1), {}, "m")["verdict"] == "good"
    assert domain.assess(_inversion(30, perceptual=0.5), _target(0.1), {"domain_perceptual": "0.4"},
                         "m")["verdict"] == "poor"


def test_the_registry_marks_ffhq_for_alignment():
    from dragd.daemon.model import registry

    assert registry.alignment_of("stylegan2-ffhq-512x512") == "ffhq"
    assert registry.alignment_of("/data/x", "/models/stylegan2-ffhq-512x512.pkl") == "ffhq"
    assert registry.alignment_of("stylegan2-afhqcat-512x512") is None
    assert align.resolve("auto", {"align": "ffhq"}) == "ffhq"
    assert align.resolve("none", {"align": "ffhq"}) == "none"
    assert align.resolve("auto", {}) == "none"
    with pytest.raises(ValueError):
        align.resolve("sideways", {})


def test_dragd_edit_says_the_face_was_aligned_and_the_verdict(ffhq_daemon, tmp_path, astronaut, capsys):
    from dragd.daemon.cli import main

    src, out = tmp_path / "astronaut.png", tmp_path / "out.png"
    Image.fromarray(astronaut).save(src)
    assert main(["edit", str(src), "--drag", "225,140:229,142", "-o", str(out), "--connect", ffhq_daemon.endpoint,
                 "--quality", "fast", "--steps", "2"]) == 0
    err = capsys.readouterr().err
    assert "face found, aligned (FFHQ)" in err
    assert "reconstruction: poor" in err and "cannot represent this picture" in err    # random weights


def test_detail_paste_through_the_alignment_keeps_the_photos_own_pixels(astronaut, geo):
    """An edit that moved nothing (edited = reconstruction, identity correspondence) gives the
    photo back through the detail path, its grain included, whatever the generated pixels."""
    import torch

    from dragd.daemon.edit.pasteback import Correspondence

    h = w = 32
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij")
    corr = Correspondence(torch.stack([xs, ys], -1), torch.zeros(h, w), torch.ones(h, w, dtype=torch.bool))
    blurred = np.asarray(Image.fromarray(align.align_image(astronaut, geo)).resize((32, 32)).resize((R, R)))
    out = align.paste_aligned(astronaut, blurred, geo, mode="detail", correspondence=corr, reconstruction=blurred)
    inside = geo.contains(pixel_centres(512, 512))
    assert psnr(out[inside], astronaut[inside]) >= 45
    resampled = align.paste_aligned(astronaut, blurred, geo)
    assert psnr(resampled[inside], astronaut[inside]) < 30          # the generated pixels alone are blurred


def test_converting_an_ffhq_pickle_keeps_its_alignment(tmp_path):
    import torch

    import nvidia_fixtures as nf
    from dragd.daemon.cli import main
    from dragd.daemon.model.checkpoints import load_checkpoint
    from dragd.daemon.model.stylegan2 import Generator

    torch.manual_seed(0)
    G = Generator(resolution=16, z_dim=8, w_dim=8, channel_base=256, channel_max=16, mapping_layers=2).eval()
    src = tmp_path / "stylegan2-ffhq-512x512.pkl"
    src.write_bytes(nf.network_pickle_bytes(G, None))
    out = tmp_path / "ffhq.safetensors"
    assert main(["models", "convert", str(src), str(out)]) == 0
    assert load_checkpoint(out).info["align"] == "ffhq"
    other = tmp_path / "other.pkl"
    other.write_bytes(nf.network_pickle_bytes(G, None))
    assert main(["models", "convert", str(other), str(tmp_path / "other.safetensors")]) == 0
    assert "align" not in load_checkpoint(tmp_path / "other.safetensors").info

"""Paste-back of an edited crop into the full-resolution layer, plain and detail-preserving."""
import numpy as np
import pytest
import torch
from PIL import Image, ImageFilter

from dragd.daemon.edit import pasteback as pb
from dragd.daemon.edit.image_prep import LayerError, prepare_target




def random_layer(h, w, c=3, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, c), dtype=np.uint8)


def smooth_layer(h, w, seed=0):
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(small).resize((w, h), Image.Resampling.BICUBIC))


def test_pixels_outside_the_mask_are_bit_identical():
    layer = random_layer(200, 300)
    prep = prepare_target(layer, 32, roi=(100, 50, 180, 130))
    edited = torch.rand(1, 3, 32, 32) * 2 - 1
    mask = np.zeros((200, 300), np.uint8)
    mask[70:120, 110:170] = 255
    out = pb.paste_back(layer, edited, prep.geometry, mask=mask, feather=6)
    assert out.shape == layer.shape and out.dtype == np.uint8
    outside = mask == 0
    assert np.array_equal(out[outside], layer[outside])
    inner = np.zeros_like(outside)
    inner[80:110, 120:160] = True                        # deeper than the feather radius
    assert (out[inner] != layer[inner]).mean() > 0.9
    # The feather blends: a pixel just inside the mask edge lies between original and edit.
    full = pb.paste_back(layer, edited, prep.geometry, mask=mask, feather=0)
    edge = (slice(71, 72), slice(120, 160))
    d_feather = np.abs(out[edge].astype(int) - layer[edge]).mean()
    d_full = np.abs(full[edge].astype(int) - layer[edge]).mean()
    assert d_feather < 0.5 * d_full
    # A mask at generator resolution works too, and nothing outside the crop box changes.
    mask_gen = np.zeros((32, 32), bool)
    mask_gen[8:24, 8:24] = True
    out2 = pb.paste_back(layer, edited, prep.geometry, mask_gen=mask_gen)
    x0, y0, x1, y1 = prep.geometry.valid
    keep = np.ones((200, 300), bool)
    keep[y0:y1, x0:x1] = False
    assert np.array_equal(out2[keep], layer[keep])


def test_large_layer_round_trip_size_and_offset():
    layer = smooth_layer(2000, 3000)
    roi = (2000, 500, 2600, 1100)
    prep = prepare_target(layer, 64, roi=roi)
    geo = prep.geometry
    assert geo.box == (1940, 440, 2660, 1160)            # 600 px × 1.2, centred
    # Unedited: the round trip stays close to the original (smooth layer) and only the box changes.
    out = pb.paste_back(layer, prep.target, geo, feather=0)
    assert out.shape == (2000, 3000, 3)
    keep = np.ones((2000, 3000), bool)
    keep[440:1160, 1940:2660] = False
    assert np.array_equal(out[keep], layer[keep])
    err = np.abs(out[440:1160, 1940:2660].astype(int) - layer[440:1160, 1940:2660]).mean()
    assert err < 3
    # A white marker at generator pixels [16, 24) × [40, 48) lands at the mapped layer position.
    edited = prep.target.clone()
    edited[:, :, 16:24, 40:48] = 1.0
    out = pb.paste_back(layer, edited, geo, feather=0)
    # Pixels more than half-way to white (Lanczos makes the edge a ramp of about one generator pixel).
    lum, base = out.astype(float).mean(-1), layer.astype(float).mean(-1)
    ys, xs = np.nonzero(lum - base > 0.5 * (255 - base) + 5)
    # Generator pixel u covers layer coordinates [gen_to_layer(u − ½), gen_to_layer(u + ½)] (centres
    # at integers), so the marker's first layer pixel is that edge + ½.
    (lx0, ly0), (lx1, ly1) = geo.gen_to_layer([[40 - 0.5, 16 - 0.5], [48 - 0.5, 24 - 0.5]]) + 0.5
    assert abs(xs.min() - lx0) <= 2 and abs(xs.max() + 1 - lx1) <= 2
    assert abs(ys.min() - ly0) <= 2 and abs(ys.max() + 1 - ly1) <= 2


def test_rgba_alpha_preserved_and_border_crop():
    layer = random_layer(120, 90, 4, seed=1)
    prep = prepare_target(layer, 32)               # whole non-square layer: padded square box
    assert prep.geometry.padded
    edited = torch.zeros(1, 3, 32, 32)
    out = pb.paste_back(layer, edited, prep.geometry)
    assert out.shape == layer.shape
    assert np.array_equal(out[..., 3], layer[..., 3])
    # No feather along the image border: the corner pixel is fully replaced.
    assert np.all(np.abs(out[0, 0, :3].astype(int) - 128) <= 2)


def test_grayscale_layer_keeps_its_shape():
    layer = random_layer(64, 64, 1, seed=2)[..., 0]
    prep = prepare_target(layer, 32, roi=(10, 10, 40, 40))
    out = pb.paste_back(layer, prep.target, prep.geometry, mask_gen=np.pad(np.ones((8, 8)), 12))
    assert out.shape == layer.shape and out.dtype == np.uint8


def test_paste_back_rejects_mismatches():
    layer = random_layer(50, 50)
    prep = prepare_target(layer, 32)
    with pytest.raises(LayerError):
        pb.paste_back(random_layer(60, 50), prep.target, prep.geometry)
    with pytest.raises(ValueError):
        pb.paste_back(layer, torch.zeros(1, 3, 16, 16), prep.geometry)
    with pytest.raises(ValueError, match="correspondence"):
        pb.paste_back(layer, prep.target, prep.geometry, mode="detail")


# ---------------------------------------------------------------------------------------------
# Detail-preserving mode


def textured_layer(size=512, seed=0):
    """Mid-frequency colour pattern (visible at generator resolution) + fine grain (invisible there)."""
    rng = np.random.default_rng(seed)
    mid = np.asarray(Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8))
                     .resize((size, size), Image.Resampling.BICUBIC), np.float32)
    grain = rng.normal(0, 30, (size, size, 1)).astype(np.float32)
    return np.clip(mid + grain, 0, 255).astype(np.uint8)


def _crop(a, m=48):
    return a[m:-m, m:-m].astype(np.float64)


def _psnr(a, b):
    return 10 * np.log10(255 ** 2 / np.mean((_crop(a) - _crop(b)) ** 2))


def _grain(a):
    """Mean high-frequency energy: |image − Gaussian-blurred image|."""
    blurred = np.asarray(Image.fromarray(a).filter(ImageFilter.GaussianBlur(1.5)))
    return float(np.mean(np.abs(_crop(a) - _crop(blurred))))


@pytest.mark.parametrize("shift", [(24, 16), (13, 7)])   # layer px; 8 layer px = 1 generator px
def test_detail_mode_keeps_texture_that_resampling_blurs(shift):
    layer = textured_layer()
    prep = prepare_target(layer, 64)
    truth = np.roll(layer, shift=(shift[1], shift[0]), axis=(0, 1))
    rec = prep.target                                     # a perfect "reconstruction"
    edited = prepare_target(truth, 64).target             # the same content, moved
    # Features: the images themselves (the generator's features in real use).
    corr = pb.dense_correspondence(edited, rec, radius=5, normalize=False)
    disp = corr.displacement()[8:-8, 8:-8].median(dim=0).values.median(dim=0).values
    np.testing.assert_allclose(disp.numpy(), [-shift[0] / 8, -shift[1] / 8], atol=0.1)
    detail = pb.paste_back(layer, edited, prep.geometry, mode="detail", correspondence=corr,
                           reconstruction=rec, feather=0)
    plain = pb.paste_back(layer, edited, prep.geometry, mode="resample", feather=0)
    g_truth, g_detail, g_plain = _grain(truth), _grain(detail), _grain(plain)
    p_detail, p_plain = _psnr(detail, truth), _psnr(plain, truth)
    print(f"shift {shift}: grain truth {g_truth:.1f} detail {g_detail:.1f} plain {g_plain:.1f}; "
          f"PSNR detail {p_detail:.1f} dB plain {p_plain:.1f} dB")
    assert g_plain < 0.1 * g_truth                        # the 64-px round trip loses the grain
    assert g_detail > 0.7 * g_truth                       # the warp of the original keeps it
    assert p_detail > p_plain
    if shift == (24, 16):                                 # whole generator pixels: exact texture
        assert p_detail > 30 and p_plain < 22


def test_detail_mode_uses_generated_pixels_where_nothing_matches():
    layer = textured_layer(256, seed=3)
    prep = prepare_target(layer, 32)
    rec = prep.target
    edited = rec.clone()
    edited[:, :, 12:20, 12:20] = torch.tensor([1.0, -1.0, 1.0]).view(1, 3, 1, 1)   # new content
    corr = pb.dense_correspondence(edited, rec, radius=3, normalize=False)
    assert not corr.good[13:19, 13:19].any() and corr.good[:6].all()
    out = pb.paste_back(layer, edited, prep.geometry, mode="detail", correspondence=corr,
                        reconstruction=rec, feather=0)
    centre = out[112:144, 112:144].reshape(-1, 3).mean(axis=0)
    assert centre[0] > 230 and centre[1] < 25 and centre[2] > 230
    # Where nothing moved, the original pixels come back unchanged.
    assert np.abs(out[:40].astype(int) - layer[:40]).max() <= 1


def test_generator_correspondence_identity(tiny_generator):
    G = tiny_generator
    w = G.mapping(torch.randn(1, 32))[:, 0]
    corr = pb.generator_correspondence(G, w, w, max_shift_px=2)
    assert corr.good.all()
    assert corr.displacement().abs().max() < 1e-4


def test_detail_mode_with_an_identity_edit_returns_the_original(tiny_generator):
    # Whatever the generator renders, an edit that moves nothing gives back the layer's own
    # full-resolution pixels in detail mode (plain mode gives the 32-px rendering instead).
    G = tiny_generator
    w = G.mapping(torch.randn(1, 32, generator=torch.Generator().manual_seed(1)))[:, 0]
    layer = textured_layer(128, seed=5)
    prep = prepare_target(layer, 32)
    with torch.no_grad():
        img = G.synthesize(w).image
    corr = pb.generator_correspondence(G, w, w, max_shift_px=3)
    detail = pb.paste_back(layer, img, prep.geometry, mode="detail", correspondence=corr, reconstruction=img)
    assert np.abs(detail.astype(int) - layer).max() <= 1
    plain = pb.paste_back(layer, img, prep.geometry)
    assert np.abs(plain.astype(int) - layer).mean() > 10

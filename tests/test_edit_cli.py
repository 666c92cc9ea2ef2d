"""`dragd edit` and the files it reads and writes: masks that are missing or broken, outputs it
cannot write (found before the edit starts), and every Pillow image mode either converted
keeping what the pixels mean or refused with a sentence."""
from __future__ import annotations

import os
import struct
import subprocess
import sys
import zlib

import numpy as np
import pytest
from PIL import Image

from dragd.daemon.cli import edit as E
from dragd.daemon.cli.errors import UserFacingError


def dragd(*args, timeout=180, env=None):
    e = dict(os.environ, OMP_NUM_THREADS="1", **(env or {}))
    return subprocess.run([sys.executable, "-m", "dragd.daemon.cli", *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, env=e)


def write_png16(path, arr):
    """A 16-bit PNG (Pillow writes only 16-bit grayscale): gray, gray+alpha, RGB or RGBA by channels."""
    arr = arr if arr.ndim == 3 else arr[..., None]
    h, w, c = arr.shape
    color_type = {1: 0, 2: 4, 3: 2, 4: 6}[c]
    rows = b"".join(b"\0" + arr[y].astype(">u2").tobytes() for y in range(h))

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, color_type, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))
    return path


W, H = 80, 60
RAMP16 = (np.arange(W * H, dtype=np.int64) * 65535 // (W * H - 1)).reshape(H, W).astype(np.uint16)
RAMP8 = np.arange(W * H).reshape(H, W) % 256
ALPHA = np.tile(np.linspace(0, 255, W).astype(np.uint8), (H, 1))


def to8(v16):
    """What a 16-bit value means in 8 bits: the nearest level."""
    return ((v16.astype(np.int64) * 255 + 32767) // 65535).astype(np.uint8)


def gray_rgb(v):
    return np.repeat(np.asarray(v, np.uint8)[..., None], 3, axis=2)


@pytest.fixture(scope="module")
def photo(tmp_path_factory):
    d = tmp_path_factory.mktemp("photo")
    rng = np.random.default_rng(0)
    Image.fromarray((rng.random((H, W, 3)) * 255).astype(np.uint8)).save(d / "in.png")
    Image.fromarray((rng.random((H, W, 4)) * 255).astype(np.uint8)).save(d / "rgba.png")
    mask = np.zeros((H, W), np.uint8)
    mask[10:50, 20:60] = 255
    Image.fromarray(mask).save(d / "mask.png")
    return d, mask


# ---------------------------------------------------------------------------------------------
# Image modes, converted by the same functions `dragd edit` uses


def _palette_image():
    idx = (np.arange(W * H).reshape(H, W) % 4).astype(np.uint8)
    img = Image.frombytes("P", (W, H), idx.tobytes())
    img.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0, 0, 0, 255] + [0] * (256 - 4) * 3)
    colours = np.array([[0, 0, 0], [255, 0, 0], [0, 255, 0], [0, 0, 255]], np.uint8)
    return img, idx, colours


def _mode_1(tmp):
    bits = (np.arange(W * H).reshape(H, W) % 3 == 0)
    Image.fromarray(bits).save(tmp / "a.png")
    return "1", gray_rgb(bits * 255)


def _mode_L(tmp):
    Image.fromarray(RAMP8.astype(np.uint8)).save(tmp / "a.png")
    return "L", gray_rgb(RAMP8)


def _mode_LA(tmp):
    Image.fromarray(np.stack([RAMP8.astype(np.uint8), ALPHA], -1), "LA").save(tmp / "a.png")
    return "LA", np.dstack([gray_rgb(RAMP8), ALPHA])


def _mode_P(tmp):
    img, idx, colours = _palette_image()
    img.save(tmp / "a.png")
    return "P", colours[idx]


def _mode_P_transparent(tmp):
    img, idx, colours = _palette_image()
    img.save(tmp / "a.png", transparency=0)
    return "P", np.dstack([colours[idx], np.where(idx == 0, 0, 255).astype(np.uint8)])


def _mode_RGBA(tmp):
    rgba = np.dstack([gray_rgb(RAMP8), ALPHA])
    Image.fromarray(rgba).save(tmp / "a.png")
    return "RGBA", rgba


def _mode_gray16_png(tmp):
    write_png16(tmp / "a.png", RAMP16)
    return "I;16", gray_rgb(to8(RAMP16))


def _mode_gray16_pgm(tmp):
    (tmp / "a.png").write_bytes(f"P5 {W} {H} 65535\n".encode() + RAMP16.astype(">u2").tobytes())
    return "I", gray_rgb(to8(RAMP16))


def _mode_gray16_tiff(tmp):
    Image.fromarray(RAMP16).save(tmp / "a.tif")
    return "I;16", gray_rgb(to8(RAMP16))


def _mode_rgb16_png(tmp):
    write_png16(tmp / "a.png", np.dstack([RAMP16, RAMP16[::-1], RAMP16[:, ::-1]]))
    return "RGB", np.dstack([to8(RAMP16), to8(RAMP16[::-1]), to8(RAMP16[:, ::-1])])


def _mode_rgba16_png(tmp):
    a16 = ALPHA.astype(np.uint16) * 257
    write_png16(tmp / "a.png", np.dstack([RAMP16, RAMP16, RAMP16, a16]))
    return "RGBA", np.dstack([gray_rgb(to8(RAMP16)), ALPHA])


def _mode_gray_alpha16_png(tmp):
    write_png16(tmp / "a.png", np.dstack([RAMP16, ALPHA.astype(np.uint16) * 257]))
    return "RGBA", np.dstack([gray_rgb(to8(RAMP16)), ALPHA])


def _mode_CMYK(tmp):
    cmyk = np.zeros((H, W, 4), np.uint8)
    cmyk[:, : W // 2, 0] = 255                 # left half cyan
    cmyk[H // 2:, :, 3] = 128                  # bottom half half black
    Image.fromarray(cmyk, "CMYK").save(tmp / "a.tif")
    r = 255 - np.minimum(255, cmyk[..., 0].astype(int) + cmyk[..., 3])
    g = b = 255 - cmyk[..., 3].astype(int)
    return "CMYK", np.dstack([r, g, b]).astype(np.uint8)


CONVERTED = [_mode_1, _mode_L, _mode_LA, _mode_P, _mode_P_transparent, _mode_RGBA, _mode_gray16_png,
             _mode_gray16_pgm, _mode_gray16_tiff, _mode_rgb16_png, _mode_rgba16_png,
             _mode_gray_alpha16_png, _mode_CMYK]


@pytest.mark.parametrize("make", CONVERTED, ids=[f.__name__[len("_mode_"):] for f in CONVERTED])
def test_image_modes_that_convert_keep_their_meaning(make, tmp_path):
    opened_as, expected = make(tmp_path)
    (path,) = tmp_path.iterdir()
    assert Image.open(path).mode == opened_as            # the case this row stands for
    got = E._layer_pixels(E._read_image(path, "input image"))
    assert got.shape == expected.shape
    # 16-bit RGB(A): Pillow keeps the high byte, at most one level from the nearest.
    assert np.abs(got.astype(int) - expected).max() <= (1 if "16" in make.__name__ else 0)


def test_a_16_bit_mask_is_scaled_not_clipped(tmp_path):
    write_png16(tmp_path / "m.png", RAMP16)
    m = E._read_image(tmp_path / "m.png", "mask").convert("L")
    assert np.array_equal(np.asarray(m), to8(RAMP16))


@pytest.mark.parametrize("mode, words", [
    ("I", "holds 32-bit integers (mode I)"),
    ("F", "holds 32-bit floating-point values (mode F)"),
    ("LAB", "is in CIELab colour (mode LAB)"),
])
def test_image_modes_without_a_faithful_conversion_are_refused(mode, words, tmp_path):
    data = {"I": RAMP16.astype(np.int32), "F": RAMP16.astype(np.float32) / 65535}.get(mode)
    img = Image.fromarray(data) if data is not None else Image.new("LAB", (W, H), (50, 10, 10))
    img.save(tmp_path / "a.tif")
    assert Image.open(tmp_path / "a.tif").mode == mode
    with pytest.raises(UserFacingError, match="save it as an 8- or 16-bit PNG") as err:
        E._read_image(tmp_path / "a.tif", "input image")
    assert words in str(err.value)


# ---------------------------------------------------------------------------------------------
# The command, end to end


def test_a_16_bit_png_is_edited_in_its_real_grey_levels(running_daemon, photo, tmp_path):
    """The issue's case: Pillow's own conversion made 75 % of such an image white."""
    d, mask = photo
    write_png16(tmp_path / "in16.png", RAMP16)
    out = tmp_path / "out.png"
    r = dragd("edit", tmp_path / "in16.png", "--drag", "40,30:44,30", "--mask", d / "mask.png", "-o", out,
              "--steps", "2", "--quality", "fast", "--connect", running_daemon.endpoint)
    assert r.returncode == 0, r.stderr
    res = np.asarray(Image.open(out))
    assert np.array_equal(res[mask == 0], gray_rgb(to8(RAMP16))[mask == 0])
    assert (res == 255).mean() < 0.05


def test_an_image_mode_that_is_refused_says_why(photo, tmp_path):
    Image.fromarray(RAMP16.astype(np.float32)).save(tmp_path / "f.tif")
    r = dragd("edit", tmp_path / "f.tif", "--drag", "40,30:44,30", "-o", tmp_path / "o.png",
              "--connect", "tcp://127.0.0.1:9")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "32-bit floating-point values (mode F), which have no fixed black and white level" in r.stderr


def _broken_mask(d, tmp):
    (tmp / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(200))
    return tmp / "broken.png"


@pytest.mark.parametrize("make, words", [
    (lambda d, tmp: tmp / "nowhere.png", "mask {} does not exist"),
    (_broken_mask, "cannot read mask {} as an image"),
], ids=["missing", "corrupt"])
def test_a_missing_or_corrupt_mask_is_a_sentence(photo, tmp_path, make, words):
    d, _ = photo
    mask = make(d, tmp_path)
    r = dragd("edit", d / "in.png", "--drag", "40,30:44,30", "--mask", mask, "-o", tmp_path / "o.png",
              "--connect", "tcp://127.0.0.1:9")
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert words.format(mask) in r.stderr


def _unwritable_outputs(d, tmp):
    (tmp / "a-file").write_text("x")
    (tmp / "a-folder.png").mkdir()
    return {
        "xyz": (["-o", tmp / "out.xyz"], "output {t}/out.xyz: cannot write .xyz files"),
        "no-extension": (["-o", tmp / "out"], "cannot write a file without an extension"),
        "folder": (["-o", tmp / "a-folder.png"], "output {t}/a-folder.png is a folder"),
        "parent-is-a-file": (["-o", tmp / "a-file" / "out.png"], "cannot write output {t}/a-file/out.png"),
        "jpeg-with-alpha": (["-o", tmp / "out.jpg", "--input", d / "rgba.png"], "JPEG cannot hold this image"),
        "gif": (["-o", tmp / "out.png", "--gif", tmp / "drag.xyz"], "--gif {t}/drag.xyz: cannot write .xyz"),
    }


@pytest.mark.parametrize("case", ["xyz", "no-extension", "folder", "parent-is-a-file", "jpeg-with-alpha", "gif"])
def test_an_output_that_cannot_be_written_is_refused_before_the_edit(photo, tiny_model_path, tmp_path, case):
    d, _ = photo
    args, words = _unwritable_outputs(d, tmp_path)[case]
    src = d / "in.png"
    if "--input" in args:
        src = args.pop(args.index("--input") + 1)
        args.remove("--input")
    # In-process with the tiny model, so that code which checks only after the edit gets there.
    r = dragd("edit", src, "--drag", "40,30:44,30", *args, "--steps", "2", "--quality", "fast",
              "--model", tiny_model_path, "--device", "cpu", "--in-process",
              env={"DRAGD_CACHE": str(tmp_path / "cache")})
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert words.format(t=tmp_path) in r.stderr
    assert "inverted in" not in r.stderr                    # refused before any work


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root may write anywhere")
def test_a_read_only_output_is_refused_before_the_edit(photo, tmp_path):
    d, _ = photo
    out = tmp_path / "ro.png"
    out.write_bytes(b"")
    out.chmod(0o444)
    r = dragd("edit", d / "in.png", "--drag", "40,30:44,30", "-o", out, "--connect", "tcp://127.0.0.1:9")
    assert r.returncode == 2 and f"cannot write output {out}" in r.stderr


def test_arrows_shorter_than_a_working_pixel_say_why_nothing_moved(running_daemon, tmp_path):
    """A 4-px arrow on a 512-px layer is half a pixel of a 32-px model's working image: the
    drag "converges" at once, and the user is told why instead of a bare "converged"."""
    Image.fromarray(np.full((512, 512, 3), 128, np.uint8)).save(tmp_path / "in.png")
    r = dragd("edit", tmp_path / "in.png", "--drag", "200,200:204,200", "-o", tmp_path / "out.png",
              "--quality", "fast", "--connect", running_daemon.endpoint)
    assert r.returncode == 0, r.stderr
    assert "converged after 0 steps" in r.stderr and "nothing moved" in r.stderr
    assert "32-px working image" in r.stderr and "draw longer arrows" in r.stderr

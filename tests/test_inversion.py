"""Input preparation, perceptual backends, PTI inversion and the inversion cache.

Generators here are small random-weight StyleGAN2s (64 px for the quality bounds, 32 px for
the cache), with toRGB weights scaled down so images mostly stay inside [-1, 1].
"""
import copy
import dataclasses
import logging
import math
import sys

import numpy as np
import pytest
import torch

from dragd.daemon.edit import inversion as inv
from dragd.daemon.edit import perceptual as perc
from dragd.daemon.edit.image_prep import (LayerError, make_geometry, prepare_target, square_box,
                                     tensor_to_uint8, validate_layer)
from dragd.daemon.edit.inversion_cache import InversionCache, cache_key, invert_cached
from dragd.daemon.model.stylegan2 import Discriminator, Generator


@pytest.fixture(autouse=True)
def _no_lpips(monkeypatch):
    """Whether this machine has LPIPS and its weights (`pip install 'dragd[lpips]'`) must not
    change what these tests measure: they get the fallback terms unless they set up LPIPS."""
    monkeypatch.setenv("DRAGD_NO_LPIPS", "1")


def small_generator(res: int, seed: int = 0) -> Generator:
    torch.manual_seed(seed)
    G = Generator(resolution=res, z_dim=32, w_dim=32, channel_base=16 * res, channel_max=64,
                  mapping_layers=2).eval()
    with torch.no_grad():
        for name, p in G.named_parameters():
            if "torgb.weight" in name:
                p.mul_(0.4)
    return G


@pytest.fixture(scope="module")
def G64():
    return small_generator(64)


@pytest.fixture(scope="module")
def G32():
    return small_generator(32, seed=3)


def sample_image(G, seed: int) -> torch.Tensor:
    with torch.no_grad():
        w = G.mapping(torch.randn(1, G.cfg.z_dim, generator=torch.Generator().manual_seed(seed)))[:, 0]
        return G.synthesize(w).image.clamp(-1, 1)


def state_bytes(G) -> dict:
    return {k: v.detach().clone() for k, v in G.state_dict().items()}


# ---------------------------------------------------------------------------------------------
# Input preparation


def test_rejects_bad_layers():
    with pytest.raises(LayerError, match="too small"):
        validate_layer(np.zeros((1, 1, 3), np.uint8))
    huge = np.broadcast_to(np.zeros((1, 1, 3), np.uint8), (40000, 40000, 3))   # no allocation
    with pytest.raises(LayerError, match="too large"):
        validate_layer(huge)
    with pytest.raises(LayerError, match="too large"):
        validate_layer(np.broadcast_to(np.zeros((1, 1, 3), np.uint8), (12000, 12000, 3)))  # 144 Mpx
    with pytest.raises(LayerError, match="8-bit"):
        validate_layer(np.zeros((8, 8, 3), np.uint16))
    with pytest.raises(LayerError, match="8-bit"):
        validate_layer(np.zeros((8, 8, 3), np.float32))
    with pytest.raises(LayerError, match="channels"):
        validate_layer(np.zeros((8, 8, 5), np.uint8))
    with pytest.raises(LayerError, match="outside"):
        prepare_target(np.zeros((50, 60, 3), np.uint8), 32, roi=(100, 10, 120, 30))
    with pytest.raises(LayerError, match="empty"):
        prepare_target(np.zeros((50, 60, 3), np.uint8), 32, roi=(10, 10, 10, 30))
    with pytest.raises(LayerError, match="transparent"):
        prepare_target(np.zeros((40, 40, 4), np.uint8), 32)


def test_grayscale_becomes_rgb():
    g = np.arange(64, dtype=np.uint8).reshape(8, 8)
    for arr in (g, g[..., None]):
        rgb = validate_layer(arr)
        assert rgb.shape == (8, 8, 3) and np.array_equal(rgb[..., 0], g) and np.array_equal(rgb[..., 2], g)
    ga = validate_layer(np.stack([g, 255 - g], -1))
    assert ga.shape == (8, 8, 4) and np.array_equal(ga[..., 3], 255 - g)
    prep = prepare_target(g, 8)
    assert prep.converted_from_gray and prep.target.shape == (1, 3, 8, 8)


def test_square_box_margin_clamp_and_padding():
    # Region in the middle: square, side = longest side × 1.2, centred.
    assert square_box(1000, 1000, (400, 450, 500, 500), 0.1) == (390, 415, 510, 535)
    # Near the top-left corner: shifted inside the image.
    x0, y0, x1, y1 = square_box(1000, 1000, (0, 0, 100, 50), 0.1)
    assert (x0, y0) == (0, 0) and x1 - x0 == y1 - y0 == 120
    # Whole non-square image: square of the longer side, padded along the shorter one.
    geo = make_geometry(100, 300, 64)
    assert geo.box == (0, -100, 300, 200) and geo.valid == (0, 0, 300, 100) and geo.padded
    # Points map both ways.
    p = np.array([[10.0, 20.0], [299.5, 99.5]])
    np.testing.assert_allclose(geo.gen_to_layer(geo.layer_to_gen(p)), p, atol=1e-9)


def test_prepare_target_weights_alpha_and_padding():
    rng = np.random.default_rng(0)
    layer = rng.integers(0, 256, (100, 300, 4), dtype=np.uint8)
    layer[:, :150, 3] = 0          # left half transparent
    layer[:, 150:, 3] = 255
    prep = prepare_target(layer, 32)
    t, wgt = prep.target, prep.weight
    assert t.shape == (1, 3, 32, 32) and t.min() >= -1 and t.max() <= 1
    assert wgt.shape == (1, 1, 32, 32)
    # Padding rows (top and bottom third) and the transparent half do not count.
    assert wgt[0, 0, :8].max() < 0.05 and wgt[0, 0, -8:].max() < 0.05
    assert wgt[0, 0, 14:18, :12].max() < 0.05
    assert wgt[0, 0, 14:18, 20:].min() > 0.95
    # The hash covers the crop's pixels: a change outside the crop keeps it, inside changes it.
    small = rng.integers(0, 256, (200, 200, 3), dtype=np.uint8)
    a = prepare_target(small, 32, roi=(10, 10, 50, 50))
    changed_out = small.copy(); changed_out[150, 150] ^= 1
    changed_in = small.copy(); changed_in[20, 20] ^= 1
    assert prepare_target(changed_out, 32, roi=(10, 10, 50, 50)).content_hash == a.content_hash
    assert prepare_target(changed_in, 32, roi=(10, 10, 50, 50)).content_hash != a.content_hash


# ---------------------------------------------------------------------------------------------
# Metrics and perceptual backends


def test_metrics_and_ms_ssim():
    torch.manual_seed(0)
    x = torch.rand(1, 3, 64, 64) * 2 - 1
    assert float(perc.ms_ssim(x, x)) == pytest.approx(1.0, abs=1e-5)
    assert float(perc.ssim(x, x)) == pytest.approx(1.0, abs=1e-5)
    noisy = (x + 0.2 * torch.randn_like(x)).clamp(-1, 1)
    noisier = (x + 0.5 * torch.randn_like(x)).clamp(-1, 1)
    assert perc.ssim(x, noisier) < perc.ssim(x, noisy) < 1
    assert perc.ms_ssim(x, noisier) < perc.ms_ssim(x, noisy) < 1
    assert perc.psnr(x, noisier) < perc.psnr(x, noisy)
    # A weight map excludes pixels: an error where the weight is 0 does not count.
    y = x.clone(); y[..., :32] = -x[..., :32]
    wgt = torch.zeros(1, 1, 64, 64); wgt[..., 32:] = 1
    assert float(perc.psnr(x, y, wgt)) > 100
    # MS-SSIM + L1 is differentiable.
    z = noisy.clone().requires_grad_()
    perc.MsSsimL1()(z, x).sum().backward()
    assert torch.isfinite(z.grad).all() and z.grad.abs().sum() > 0


def test_backend_choice_without_lpips(monkeypatch):
    assert perc.lpips_available() == (False, "disabled by DRAGD_NO_LPIPS")
    monkeypatch.delenv("DRAGD_NO_LPIPS")
    monkeypatch.setitem(sys.modules, "lpips", None)          # as if not installed
    assert perc.lpips_available() == (False, "the 'lpips' package is not installed")
    monkeypatch.setenv("DRAGD_NO_LPIPS", "1")
    D = Discriminator(resolution=32, channel_base=256, channel_max=32)
    assert perc.resolve_backend("auto", None) == "ms-ssim+l1"
    assert perc.resolve_backend("auto", D) == "discriminator"
    assert perc.make_perceptual("lpips", D).name == "discriminator"
    with pytest.raises(ValueError):
        perc.resolve_backend("vgg-magic")
    # The discriminator backend leaves the shared D untouched (no grads, same weights).
    before = state_bytes(D)
    loss_fn = perc.make_perceptual("auto", D)
    x = torch.rand(1, 3, 32, 32, requires_grad=True)
    loss_fn(x * 2 - 1, torch.zeros(1, 3, 32, 32)).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert all(p.grad is None for p in D.parameters())
    assert all(torch.equal(before[k], v) for k, v in D.state_dict().items())
    assert loss_fn(x, x).item() == pytest.approx(0.0, abs=1e-6)


# ---------------------------------------------------------------------------------------------
# PTI


def test_invert_on_manifold_image_reaches_30db_and_base_is_untouched(G64):
    target = sample_image(G64, seed=7)
    before = state_bytes(G64)
    events = []
    result = inv.invert(G64, target, settings="fast", progress=events.append)
    assert result.tuning.psnr >= 30.0, result.summary()
    assert result.tuning.psnr > result.pivot.psnr
    assert result.perceptual_backend == "ms-ssim+l1"
    assert result.w.shape == (1, 32) and result.space == "w"
    # Base generator bit-identical, no gradients left on it; the tuned copy differs.
    after = G64.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(p.grad is None for p in G64.parameters())
    assert not torch.equal(result.generator.synthesis.b64.conv1.weight, G64.synthesis.b64.conv1.weight)
    assert result.generator.mapping is G64.mapping          # shared, never trained
    # Progress: every step of both phases, in order.
    pivot_steps = [e.step for e in events if e.phase == "pivot"]
    tune_steps = [e.step for e in events if e.phase == "tune"]
    assert pivot_steps == list(range(1, result.pivot.steps + 1))
    assert tune_steps == list(range(1, result.tuning.steps + 1))
    assert {"loss", "mse", "perceptual", "psnr"} <= set(events[-1].losses)
    # The reported reconstruction is the tuned generator at the pivot.
    rec = result.reconstruction()
    assert float(perc.psnr(rec, target)) == pytest.approx(result.tuning.psnr, abs=1e-3)


class _NoPerceptual(torch.nn.Module):
    """A perceptual term that is always 0 and sets no threshold: only the PSNR can stop tuning."""
    name, default_threshold = "none", None

    def forward(self, x, y, weight=None):
        return (x - y).sum(dim=[1, 2, 3]) * 0


def test_stop_rule_judges_the_clamped_image_as_the_report(G32):
    """A generator that overshoots [-1, 1] and a target that is its image as the user sees it
    (clamped): the reconstruction is already perfect, so tuning must stop before any step,
    and the PSNR it stopped on is the one it reports."""
    G = copy.deepcopy(G32)
    with torch.no_grad():
        G.synthesis.b32.torgb.bias.add_(2.0)
        w = G.mean_w()[None]
        image = G.synthesize(w).image
    target = image.clamp(-1, 1)
    assert 10 * math.log10(4 / float(perc.mse(image, target))) < 20      # unclamped: far off
    settings = inv.InversionSettings(tune_steps=3, stop_psnr=40.0)
    events = []
    _, report = inv.tune_generator(G, w, target, None, settings, _NoPerceptual(), progress=events.append)
    assert report.stopped_early and report.steps == 0 and not events
    assert report.psnr >= 40.0
    # Progress reports the same PSNR as the final report would for the image of that step.
    _, report = inv.tune_generator(G, w, target, None, dataclasses.replace(settings, stop_psnr=None),
                                   _NoPerceptual(), progress=events.append)
    assert len(events) == 3 and all(e.losses["psnr"] >= 40.0 for e in events)


def test_tuning_recovers_off_manifold_content(G64):
    target = sample_image(G64, seed=8).clone()
    target[:, :, 16:32, 16:32] = torch.tensor([0.8, -0.6, 0.2]).view(1, 3, 1, 1)   # pasted square
    result = inv.invert(G64, target, settings="fast")
    assert result.tuning.psnr - result.pivot.psnr >= 6.0, result.summary()


def test_cancel_and_wplus(G32):
    target = sample_image(G32, seed=1)
    calls = []

    def cancel():
        calls.append(1)
        return len(calls) > 3

    with pytest.raises(inv.InversionCancelled):
        inv.invert(G32, target, settings=inv.InversionSettings(pivot_steps=10, tune_steps=10), cancel=cancel)
    r = inv.invert(G32, target, settings=inv.InversionSettings(space="w+", pivot_steps=3, tune_steps=2,
                                                               stop_psnr=None))
    assert r.w.shape == (1, G32.num_ws, 32) and r.tuning.steps == 2


def test_weight_deltas_round_trip(G32):
    target = sample_image(G32, seed=2)
    r = inv.invert(G32, target, settings=inv.InversionSettings(pivot_steps=3, tune_steps=5, stop_psnr=None))
    deltas = inv.weight_deltas(G32, r.generator)
    assert deltas and all(k.startswith("synthesis.") for k in deltas)
    rebuilt = inv.apply_weight_deltas(G32, deltas)
    for (k, a), (_, b) in zip(r.generator.named_parameters(), rebuilt.named_parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# Cache


CACHE_SETTINGS = inv.InversionSettings(pivot_steps=6, tune_steps=8, stop_psnr=None)


@pytest.fixture
def layer32(G32):
    img = tensor_to_uint8(sample_image(G32, seed=4))
    # A 48×48 layer with the 32-px image in it; the region is its middle.
    layer = np.full((48, 48, 3), 90, np.uint8)
    layer[8:40, 8:40] = img
    return layer


def counting():
    steps = []
    return steps, (lambda e: steps.append((e.phase, e.step)))


def test_cache_memory_and_disk_hits(G32, layer32, tmp_path):
    prep = prepare_target(layer32, 32, roi=(10, 10, 38, 38))
    cache = InversionCache(tmp_path)
    steps, progress = counting()
    first = invert_cached(G32, prep, model_id="tiny", cache=cache, settings=CACHE_SETTINGS, progress=progress)
    assert len(steps) == 6 + 8 and not first.from_cache
    files = list(tmp_path.glob("*.safetensors"))
    assert len(files) == 1
    # Same layer again: memory hit, no step.
    steps.clear()
    again = invert_cached(G32, prepare_target(layer32.copy(), 32, roi=(10, 10, 38, 38)), model_id="tiny",
                          cache=cache, settings=CACHE_SETTINGS, progress=progress)
    assert steps == [] and again.from_cache and cache.stats["memory_hits"] == 1
    assert torch.equal(again.w, first.w)
    # "Restarted process": a new cache object on the same folder finds it on disk.
    cache2 = InversionCache(tmp_path)
    restored = invert_cached(G32, prep, model_id="tiny", cache=cache2, settings=CACHE_SETTINGS, progress=progress)
    assert steps == [] and restored.from_cache and cache2.stats["disk_hits"] == 1
    assert torch.equal(restored.w, first.w)
    # fp16 deltas: the reconstruction stays within 0.1 dB of the exact tuned generator.
    p_first = float(perc.psnr(first.reconstruction(), prep.target, prep.weight))
    p_restored = float(perc.psnr(restored.reconstruction(), prep.target, prep.weight))
    assert abs(p_first - p_restored) <= 0.1
    assert restored.tuning.psnr == first.tuning.psnr and restored.perceptual_backend == first.perceptual_backend
    # Delta file is smaller than a full fp32 copy of the synthesis weights.
    full = sum(p.numel() * 4 for p in G32.synthesis.parameters())
    assert files[0].stat().st_size < 0.6 * full
    # Different settings / model / region → different keys, so a miss.
    assert cache_key("tiny", prep.content_hash, prep.geometry, CACHE_SETTINGS, "ms-ssim+l1") != \
        cache_key("other", prep.content_hash, prep.geometry, CACHE_SETTINGS, "ms-ssim+l1")
    steps.clear()
    invert_cached(G32, prep, model_id="tiny", cache=cache2,
                  settings=inv.InversionSettings(pivot_steps=2, tune_steps=1, stop_psnr=None), progress=progress)
    assert len(steps) == 3


def test_corrupt_cache_file_is_ignored_and_rebuilt(G32, layer32, tmp_path, caplog):
    prep = prepare_target(layer32, 32)
    invert_cached(G32, prep, model_id="tiny", cache=InversionCache(tmp_path), settings=CACHE_SETTINGS)
    (path,) = tmp_path.glob("*.safetensors")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])          # truncated
    steps, progress = counting()
    fresh = InversionCache(tmp_path)
    with caplog.at_level(logging.WARNING, logger="dragd.daemon.edit.inversion_cache"):
        result = invert_cached(G32, prep, model_id="tiny", cache=fresh, settings=CACHE_SETTINGS, progress=progress)
    assert any("corrupt" in rec.message for rec in caplog.records)
    assert len(steps) == 14 and not result.from_cache and fresh.stats["corrupt"] == 1
    # Rebuilt: the next process reads it fine.
    steps.clear()
    assert invert_cached(G32, prep, model_id="tiny", cache=InversionCache(tmp_path), settings=CACHE_SETTINGS,
                         progress=progress).from_cache
    assert steps == []
    # Garbage is handled the same way.
    path.write_bytes(b"not a safetensors file at all")
    with caplog.at_level(logging.WARNING, logger="dragd.daemon.edit.inversion_cache"):
        assert InversionCache(tmp_path).get(path.stem, G32) is None
    assert not path.exists()


def test_cache_size_bounds(G32, tmp_path):
    cache = InversionCache(tmp_path)
    entries = []
    for seed in range(3):
        target = sample_image(G32, seed=10 + seed)
        r = inv.invert(G32, target, settings=inv.InversionSettings(pivot_steps=1, tune_steps=2, stop_psnr=None))
        entries.append(r)
        cache.put(f"k{seed}", r, G32, target)
    one_file = max(p.stat().st_size for p in tmp_path.glob("*.safetensors"))
    one_mem = cache.memory_bytes // 3
    # Disk: keep at most two files; the least recently used goes.
    import os
    os.utime(tmp_path / "k0.safetensors", (1, 1))          # oldest
    small = InversionCache(tmp_path, max_disk_bytes=2 * one_file + 10, max_memory_bytes=2 * one_mem + 10)
    for i, r in enumerate(entries[:2]):
        small.put(f"k{i}", r, G32)                # rewrites k0, k1 (now the newest)
    small.put("k9", entries[2], G32)
    names = {p.stem for p in tmp_path.glob("*.safetensors")}
    assert small.disk_bytes <= 2 * one_file + 10 and "k9" in names and len(names) == 2
    assert small.memory_bytes <= 2 * one_mem + 10 and small.stats["evicted_memory"] >= 1
    assert not list(tmp_path.glob(".tmp-*"))      # atomic writes leave no temp files


def test_lpips_backend_is_used_when_package_and_weights_are_present(tmp_path, monkeypatch, G32):
    # A stand-in 'lpips' package (and 'torchvision') with weight files where the real ones live:
    # exercises the detection and the wrapper without network access.
    pkg = tmp_path / "site" / "lpips"
    (pkg / "weights" / "v0.1").mkdir(parents=True)
    (pkg / "weights" / "v0.1" / "alex.pth").write_bytes(b"x")
    (pkg / "__init__.py").write_text(
        "import torch\n"
        "class LPIPS(torch.nn.Module):\n"
        "    def __init__(self, net='alex', spatial=False, verbose=True):\n"
        "        super().__init__()\n"
        "        self.scale = torch.nn.Parameter(torch.ones([]))\n"
        "    def forward(self, a, b, normalize=False):\n"
        "        return (a - b).abs().mean(1, keepdim=True) * self.scale\n")
    (tmp_path / "site" / "torchvision").mkdir()
    (tmp_path / "site" / "torchvision" / "__init__.py").write_text("")
    (tmp_path / "torch_home" / "hub" / "checkpoints").mkdir(parents=True)
    (tmp_path / "torch_home" / "hub" / "checkpoints" / "alexnet-owt-7be5be79.pth").write_bytes(b"x")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.delenv("DRAGD_NO_LPIPS", raising=False)
    import sys
    for name in ("lpips", "torchvision"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    assert perc.lpips_available() == (True, "ok")
    loss_fn = perc.make_perceptual("auto", D=object())
    assert loss_fn.name == "lpips-alex" and loss_fn.default_threshold == 0.06
    assert not any(p.requires_grad for p in loss_fn.parameters())
    r = inv.invert(G32, sample_image(G32, 1), settings=inv.InversionSettings(pivot_steps=2, tune_steps=2))
    assert r.perceptual_backend == "lpips-alex"
    monkeypatch.setenv("DRAGD_NO_LPIPS", "1")
    assert perc.resolve_backend("auto") == "ms-ssim+l1"


def test_lpips_that_cannot_be_built_falls_back_and_logs_why(tmp_path, monkeypatch, caplog):
    # Package and weight files present, but building fails (as with a torchvision that does not
    # match torch): the next backend is used and the log says why.
    pkg = tmp_path / "site" / "lpips"
    (pkg / "weights" / "v0.1").mkdir(parents=True)
    (pkg / "weights" / "v0.1" / "alex.pth").write_bytes(b"x")
    (pkg / "__init__.py").write_text("raise RuntimeError('operator torchvision::nms does not exist')\n")
    (tmp_path / "site" / "torchvision").mkdir()
    (tmp_path / "site" / "torchvision" / "__init__.py").write_text("")
    (tmp_path / "torch_home" / "hub" / "checkpoints").mkdir(parents=True)
    (tmp_path / "torch_home" / "hub" / "checkpoints" / "alexnet-owt-7be5be79.pth").write_bytes(b"x")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.delenv("DRAGD_NO_LPIPS")
    for name in ("lpips", "torchvision"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    assert perc.lpips_available() == (True, "ok")
    with caplog.at_level(logging.INFO, logger="dragd.daemon.edit.perceptual"):
        loss_fn = perc.make_perceptual("auto")
    assert loss_fn.name == "ms-ssim+l1"
    assert any("could not be built: RuntimeError: operator torchvision::nms" in r.message
               and "MS-SSIM" in r.message for r in caplog.records)

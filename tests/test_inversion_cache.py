"""The inversion cache on disk: verified payloads (checksum, finite values) and a trim that
removes only the cache's own files.

The generator is a small random-weight StyleGAN2 (32 px), as in tests/test_inversion.py.
"""
import dataclasses
import json
import logging
import os

import numpy as np
import pytest
import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from safetensors.torch import save_file

from dragd.daemon.edit import inversion as inv
from dragd.daemon.edit import inversion_cache as ic
from dragd.daemon.edit.image_prep import prepare_target, tensor_to_uint8
from dragd.daemon.edit.inversion_cache import InversionCache, invert_cached
from dragd.daemon.model.stylegan2 import Generator

SETTINGS = inv.InversionSettings(pivot_steps=6, tune_steps=8, stop_psnr=None)
LOGGER = "dragd.daemon.edit.inversion_cache"


@pytest.fixture(autouse=True)
def _no_lpips(monkeypatch):
    """The perceptual term must not depend on whether this machine has LPIPS."""
    monkeypatch.setenv("DRAGD_NO_LPIPS", "1")


@pytest.fixture(scope="module")
def G():
    torch.manual_seed(3)
    g = Generator(resolution=32, z_dim=32, w_dim=32, channel_base=512, channel_max=64, mapping_layers=2).eval()
    with torch.no_grad():
        for name, p in g.named_parameters():
            if "torgb.weight" in name:
                p.mul_(0.4)
    return g


@pytest.fixture(scope="module")
def prepared(G):
    with torch.no_grad():
        w = G.mapping(torch.randn(1, 32, generator=torch.Generator().manual_seed(4)))[:, 0]
        img = tensor_to_uint8(G.synthesize(w).image.clamp(-1, 1))
    return prepare_target(img, 32)


def counting():
    steps = []
    return steps, (lambda e: steps.append(e.step))


@pytest.fixture
def entry(G, prepared, tmp_path):
    """A cache folder holding one entry; → (its path, the inversion that wrote it)."""
    first = invert_cached(G, prepared, model_id="tiny", cache=InversionCache(tmp_path), settings=SETTINGS)
    (path,) = tmp_path.glob("*.safetensors")
    return path, first


def rewrite(path, change):
    """Re-save the entry after change(tensors, meta), with or without a valid checksum."""
    data = path.read_bytes()
    tensors, meta = st_load(data), ic._read_metadata(data)
    change(tensors, meta)
    path.write_bytes(st_save(tensors, metadata=meta))


def assert_miss_and_rebuilt(G, prepared, path, caplog, words):
    steps, progress = counting()
    cache = InversionCache(path.parent)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        result = invert_cached(G, prepared, model_id="tiny", cache=cache, settings=SETTINGS, progress=progress)
    assert not result.from_cache and len(steps) == 6 + 8           # re-inverted
    assert cache.stats["corrupt"] == 1 and cache.stats["disk_hits"] == 0
    assert any(words in r.getMessage() and path.name in r.getMessage() for r in caplog.records)
    # The bad entry was replaced by a good one: the next process hits it.
    assert InversionCache(path.parent).get(path.stem, G) is not None


# ---------------------------------------------------------------------------------------------
# Verified payloads


@pytest.mark.parametrize("tensor", ["w", "delta"])
def test_a_bit_flip_in_a_tensor_is_a_miss_and_reinverts(G, prepared, entry, caplog, tensor):
    path, _ = entry
    data = bytearray(path.read_bytes())
    header = json.loads(data[8:8 + int.from_bytes(data[:8], "little")])
    name = "w" if tensor == "w" else next(k for k in header if k.startswith("delta."))
    start = 8 + int.from_bytes(data[:8], "little") + header[name]["data_offsets"][0]
    data[start + 1] ^= 0x40                    # a high bit of the first value's mantissa/exponent
    path.write_bytes(bytes(data))
    assert_miss_and_rebuilt(G, prepared, path, caplog, "checksum mismatch")


def test_every_flipped_bit_is_either_refused_or_harmless(G, entry):
    """Flip one bit at a time at 24 places in the header and 97 spread over the file: the cache
    never returns an inversion that differs from the one written."""
    path, first = entry
    good = path.read_bytes()
    header_end = 8 + int.from_bytes(good[:8], "little")
    served = 0
    places = np.concatenate([np.linspace(0, header_end - 1, 24), np.linspace(0, len(good) - 1, 97)])
    for pos in places.astype(int):
        bad = bytearray(good)
        bad[pos] ^= 1 << (pos % 8)
        path.write_bytes(bytes(bad))
        hit = InversionCache(path.parent).get(path.stem, G)
        if hit is not None:
            served += 1
            assert torch.equal(hit.w, first.w)
            for a, b in zip(hit.generator.synthesis.parameters(), first.generator.synthesis.parameters()):
                assert torch.allclose(a, b, rtol=0, atol=1e-3)       # fp16 deltas
    # Only a flip that leaves the parsed header equal (e.g. in its padding) could be served.
    assert served <= 2


def test_a_nan_latent_with_a_valid_checksum_is_refused(G, prepared, entry, caplog):
    path, _ = entry

    def poison(tensors, meta):
        tensors["w"][0, 0] = float("nan")
        meta["checksum"] = ic._digest(tensors, meta)
    rewrite(path, poison)
    assert_miss_and_rebuilt(G, prepared, path, caplog, "w holds NaN or infinite values")


def test_an_infinite_delta_is_refused(G, prepared, entry, caplog):
    path, _ = entry

    def poison(tensors, meta):
        name = next(k for k in tensors if k.startswith("delta."))
        tensors[name].view(-1)[0] = float("inf")
        meta["checksum"] = ic._digest(tensors, meta)
    rewrite(path, poison)
    assert_miss_and_rebuilt(G, prepared, path, caplog, "NaN or infinite")


def test_an_entry_without_a_checksum_is_a_miss(G, prepared, entry, caplog):
    """What an older version wrote: no checksum in the metadata."""
    path, _ = entry
    rewrite(path, lambda tensors, meta: meta.pop("checksum"))
    assert_miss_and_rebuilt(G, prepared, path, caplog, "no checksum")


def test_changed_metadata_is_a_checksum_mismatch(G, prepared, entry, caplog):
    path, _ = entry
    rewrite(path, lambda tensors, meta: meta.update(seconds="0.5"))
    assert_miss_and_rebuilt(G, prepared, path, caplog, "checksum mismatch")


def test_a_non_finite_inversion_is_not_stored(G, entry, tmp_path, caplog):
    _, first = entry
    cache = InversionCache(tmp_path / "fresh")
    broken = dataclasses.replace(first, w=torch.full_like(first.w, float("nan")))
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        cache.put("k", broken, G)
    assert "k" not in cache and not list((tmp_path / "fresh").iterdir())
    assert any("not storing k" in r.getMessage() for r in caplog.records)


# ---------------------------------------------------------------------------------------------
# Trimming removes only the cache's own files


def foreign_files(folder):
    """Files a user or another program keeps in the same folder, some shaped like ours."""
    save_file({"x": torch.ones(4096)}, folder / "my-model.safetensors")          # the old glob matched it
    save_file({"x": torch.ones(4096)}, folder / f"{'ab' * 20}.safetensors",
              metadata={"format": "someone-else", "key": "ab" * 20})
    save_file({"x": torch.ones(4096)}, folder / "renamed.safetensors",            # ours, but renamed
              metadata={"format": ic.CACHE_FORMAT, "key": "not-this-name"})
    (folder / f"{'cd' * 20}.safetensors").write_bytes(os.urandom(9000))           # garbage
    (folder / ".tmp-notes.safetensors").write_bytes(b"draft")                     # the old temp prefix
    (folder / "notes.txt").write_text("mine")
    for p in folder.iterdir():
        os.utime(p, (1, 1))                                      # older than anything the cache writes
    return {p.name: p.read_bytes() for p in folder.iterdir()}


def test_trim_and_temp_cleanup_leave_foreign_files(G, tmp_path):
    before = foreign_files(tmp_path)
    entries = []
    for seed in range(3):
        target = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(seed)) * 2 - 1
        entries.append(inv.invert(G, target, settings=inv.InversionSettings(pivot_steps=1, tune_steps=2,
                                                                            stop_psnr=None)))
    probe = InversionCache(tmp_path / "probe")
    probe.put("probe", entries[0], G)
    one = probe.disk_bytes
    assert one > 0
    # Room for two entries: the third put evicts the oldest entry, and nothing foreign.
    cache = InversionCache(tmp_path, max_disk_bytes=2 * one + one // 2)
    for i, r in enumerate(entries):
        cache.put(f"k{i}", r, G)
        os.utime(tmp_path / f"k{i}.safetensors", (10 + i, 10 + i))
    cache.put("k3", entries[0], G)
    after = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
    assert {n: after.get(n) for n in before} == before
    assert sorted(set(after) - set(before)) == ["k2.safetensors", "k3.safetensors"]
    assert cache.stats["evicted_disk"] == 2
    # The disk size counts only the cache's own files.
    assert cache.disk_bytes == sum(len(after[n]) for n in ("k2.safetensors", "k3.safetensors"))


def test_stale_temp_files_of_the_cache_are_removed(tmp_path):
    own = tmp_path / f"{ic._TMP_PREFIX}abc{ic._SUFFIX}"
    own.write_bytes(b"half-written")
    foreign = tmp_path / ".tmp-abc.safetensors"
    foreign.write_bytes(b"someone else's")
    for p in (own, foreign):
        os.utime(p, (1, 1))
    InversionCache(tmp_path)
    assert not own.exists() and foreign.exists()

"""Golden outputs of a tiny fixed-weight generator and discriminator, so that a refactor of
dragd.daemon.model cannot change numbers unnoticed.

tests/golden/tiny.safetensors holds what the networks built below produced when the file was
written: mapping with truncation, the W+ image (const noise, noise on), block 3's features
when stopping there, the image and d(image · proj)/d(W+) with autograd on (the
activation-scaled modulated conv), D logits and D features. Regenerate it, only when a change
of the numbers is intended, with

    .venv/bin/python tests/test_golden.py --write

The weights are not those of the constructors' torch.manual_seed order: every weight and
buffer is drawn from a generator seeded by its own name, so a refactor that builds modules in
another order (or adds one) still gets the same weights. Values must stay within
1e-6 × max(1, max|ref|) (0.0 on the machine that wrote the file; the margin is for another
CPU's kernels and for a reordered sum).
"""
import sys
import zlib
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from dragd.daemon.model.stylegan2 import Discriminator, DiscriminatorConfig, Generator, GeneratorConfig

GOLDEN = Path(__file__).parent / "golden" / "tiny.safetensors"
G_CFG = GeneratorConfig(resolution=32, z_dim=16, w_dim=16, channel_base=256, channel_max=16, mapping_layers=2)
D_CFG = DiscriminatorConfig(resolution=32, channel_base=256, channel_max=16)
FEATURE_BLOCK = 3          # 16 px


def _by_name(module, scale_of):
    with torch.no_grad():
        for name, t in module.state_dict().items():     # state_dict: parameters and buffers alike
            gen = torch.Generator().manual_seed(zlib.crc32(name.encode()))
            t.copy_(torch.randn(t.shape, generator=gen) * scale_of(name))
    return module


def _g_scale(name):
    if name.startswith("mapping.fc") and name.endswith("weight"):
        return 100.0         # stored divided by lr_multiplier 0.01, as a trained mapping's are
    if name.endswith(("bias", "noise_strength", "w_avg")):
        return 0.3
    return 1.0


def networks():
    G = _by_name(Generator(G_CFG), _g_scale).eval()
    D = _by_name(Discriminator(D_CFG), lambda n: 0.3 if n.endswith("bias") else 1.0).eval()
    return G, D


def inputs(G):
    gen = torch.Generator().manual_seed(2024)
    z = torch.randn(2, G_CFG.z_dim, generator=gen)
    ws = torch.randn(2, G.num_ws, G_CFG.w_dim, generator=gen)       # distinct rows per layer
    proj = torch.randn(2, 3, G_CFG.resolution, G_CFG.resolution, generator=gen)
    return z, ws, proj


def outputs(G, D):
    z, ws, proj = inputs(G)
    out = {}
    with torch.no_grad():
        out["mapping_psi0.7"] = G.mapping(z, truncation_psi=0.7)
        out["image"] = G.synthesize(ws).image
        out["features"] = G.synthesize(ws, stop_after_block=FEATURE_BLOCK, render=False).features[-1]
        logits, feats = D(out["image"], return_features=True)
        out["d_logits"], out["d_features"] = logits, feats[-1]
    ws = ws.clone().requires_grad_(True)
    image = G.synthesize(ws).image
    (image * proj).sum().backward()
    out["image_autograd"], out["grad_ws"] = image.detach(), ws.grad
    return out


def _load():
    with safe_open(str(GOLDEN), "pt") as f:
        # clone: the file's tensors are not 64-byte aligned (CPU kernels may round differently)
        return {k: f.get_tensor(k).clone() for k in f.keys()}


def test_outputs_match_golden():
    golden = _load()
    ours = outputs(*networks())
    assert sorted(ours) == sorted(golden)
    bad = []
    for name, ref in golden.items():
        assert ours[name].shape == ref.shape, name
        tol = 1e-6 * max(1.0, ref.abs().max().item())
        diff = (ours[name] - ref).abs().max().item()
        if diff > tol:
            bad.append(f"{name}: max|diff| {diff:.3e} > {tol:.3e}")
    assert not bad, "; ".join(bad)       # all of them: which outputs moved tells where to look


def test_golden_values_are_not_degenerate():
    # A golden of zeros or of z-independent images would let real changes through.
    g = _load()
    assert g["image"].std() > 0.1 and g["features"].std() > 0.1 and g["grad_ws"].abs().max() > 0
    assert (g["mapping_psi0.7"][0] - g["mapping_psi0.7"][1]).abs().max() > 0.05
    assert (g["image"][0] - g["image"][1]).abs().max() > 0.1
    assert (g["d_logits"][0] - g["d_logits"][1]).abs().max() > 1e-3


if __name__ == "__main__":
    if sys.argv[1:] != ["--write"]:
        sys.exit(f"usage: {sys.argv[0]} --write   (rewrites {GOLDEN})")
    torch.set_num_threads(1)          # as tests/conftest.py: the same reduction order as CI
    tensors = {k: v.contiguous() for k, v in outputs(*networks()).items()}
    GOLDEN.parent.mkdir(exist_ok=True)
    # one metadata key: several are written in hash order, and the same tensors should give
    # the same bytes
    save_file(tensors, str(GOLDEN), metadata={
        "golden": f"written by `.venv/bin/python tests/test_golden.py --write`, torch {torch.__version__}"})
    print(f"wrote {GOLDEN} ({GOLDEN.stat().st_size} bytes): " +
          ", ".join(f"{k} {tuple(v.shape)}" for k, v in tensors.items()))

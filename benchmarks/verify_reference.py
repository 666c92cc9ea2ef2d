#!/usr/bin/env python
"""Prove dragd's StyleGAN2 and checkpoint loaders equal the reference implementations.

Needs checkouts of the reference code (never part of this repository), e.g.

    git clone https://github.com/NVlabs/stylegan2-ada-pytorch /tmp/ref/stylegan2-ada-pytorch
    git clone https://github.com/NVlabs/stylegan3 /tmp/ref/stylegan3
    git clone https://github.com/rosinality/stylegan2-pytorch /tmp/ref/stylegan2-pytorch
    python benchmarks/verify_reference.py --stylegan2-ada /tmp/ref/stylegan2-ada-pytorch \\
        --stylegan3 /tmp/ref/stylegan3 --rosinality /tmp/ref/stylegan2-pytorch

Everything runs on the CPU in float32, where NVIDIA's ops use their reference (pure PyTorch)
paths and nothing is compiled; rosinality's CUDA extension build is skipped the same way.
Modules the reference code imports but does not need here (requests, pkg_resources, scipy)
are stubbed when missing. Each reference repository runs in its own subprocess (they share
top-level package names).

For each NVIDIA code base (stylegan2-ada-pytorch `training/networks.py`, the StyleGAN3 repo's
`training/networks_stylegan2.py`) it checks, printing max |difference|:

1. their Generator/Discriminator vs ours with the same weights (mapping, truncation, W+
   synthesis, every block's features, images; D logits and block features), several configs
   (with and without conv_clamp, num_fp16_res > 0 run with force_fp32=True);
2. a snapshot pickled exactly as their training loop does it (dict of G, D, G_ema,
   augment_pipe, training_set_kwargs; protocols 3 and 4), loaded by our restricted loader,
   vs their networks unpickled normally;
3. the structure of that pickle (globals used, persistent-object tree, parameter and buffer
   names, init kwargs) vs the one our test fixture builder (tests/nvidia_fixtures.py) writes;
4. (stylegan2-ada) an original-TensorFlow-layout pickle converted by their legacy.py vs ours;
5. (stylegan3) a StyleGAN3 pickle is refused with a clear error (skipped without scipy).

For rosinality: their Generator/Discriminator saved as a training checkpoint, loaded by ours.

Exit status 0 when every difference is within tolerance (1e-5 NVIDIA, 1e-4 rosinality, whose
operation order differs slightly) and every structural check passes.

With --write-golden FILE it instead writes small golden tensors made by NVIDIA's own code alone
(tiny fixed-weight networks: their weights, inputs and outputs; nothing of ours runs), which
tests/test_nvidia_golden.py compares our modules with in CI, where no reference checkout is at
hand. The committed tests/golden/nvidia_ada.safetensors was written by

    git clone https://github.com/NVlabs/stylegan2-ada-pytorch /tmp/ref/stylegan2-ada-pytorch
    git -C /tmp/ref/stylegan2-ada-pytorch checkout d72cc7d041b42ec8e806021a205ed9349f87c6a4
    .venv/bin/python benchmarks/verify_reference.py --stylegan2-ada /tmp/ref/stylegan2-ada-pytorch \\
        --write-golden tests/golden/nvidia_ada.safetensors
"""
from __future__ import annotations

import argparse
import collections
import copy
import importlib
import importlib.util
import io
import json
import os
import pickle
import subprocess
import sys
import tempfile
import types
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
GOLDEN_COMMAND = ("python benchmarks/verify_reference.py --stylegan2-ada /tmp/ref/stylegan2-ada-pytorch "
                  "--write-golden tests/golden/nvidia_ada.safetensors")

# =============================================================================================
# Driver


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--stylegan2-ada", metavar="DIR", help="checkout of NVlabs/stylegan2-ada-pytorch")
    ap.add_argument("--stylegan3", metavar="DIR", help="checkout of NVlabs/stylegan3")
    ap.add_argument("--rosinality", metavar="DIR", help="checkout of rosinality/stylegan2-pytorch")
    ap.add_argument("--keep", metavar="DIR", help="keep the reference-made checkpoints here")
    ap.add_argument("--write-golden", metavar="FILE",
                    help="with --stylegan2-ada: only write golden tensors made by NVIDIA's code to FILE "
                         "(.safetensors) for tests/test_nvidia_golden.py; the committed file was made by "
                         f"`{GOLDEN_COMMAND}`")
    ap.add_argument("--worker", nargs=2, metavar=("KIND", "DIR"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        return worker(args.worker[0], Path(args.worker[1]), args.keep)
    if args.write_golden:
        if not args.stylegan2_ada:
            ap.error("--write-golden needs --stylegan2-ada")
        # Its own process, as every worker: their top-level packages go on sys.path there only.
        cmd = [sys.executable, __file__, "--worker", "golden", str(Path(args.stylegan2_ada).resolve()),
               "--keep", str(Path(args.write_golden).resolve())]
        return subprocess.run(cmd, env=dict(os.environ, PYTHONWARNINGS="ignore")).returncode
    jobs = [(k, d) for k, d in (("ada", args.stylegan2_ada), ("sg3", args.stylegan3),
                                ("rosinality", args.rosinality)) if d]
    if not jobs:
        ap.error("give at least one of --stylegan2-ada, --stylegan3, --rosinality")
    ok = True
    for kind, d in jobs:
        print(f"== {kind}: {d}", flush=True)
        cmd = [sys.executable, __file__, "--worker", kind, str(Path(d).resolve())]
        if args.keep:
            cmd += ["--keep", args.keep]
        env = dict(os.environ, PYTHONWARNINGS="ignore")
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        results = []
        for line in proc.stdout.splitlines():
            if line.startswith("{"):
                results.append(json.loads(line))
            else:
                print("   " + line)
        for r in results:
            if "max_abs_diff" in r:
                print(f"   {'ok ' if r['ok'] else 'BAD'} {r['check']:<62} max|diff| {r['max_abs_diff']:.3e}"
                      f"  (max|ref| {r['max_abs_ref']:.3g}, tol {r['tol']:g})")
            else:
                print(f"   {'ok ' if r['ok'] else 'BAD'} {r['check']:<62} {r.get('detail', '')}")
            ok &= r["ok"]
        if proc.returncode != 0 or not results:
            ok = False
            print(f"   worker failed (exit {proc.returncode}):\n" + proc.stderr[-4000:])
    print("ALL CHECKS PASSED" if ok else "SOME CHECKS FAILED")
    return 0 if ok else 1


def report(check: str, ref, ours, tol: float) -> None:
    import torch

    ref, ours = torch.as_tensor(ref).float(), torch.as_tensor(ours).float()
    if ref.shape != ours.shape:
        print(json.dumps({"check": check, "ok": False, "detail": f"shape {tuple(ref.shape)} vs {tuple(ours.shape)}"}))
        return
    diff = (ref - ours).abs().max().item() if ref.numel() else 0.0
    print(json.dumps({"check": check, "max_abs_diff": diff, "max_abs_ref": ref.abs().max().item(),
                      "tol": tol, "ok": bool(diff <= tol)}), flush=True)


def verdict(check: str, ok: bool, detail: str = "") -> None:
    print(json.dumps({"check": check, "ok": bool(ok), "detail": detail}), flush=True)


# =============================================================================================
# Worker helpers


def _stub_missing_modules() -> None:
    """Stand-ins for modules the reference code imports but these checks never use."""
    if importlib.util.find_spec("requests") is None:           # dnnlib.util: URL downloads only
        sys.modules["requests"] = types.ModuleType("requests")
    if importlib.util.find_spec("pkg_resources") is None:      # stylegan3 conv2d_gradfix: version test
        import re
        m = types.ModuleType("pkg_resources")
        m.parse_version = lambda v: tuple(int(x) for x in re.findall(r"\d+", v.split("+")[0])[:3])
        sys.modules["pkg_resources"] = m
    if importlib.util.find_spec("click") is None:              # legacy.py's command-line decorators
        click = types.ModuleType("click")
        click.command = click.option = lambda *a, **k: (lambda f: f)
        sys.modules["click"] = click
    if importlib.util.find_spec("scipy") is None:              # AugmentPipe's wavelet filter bank only
        import numpy as np
        scipy = types.ModuleType("scipy")
        signal = types.ModuleType("scipy.signal")

        def convolve(a, b):
            a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
            out = np.zeros([x + y - 1 for x, y in zip(a.shape, b.shape)])
            for idx in np.ndindex(*b.shape):
                out[tuple(slice(i, i + s) for i, s in zip(idx, a.shape))] += a * b[idx]
            return out

        signal.convolve = convolve
        scipy.signal = signal
        scipy.__dragd_stub__ = True
        sys.modules["scipy"], sys.modules["scipy.signal"] = scipy, signal


def _randomize(module, seed: int) -> None:
    import torch

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in module.named_parameters():
            scale = 0.3 if name.endswith(("bias", "noise_strength")) or ".noise." in name else 1.0
            t.copy_(torch.randn(t.shape, generator=gen) * scale)


def _fixtures():
    spec = importlib.util.spec_from_file_location("nvidia_fixtures", REPO / "tests" / "nvidia_fixtures.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def worker(kind: str, ref: Path, keep: str | None) -> int:
    sys.path.insert(0, str(ref))
    _stub_missing_modules()
    import torch

    torch.set_num_threads(min(4, os.cpu_count() or 1))
    if kind == "golden":
        torch.set_num_threads(1)     # the tests' setting: same reduction order as in CI
    out_dir = Path(keep) if keep and kind != "golden" else Path(tempfile.mkdtemp(prefix="dragd-verify-"))
    out_dir.mkdir(parents=True, exist_ok=True)
    if kind in ("ada", "sg3"):
        nvidia_worker(kind, ref, out_dir)
    elif kind == "golden":          # --keep carries the output file
        write_nvidia_golden(ref, Path(keep))
    elif kind == "rosinality":
        rosinality_worker(ref, out_dir)
    else:
        raise SystemExit(f"unknown worker kind {kind}")
    return 0


# =============================================================================================
# NVIDIA


_NV_CONFIGS = [
    dict(res=32, z=16, w=24, map=3, channel_base=512, channel_max=32, conv_clamp=None, num_fp16_res=0),
    dict(res=32, z=16, w=24, map=3, channel_base=512, channel_max=32, conv_clamp=0.5, num_fp16_res=2),
    dict(res=64, z=32, w=32, map=2, channel_base=1024, channel_max=64, conv_clamp=256, num_fp16_res=4,
         layer_features=48),
]


def _their_generator(N, kind, c):
    mapping = dict(num_layers=c["map"])
    if c.get("layer_features"):
        mapping["layer_features"] = c["layer_features"]
    synth = dict(channel_base=c["channel_base"], channel_max=c["channel_max"], num_fp16_res=c["num_fp16_res"],
                 conv_clamp=c["conv_clamp"])
    common = dict(z_dim=c["z"], c_dim=0, w_dim=c["w"], img_resolution=c["res"], img_channels=3,
                  mapping_kwargs=mapping)
    if kind == "ada":
        return N.Generator(**common, synthesis_kwargs=synth)
    return N.Generator(**common, **synth)


def _our_config(c):
    from dragd.daemon.model.stylegan2 import GeneratorConfig

    return GeneratorConfig(resolution=c["res"], z_dim=c["z"], w_dim=c["w"], channel_base=c["channel_base"],
                           channel_max=c["channel_max"], mapping_layers=c["map"],
                           layer_features=c.get("layer_features"), conv_clamp=c["conv_clamp"],
                           num_fp16_res=c["num_fp16_res"])


def _state_without_filters(module):
    return {k: v for k, v in module.state_dict().items() if not k.endswith("resample_filter")}


def _block_outputs(net, names):
    """Forward hooks collecting the first output of each named block."""
    store = {}
    handles = []
    for n in names:
        def hook(_m, _i, out, n=n):
            store[n] = out[0] if isinstance(out, tuple) else out
        handles.append(getattr(net, n).register_forward_hook(hook))
    return store, handles


def nvidia_worker(kind: str, ref: Path, out_dir: Path) -> None:
    import torch

    from dragd.daemon.model.checkpoints import load_checkpoint
    from dragd.daemon.model.stylegan2 import Discriminator, DiscriminatorConfig, Generator

    N = importlib.import_module("training.networks" if kind == "ada" else "training.networks_stylegan2")
    print(f"reference module: {N.__file__}")
    tol = 1e-5
    for ci, c in enumerate(_NV_CONFIGS):
        tag = f"cfg{ci} {c['res']}px clamp={c['conv_clamp']} fp16_res={c['num_fp16_res']}"
        torch.manual_seed(ci)
        G = _their_generator(N, kind, c).eval()
        _randomize(G, 100 + ci)
        with torch.no_grad():
            G.mapping.w_avg.copy_(torch.randn(c["w"]) * 0.5)
        ours = Generator(_our_config(c)).eval()
        ours.load_state_dict(_state_without_filters(G), strict=True)
        z = torch.randn(4, c["z"], generator=torch.Generator().manual_seed(7))
        with torch.no_grad():
            for psi, cutoff in ((1.0, None), (0.7, None), (0.5, 4)):
                report(f"{tag} mapping psi={psi} cutoff={cutoff}", G.mapping(z, None, truncation_psi=psi,
                       truncation_cutoff=cutoff), ours.mapping(z, psi, cutoff), tol)
            ws = torch.randn(3, G.num_ws, c["w"], generator=torch.Generator().manual_seed(8))
            names = [f"b{r}" for r in G.synthesis.block_resolutions]
            store, handles = _block_outputs(G.synthesis, names)
            img_ref = G.synthesis(ws, noise_mode="const", force_fp32=True)
            for h in handles:
                h.remove()
            out = ours.synthesize(ws)
            report(f"{tag} W+ image", img_ref, out.image, tol)
            report(f"{tag} W+ features (all blocks)", torch.cat([store[n].flatten() for n in names]),
                   torch.cat([f.flatten() for f in out.features]), tol)
            report(f"{tag} z→image psi=0.7", G(z, None, truncation_psi=0.7, noise_mode="const", force_fp32=True),
                   ours(z, truncation_psi=0.7), tol)
            report(f"{tag} noise_mode=none", G.synthesis(ws, noise_mode="none", force_fp32=True),
                   ours.synthesize(ws, noise_mode="none").image, tol)
            # features of the first 3 blocks only (stop_after_block) equal the full run's
            part = ours.synthesize(ws, stop_after_block=3, render=False)
            report(f"{tag} stop_after_block=3 features", store[names[2]], part.features[-1], tol)

        for gs in (4, 2, None):
            D = N.Discriminator(c_dim=0, img_resolution=c["res"], img_channels=3, channel_base=c["channel_base"],
                                channel_max=c["channel_max"], num_fp16_res=c["num_fp16_res"],
                                conv_clamp=c["conv_clamp"], epilogue_kwargs=dict(mbstd_group_size=gs)).eval()
            _randomize(D, 200 + ci)
            od = Discriminator(DiscriminatorConfig(resolution=c["res"], channel_base=c["channel_base"],
                                                   channel_max=c["channel_max"], conv_clamp=c["conv_clamp"],
                                                   mbstd_group_size=gs)).eval()
            od.load_state_dict(_state_without_filters(D), strict=True)
            img = torch.randn(4, 3, c["res"], c["res"], generator=torch.Generator().manual_seed(9))
            names = [f"b{r}" for r in D.block_resolutions]
            with torch.no_grad():
                store, handles = _block_outputs(D, names)
                logits = D(img, None, force_fp32=True)
                for h in handles:
                    h.remove()
                ours_logits, feats = od(img, return_features=True)
            report(f"{tag} D logits (mbstd group {gs})", logits, ours_logits, tol)
            if gs == 4:
                report(f"{tag} D block features", torch.cat([store[n].flatten() for n in names]),
                       torch.cat([f.flatten() for f in feats]), tol)

    # -- 2. a snapshot pickled as the training loop does it -------------------------------------
    dnnlib = importlib.import_module("dnnlib")
    c = _NV_CONFIGS[1]
    torch.manual_seed(11)
    if kind == "ada":
        G_kwargs = dict(z_dim=c["z"], w_dim=c["w"], mapping_kwargs=dnnlib.EasyDict(num_layers=c["map"]),
                        synthesis_kwargs=dnnlib.EasyDict(channel_base=c["channel_base"], channel_max=c["channel_max"],
                                                         num_fp16_res=c["num_fp16_res"], conv_clamp=c["conv_clamp"]))
    else:   # train.py of the StyleGAN3 repo: flat kwargs, conv_clamp left to its default (256)
        G_kwargs = dict(z_dim=c["z"], w_dim=c["w"], mapping_kwargs=dnnlib.EasyDict(num_layers=c["map"]),
                        channel_base=c["channel_base"], channel_max=c["channel_max"],
                        fused_modconv_default="inference_only")
    common = dict(c_dim=0, img_resolution=c["res"], img_channels=3)
    D_kwargs = dict(block_kwargs=dnnlib.EasyDict(), mapping_kwargs=dnnlib.EasyDict(),
                    epilogue_kwargs=dnnlib.EasyDict(mbstd_group_size=4), channel_base=c["channel_base"],
                    channel_max=c["channel_max"], num_fp16_res=c["num_fp16_res"], conv_clamp=c["conv_clamp"])
    G = N.Generator(**G_kwargs, **common).train().requires_grad_(False)
    D = N.Discriminator(**D_kwargs, **common).train().requires_grad_(False)
    _randomize(G, 300)
    _randomize(D, 301)
    G_ema = copy.deepcopy(G).eval()
    with torch.no_grad():
        for p in G_ema.parameters():
            p.add_(0.01)
        G_ema.mapping.w_avg.copy_(torch.randn(c["w"]) * 0.5)
    try:
        aug = importlib.import_module("training.augment").AugmentPipe(xflip=1, rotate90=1, xint=1, scale=1,
                                                                     rotate=1, aniso=1, xfrac=1, brightness=1,
                                                                     contrast=1, lumaflip=1, hue=1, saturation=1)
    except Exception as exc:                       # pragma: no cover - depends on the checkout
        print(f"AugmentPipe not built ({exc}); snapshot without it")
        aug = None
    tsk = dnnlib.EasyDict(class_name="training.dataset.ImageFolderDataset", path="/data/set.zip", use_labels=False,
                          max_size=1000, xflip=False, resolution=c["res"], random_seed=0)
    snapshot = dict(G=G, D=D, G_ema=G_ema, augment_pipe=aug, training_set_kwargs=dict(tsk))
    for key, value in snapshot.items():
        if isinstance(value, torch.nn.Module):
            snapshot[key] = copy.deepcopy(value).eval().requires_grad_(False).cpu()
    for protocol in (3, 4):
        path = out_dir / f"{kind}-snapshot-p{protocol}.pkl"
        with open(path, "wb") as f:
            pickle.dump(snapshot, f, protocol=protocol)
        with open(path, "rb") as f:
            theirs = pickle.load(f)               # trusted: written just above by their code
        loaded = load_checkpoint(path)
        z = torch.randn(4, c["z"], generator=torch.Generator().manual_seed(12))
        with torch.no_grad():
            img = theirs["G_ema"](z, None, truncation_psi=0.8, noise_mode="const", force_fp32=True)
            report(f"snapshot p{protocol}: G_ema image via our restricted loader", img,
                   loaded.G(z, truncation_psi=0.8), tol)
            report(f"snapshot p{protocol}: D logits via our restricted loader",
                   theirs["D"](img, None, force_fp32=True), loaded.D(img), tol)
        verdict(f"snapshot p{protocol}: config read from embedded code",
                loaded.G.cfg.conv_clamp == (256 if kind == "sg3" else c["conv_clamp"]) and not loaded.info["warnings"],
                f"conv_clamp={loaded.G.cfg.conv_clamp} code={loaded.info['code']!r} warnings={loaded.info['warnings']}")

    # -- 3. structure: their pickle vs our fixture builder's ----------------------------------
    try:
        nf = _fixtures()
    except Exception as exc:                       # pragma: no cover
        verdict("pickle structure vs tests/nvidia_fixtures.py", False, f"fixture builder not importable: {exc}")
        nf = None
    if nf is not None:
        fx = nf.network_pickle_bytes(loaded.G, loaded.D, variant="ada" if kind == "ada" else "sg3repo", protocol=4)
        real = (out_dir / f"{kind}-snapshot-p4.pkl").read_bytes()
        _compare_structure(real, fx)

    # -- 4. TensorFlow layout through their legacy.py --------------------------------------------
    if nf is not None:
        legacy = importlib.import_module("legacy")
        from dragd.daemon.model.stylegan2 import DiscriminatorConfig, GeneratorConfig

        torch.manual_seed(13)
        gcfg = GeneratorConfig(resolution=32, z_dim=16, w_dim=16, channel_base=512, channel_max=32, mapping_layers=3)
        src_G = Generator(gcfg).eval()
        _randomize(src_G, 400)
        with torch.no_grad():
            src_G.mapping.w_avg.copy_(torch.randn(16))
        src_D = Discriminator(DiscriminatorConfig(resolution=32, channel_base=512, channel_max=32)).eval()
        _randomize(src_D, 401)
        path = out_dir / f"{kind}-tf-layout.pkl"
        path.write_bytes(nf.tf_pickle_bytes(src_G, src_D, protocol=4))
        import warnings
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with open(path, "rb") as f:
                theirs = legacy.load_network_pkl(f)   # their _LegacyUnpickler + convert_tf_generator
        loaded = load_checkpoint(path)
        z = torch.randn(4, 16, generator=torch.Generator().manual_seed(14))
        with torch.no_grad():
            img = theirs["G_ema"](z, None, truncation_psi=0.7, noise_mode="const", force_fp32=True)
            report("TF layout: their legacy.py conversion vs ours (image)", img, loaded.G(z, truncation_psi=0.7), tol)
            report("TF layout: their legacy.py conversion vs ours (D logits)", theirs["D"](img, None, force_fp32=True),
                   loaded.D(img), tol)
        # legacy.py's output pickled again: the layout of converted zoo files (self-distilled lions, …)
        path2 = out_dir / f"{kind}-tf-converted.pkl"
        with open(path2, "wb") as f:
            pickle.dump(theirs, f)
        loaded2 = load_checkpoint(path2)
        with torch.no_grad():
            report("legacy.py-converted pickle via our loader (image)", img, loaded2.G(z, truncation_psi=0.7), tol)
            report("legacy.py-converted pickle via our loader (D logits)", theirs["D"](img, None, force_fp32=True),
                   loaded2.D(img), tol)
        print(f"legacy.py-converted G init kwargs: {dict(theirs['G_ema'].init_kwargs)}")

    # -- 5. a StyleGAN3 pickle is refused ----------------------------------------------------
    if kind == "sg3":
        if getattr(sys.modules.get("scipy"), "__dragd_stub__", False):
            verdict("StyleGAN3 pickle refused with a clear error", True, "skipped: needs scipy")
        else:
            from dragd.daemon.model.checkpoints import CheckpointError
            N3 = importlib.import_module("training.networks_stylegan3")
            G3 = N3.Generator(z_dim=16, c_dim=0, w_dim=16, img_resolution=16, img_channels=3, channel_base=512,
                              channel_max=32, mapping_kwargs=dnnlib.EasyDict(num_layers=2)).eval()
            path = out_dir / "stylegan3.pkl"
            with open(path, "wb") as f:
                pickle.dump(dict(G=G3, D=None, G_ema=G3, augment_pipe=None, training_set_kwargs=None), f)
            try:
                load_checkpoint(path)
                verdict("StyleGAN3 pickle refused with a clear error", False, "it loaded")
            except CheckpointError as exc:
                verdict("StyleGAN3 pickle refused with a clear error", "StyleGAN3" in str(exc), str(exc)[:90])


# ---------------------------------------------------------------------------------------------
# Golden tensors from NVIDIA's code alone (--write-golden), for tests/test_nvidia_golden.py.
# Two tiny configs at 16 px: the same code paths as a 1024-px network (const first block,
# 2x-up blocks, skip toRGB, residual D blocks, minibatch stddev), a few hundred KB in all.

_GOLDEN_CONFIGS = {
    "plain": dict(res=16, z=12, w=16, map=2, channel_base=192, channel_max=12, conv_clamp=None,
                  num_fp16_res=0),
    # channels change between blocks (16, 16, 8), a hidden mapping width, clamping that
    # bites (activations of these random weights reach ~5), fp16 layers run in fp32
    "clamp": dict(res=16, z=16, w=12, map=3, layer_features=20, channel_base=128, channel_max=16,
                  conv_clamp=1.0, num_fp16_res=2),
}


def write_nvidia_golden(ref: Path, out: Path) -> None:
    import torch
    from safetensors.torch import save_file

    N = importlib.import_module("training.networks")
    print(f"reference module: {N.__file__}")
    tensors = {}
    for ci, (tag, c) in enumerate(_GOLDEN_CONFIGS.items()):
        def put(name, t, tag=tag):
            tensors[f"{tag}/{name}"] = t.detach().to(torch.float32).contiguous().clone()

        torch.manual_seed(1000 + ci)                 # noise_const buffers
        G = _their_generator(N, "ada", c).eval()
        _randomize(G, 1100 + ci)
        with torch.no_grad():
            G.mapping.w_avg.copy_(torch.randn(c["w"]) * 0.5)
            for name, p in G.mapping.named_parameters():
                if name.endswith("weight"):     # stored ÷ lr_multiplier 0.01, as trained ones are;
                    p.mul_(100)                 # else w hardly depends on z (|w − w_avg| ~ 0.01)
        gen = torch.Generator().manual_seed(1200 + ci)
        z = torch.randn(3, c["z"], generator=gen)
        ws = torch.randn(2, G.num_ws, c["w"], generator=gen)
        for k, v in _state_without_filters(G).items():
            put(f"G/{k}", v)
        put("in/z", z)
        put("in/ws", ws)
        names = [f"b{r}" for r in G.synthesis.block_resolutions]
        with torch.no_grad():
            for psi, cutoff in ((1.0, None), (0.7, None), (0.5, 2)):
                put(f"mapping/psi{psi}_cutoff{cutoff}", G.mapping(z, None, truncation_psi=psi,
                                                                   truncation_cutoff=cutoff))
            store, handles = _block_outputs(G.synthesis, names)
            put("synthesis/image", G.synthesis(ws, noise_mode="const", force_fp32=True))
            for h in handles:
                h.remove()
            for n in names:
                put(f"synthesis/{n}", store[n])
            put("synthesis/image_noise_none", G.synthesis(ws, noise_mode="none", force_fp32=True))
            put("G/image_psi0.7", G(z, None, truncation_psi=0.7, noise_mode="const", force_fp32=True))
        # d(sum(image * proj))/d(ws) through their (eval, fused) path: our autograd path differs
        proj = torch.randn(2, 3, c["res"], c["res"], generator=gen)
        ws_g = ws.clone().requires_grad_(True)
        (G.synthesis(ws_g, noise_mode="const", force_fp32=True) * proj).sum().backward()
        put("in/proj", proj)
        put("synthesis/grad_ws", ws_g.grad)

        img = torch.randn(4, 3, c["res"], c["res"], generator=gen)
        put("in/d_img", img)
        d_names = None
        for gs in (4, 2):
            D = N.Discriminator(c_dim=0, img_resolution=c["res"], img_channels=3, channel_base=c["channel_base"],
                                channel_max=c["channel_max"], num_fp16_res=c["num_fp16_res"],
                                conv_clamp=c["conv_clamp"], epilogue_kwargs=dict(mbstd_group_size=gs)).eval()
            if gs == 4:
                _randomize(D, 1300 + ci)
                d_state = D.state_dict()
                for k, v in _state_without_filters(D).items():
                    put(f"D/{k}", v)
                d_names = [f"b{r}" for r in D.block_resolutions]
            else:                                    # the same weights, another group size
                D.load_state_dict(d_state, strict=True)
            with torch.no_grad():
                store, handles = _block_outputs(D, d_names)
                put(f"D/logits_group{gs}", D(img, None, force_fp32=True))
                for h in handles:
                    h.remove()
            if gs == 4:
                for n in d_names:
                    put(f"D/features/{n}", store[n])
    commit = subprocess.run(["git", "-C", str(ref), "rev-parse", "HEAD"], capture_output=True,
                            text=True).stdout.strip() or "unknown"
    # one metadata key: safetensors writes several in hash order, and the same tensors should
    # give the same bytes (regenerating leaves git with nothing to show)
    meta = {"golden": json.dumps({
        "configs": _GOLDEN_CONFIGS,
        "reference": f"NVlabs/stylegan2-ada-pytorch {commit} training/networks.py",
        "command": GOLDEN_COMMAND,
        "torch": torch.__version__,
    }, sort_keys=True)}
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out), metadata=meta)
    print(f"wrote {len(tensors)} tensors ({sum(t.numel() for t in tensors.values())} floats, "
          f"{out.stat().st_size} bytes) to {out}; reference {commit}")


def _skeleton(data: bytes):
    """Globals named and the persistent-object tree of a network pickle, read without executing it."""
    from dragd.daemon.model import checkpoints as ck

    names = []

    class Logging(ck.RestrictedUnpickler):
        def find_class(self, module, name):
            # numpy 2 writes numpy._core.*, the numpy 1.x of the real checkpoints numpy.core.*
            names.append(f"{module.replace('numpy._core', 'numpy.core')}.{name}")
            return super().find_class(module, name)

    obj = Logging(io.BytesIO(data)).load()
    hook_like = ("hooks", "hook", "_with_kwargs", "_always_called")
    tree = {}

    def walk(path, rec):
        st = rec.state
        tree[path] = {
            "class": rec.class_name,
            "parameters": sorted(st.get("_parameters", {})),
            "buffers": sorted(k for k in st.get("_buffers", {}) if k not in st.get("_non_persistent_buffers_set", ())),
            "modules": sorted(k for k, v in st.get("_modules", {}).items() if v is not None),
            "container types": sorted({type(st.get(k)).__name__ for k in ("_parameters", "_buffers", "_modules")}),
            "module state keys": sorted(k for k in st if k.startswith("_") and not k.endswith(hook_like)
                                        and k not in ("_non_persistent_buffers_set",)),
        }
        for k, v in st.get("_modules", {}).items():
            if v is not None:
                walk(f"{path}.{k}", v)

    top = {}
    for key, value in obj.items():
        top[key] = type(value).__name__
        if key in ("G_ema", "D") and isinstance(value, ck.PersistentRecord):
            walk(key, value)
            tree[key]["init kwargs"] = sorted(value.init_kwargs)
            tree[key]["init kwargs types"] = sorted({type(v).__name__ for v in value.init_kwargs.values()})
    return collections.Counter(names), top, tree


def _compare_structure(real: bytes, fixture: bytes) -> None:
    g_real, top_real, tree_real = _skeleton(real)
    g_fx, top_fx, tree_fx = _skeleton(fixture)
    print("globals in the reference-made snapshot: " + ", ".join(sorted(g_real)))
    verdict("structure: same set of globals as the fixture builder", set(g_real) == set(g_fx),
            f"only real: {sorted(set(g_real) - set(g_fx))} only fixture: {sorted(set(g_fx) - set(g_real))}")
    same_top = {k: v for k, v in top_real.items() if k != "augment_pipe"} == \
               {k: v for k, v in top_fx.items() if k != "augment_pipe"}
    verdict("structure: same top-level keys and kinds", same_top and set(top_real) == set(top_fx),
            f"{top_real} vs {top_fx}")
    diffs = []
    for path in sorted(set(tree_real) | set(tree_fx)):
        a, b = tree_real.get(path), tree_fx.get(path)
        if a is None or b is None:
            diffs.append(f"{path}: only in {'fixture' if a is None else 'real'}")
            continue
        for field in ("class", "parameters", "buffers", "modules", "init kwargs", "init kwargs types"):
            if a.get(field) != b.get(field):
                diffs.append(f"{path} {field}: real {a.get(field)} fixture {b.get(field)}")
        # the real file comes from today's torch (dict containers, more hook fields); the
        # fixture mimics the 2020-2021 files (OrderedDict containers): both are accepted
    verdict("structure: same module tree, parameter/buffer names, init kwargs", not diffs,
            f"{len(tree_real)} modules" if not diffs else "; ".join(diffs[:6]))
    print("module-state containers: real " + str(tree_real["G_ema"]["container types"]) +
          ", fixture " + str(tree_fx["G_ema"]["container types"]))


# =============================================================================================
# rosinality


def rosinality_worker(ref: Path, out_dir: Path) -> None:
    import torch
    import torch.utils.cpp_extension

    torch.utils.cpp_extension.load = lambda *a, **k: types.SimpleNamespace()   # CPU paths never use it
    model = importlib.import_module("model")
    print(f"reference module: {model.__file__}")
    from dragd.daemon.model.checkpoints import load_checkpoint

    tol = 1e-4
    for size, style_dim, n_mlp, cm in ((32, 64, 3, 2), (64, 32, 2, 1)):
        tag = f"{size}px style_dim={style_dim} n_mlp={n_mlp} channel_multiplier={cm}"
        torch.manual_seed(size)
        g = model.Generator(size, style_dim, n_mlp, channel_multiplier=cm).eval()
        d = model.Discriminator(size, channel_multiplier=cm).eval()
        _randomize(g, 500 + size)
        _randomize(d, 600 + size)
        latent_avg = torch.randn(style_dim) * 0.5
        path = out_dir / f"rosinality-{size}.pt"
        torch.save({"g": g.state_dict(), "d": d.state_dict(), "g_ema": g.state_dict(), "latent_avg": latent_avg,
                    "args": argparse.Namespace(size=size, channel_multiplier=cm, n_mlp=n_mlp, latent=style_dim),
                    "g_optim": {}, "d_optim": {}}, path)
        loaded = load_checkpoint(path)
        z = torch.randn(3, style_dim, generator=torch.Generator().manual_seed(15))
        with torch.no_grad():
            img, _ = g([z], randomize_noise=False)
            report(f"{tag} z→image", img, loaded.G(z), tol)
            img_t, _ = g([z], truncation=0.7, truncation_latent=latent_avg[None], randomize_noise=False)
            report(f"{tag} truncation 0.7 (latent_avg)", img_t, loaded.G(z, truncation_psi=0.7), tol)
            ws = torch.randn(3, g.n_latent, style_dim, generator=torch.Generator().manual_seed(16))
            img_w, _ = g([ws], input_is_latent=True, randomize_noise=False)
            report(f"{tag} W+ image", img_w, loaded.G.synthesize(ws).image, tol)
            x = torch.randn(4, 3, size, size, generator=torch.Generator().manual_seed(17))
            report(f"{tag} D logits", d(x), loaded.D(x), tol)


if __name__ == "__main__":
    sys.exit(main())

"""The StyleGAN2 trainer (lab/train.py): smoke run, resume, lazy R1, EMA, export, presets.

Everything runs the `tiny` preset (32 px) on CPU against a stand-in data function defined
here, so the tests do not depend on the portrait renderer's speed or looks.
"""
from __future__ import annotations

import math

import pytest
import torch

from dragd.daemon.model.stylegan2 import Generator
from dragd.lab import train as T


def standin_render(seeds, resolution=32, device="cpu"):
    """A coloured disc with two dark dots on a coloured background, one image per seed."""
    images = []
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, resolution), torch.linspace(-1, 1, resolution),
                            indexing="ij")
    for seed in seeds:
        r = torch.rand(8, generator=torch.Generator().manual_seed(int(seed)))
        cx, cy, rad = (r[0] - 0.5) * 0.4, (r[1] - 0.5) * 0.4, 0.4 + 0.3 * r[2]
        disc = ((xx - cx) ** 2 + (yy - cy) ** 2 < rad ** 2).float()
        img = (r[3:6] * 2 - 1).view(3, 1, 1) * (1 - disc) + torch.tensor([0.7, 0.3, 0.1]).view(3, 1, 1) * disc
        for ex in (-0.4, 0.4):
            dot = ((xx - cx - ex * rad) ** 2 + (yy - cy + 0.3 * rad) ** 2 < (0.12 * rad) ** 2).float()
            img = img * (1 - dot) - dot
        images.append(img)
    return torch.stack(images).to(device), torch.zeros(len(seeds), 2, 2, device=device)


def tiny(**overrides):
    return T.get_preset("tiny", **{"data": "unused", **overrides})


def quiet(_msg):
    pass


def all_finite(stats):
    return all(math.isfinite(v) for v in stats.values() if isinstance(v, float))


def read_stats(path):
    import json

    return [json.loads(line) for line in path.read_text().splitlines()]


def test_smoke_run_resumes_exactly_and_keeps_counting(tmp_path):
    run = tmp_path / "run"
    tr = T.train(tiny(), kimg=1, out=run, data_fn=standin_render, max_steps=3, log=quiet)
    ckpt = run / T.CKPT_NAME
    assert ckpt.is_file() and (run / "samples-latest.png").is_file() and (run / "reals.png").is_file()
    assert (tr.step_idx, tr.nimg) == (3, 12)

    tr2 = T.train(None, kimg=1, out=run, resume=ckpt, data_fn=standin_render, max_steps=2, log=quiet)
    assert (tr2.step_idx, tr2.nimg) == (5, 20)
    stats = read_stats(run / "stats.jsonl")
    assert [s["step"] for s in stats] == [0, 1, 2, 3, 4]
    assert all(all_finite(s) for s in stats)
    assert len(tr2.commands) == 2

    # 3 + 2 resumed steps land exactly where 5 uninterrupted steps do (weights, Adam, RNG, data).
    straight = T.train(tiny(), kimg=1, out=tmp_path / "straight", data_fn=standin_render,
                       max_steps=5, log=quiet)
    for a, b in zip(tr2.G_ema.state_dict().values(), straight.G_ema.state_dict().values()):
        assert torch.equal(a, b)
    for a, b in zip(tr2.D.state_dict().values(), straight.D.state_dict().values()):
        assert torch.equal(a, b)


def test_r1_runs_on_the_lazy_interval_only():
    tr = T.Trainer(tiny(r1_interval=3), data_fn=standin_render)
    steps = [tr.step() for _ in range(7)]
    assert [s["step"] for s in steps if "r1_penalty" in s] == [0, 3, 6]
    assert all(s["r1_penalty"] >= 0 and all_finite(s) for s in steps if "r1_penalty" in s)
    # Lazy-regularisation compensation of the D optimiser: lr·c, betas**c with c = 3/4.
    group = tr.D_opt.param_groups[0]
    assert group["lr"] == pytest.approx(0.0025 * 3 / 4)
    assert group["betas"][1] == pytest.approx(0.99 ** (3 / 4))
    # No path-length regularisation by default: G's optimiser is uncompensated.
    assert tr.G_opt.param_groups[0]["lr"] == pytest.approx(0.0025)
    assert not any("pl_penalty" in s for s in steps)


def test_optional_path_length_regularisation_runs_lazily():
    tr = T.Trainer(tiny(pl_weight=2.0, pl_interval=2), data_fn=standin_render)
    steps = [tr.step() for _ in range(3)]
    assert [s["step"] for s in steps if "pl_penalty" in s] == [0, 2]
    assert all(all_finite(s) for s in steps) and tr.pl_mean > 0
    assert tr.G_opt.param_groups[0]["lr"] == pytest.approx(0.0025 * 2 / 3)


def test_r1_step_changes_d_through_the_penalty():
    """With gamma = 0 the Dreg step is skipped; with gamma > 0 it runs and moves D."""
    base = T.Trainer(tiny(r1_gamma=0.0), data_fn=standin_render)
    assert "r1_penalty" not in base.step()
    reg = T.Trainer(tiny(r1_gamma=10.0), data_fn=standin_render)
    s = reg.step()
    assert s["r1_penalty"] > 0
    # Same seed, same data: the only difference after step 0 is the R1 step.
    diff = [(a - b).abs().max().item() for a, b in zip(base.D.parameters(), reg.D.parameters())]
    assert max(diff) > 0


def test_ema_ramps_up_and_then_lags_behind_g():
    tr = T.Trainer(tiny(ema_kimg=1.0), data_fn=standin_render)
    s0 = tr.step()
    assert s0["ema_beta"] == 0.0                # ramp-up: nothing seen yet → G_ema := G
    for p, q in zip(tr.G.parameters(), tr.G_ema.parameters()):
        assert torch.equal(p, q)
    s1 = tr.step()
    # half-life = min(1 kimg, 0.05 · 4 images) → beta = 0.5 ** (4 / 0.2)
    assert s1["ema_beta"] == pytest.approx(0.5 ** (4 / 0.2))
    for _ in range(3):
        tr.step()
    assert tr.ema_beta() == pytest.approx(0.5 ** (4 / (0.05 * 20)))
    diffs = [(p - q).abs().max().item() for p, q in zip(tr.G.parameters(), tr.G_ema.parameters())]
    assert max(diffs) > 0
    # Buffers (w_avg, noise) follow G exactly; w_avg is tracked during training.
    assert torch.equal(tr.G.mapping.w_avg, tr.G_ema.mapping.w_avg)
    assert tr.G.mapping.w_avg.abs().sum() > 0


def test_style_mixing_switches_latents_at_a_cutoff():
    tr = T.Trainer(tiny(style_mixing_prob=1.0), data_fn=standin_render)
    ws = tr.map_with_mixing(3, update_w_avg=False)
    same_as_first = [(ws[:, i] - ws[:, 0]).abs().max().item() == 0 for i in range(ws.shape[1])]
    cutoff = same_as_first.index(False)
    assert 1 <= cutoff < ws.shape[1] and not any(same_as_first[cutoff:])
    tr = T.Trainer(tiny(style_mixing_prob=0.0), data_fn=standin_render)
    ws = tr.map_with_mixing(3, update_w_avg=False)
    assert torch.equal(ws, ws[:, :1].expand_as(ws))


def test_export_loads_back_and_matches_the_ema_generator(tmp_path):
    checkpoints = pytest.importorskip("dragd.daemon.model.checkpoints")
    run = tmp_path / "run"
    tr = T.train(tiny(), kimg=1, out=run, data_fn=standin_render, max_steps=3, log=quiet)
    ws = tr.G_ema.mapping(torch.randn(2, tr.cfg.z_dim, generator=torch.Generator().manual_seed(5)))
    with torch.no_grad():
        expected = tr.G_ema.synthesis(ws, noise_mode="const").image

    out32 = tmp_path / "g32.safetensors"
    T.export(run / T.CKPT_NAME, out32, dtype=torch.float32, log=quiet)
    loaded = checkpoints.load_checkpoint(out32)
    assert isinstance(loaded.G, Generator) and loaded.D is not None
    assert loaded.G.cfg == tr.G_ema.cfg
    with torch.no_grad():
        got = loaded.G.eval().synthesis(ws, noise_mode="const").image
    assert torch.equal(got, expected)
    info = loaded.info
    assert info["preset"] == "tiny" and info["placeholder"] == "false"
    assert info["kimg"] == "0.012" and info["steps"] == "3"

    # fp16 export: identical to the EMA generator with its weights rounded to fp16.
    out16 = tmp_path / "g16.safetensors"
    T.export(run / T.CKPT_NAME, out16, log=quiet)
    assert out16.stat().st_size < out32.stat().st_size * 0.6
    rounded = Generator(tr.G_ema.cfg).eval()
    rounded.load_state_dict({k: v.half().float() if v.is_floating_point() else v
                             for k, v in tr.G_ema.state_dict().items()})
    loaded16 = checkpoints.load_checkpoint(out16).G.eval().float()
    with torch.no_grad():
        a = rounded.synthesis(ws.half().float(), noise_mode="const").image
        b = loaded16.synthesis(ws.half().float(), noise_mode="const").image
    assert torch.equal(a, b)

    T.sample_sheet(out16, tmp_path / "sheet.png", n=4, columns=4, psis=(1.0, 0.5))
    from PIL import Image

    assert Image.open(tmp_path / "sheet.png").size == (4 * 32, 2 * 32)


def test_cli_trains_and_exports(tmp_path, monkeypatch):
    monkeypatch.setattr(T, "resolve_data_fn", lambda spec: standin_render)
    T.main(["--preset", "tiny", "--kimg", "0.008", "--out", str(tmp_path / "cli")])
    state = T.load_training_checkpoint(tmp_path / "cli" / T.CKPT_NAME)
    assert state["step"] == 2 and state["commands"][0].startswith("python -m dragd.lab.train --preset tiny")
    pytest.importorskip("dragd.daemon.model.checkpoints", reason="export needs dragd.daemon.model.checkpoints")
    T.main(["export", str(tmp_path / "cli" / T.CKPT_NAME), str(tmp_path / "cli.safetensors"), "--no-d"])
    assert (tmp_path / "cli.safetensors").is_file()


def test_presets_fit_the_size_budget():
    for name in T.PRESETS:
        cfg = T.get_preset(name)
        G = Generator(cfg.generator_config())
        assert T.state_bytes(G) <= 16 * 2**20, name
        assert cfg.batch % min(cfg.mbstd_group, cfg.batch) == 0
    ph = T.get_preset("placeholder")
    assert ph.resolution == 64 and ph.placeholder
    assert T.get_preset("default128").resolution == 128
    assert 256 <= T.get_preset("default128").w_dim <= 512
    with pytest.raises(KeyError):
        T.get_preset("nope")


def test_default_data_is_the_portrait_renderer():
    portraits = pytest.importorskip("dragd.lab.portraits")
    fn = T.resolve_data_fn(T.DEFAULT_DATA)
    assert fn is portraits.render_seeds
    reals = T.fetch_reals(fn, [1, 2], 32, torch.device("cpu"))
    assert reals.shape == (2, 3, 32, 32) and reals.min() >= -1 and reals.max() <= 1


def latent_standin(z, resolution=32):
    """A disc whose centre and colour are smooth functions of the first latent coordinates."""
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, resolution), torch.linspace(-1, 1, resolution),
                            indexing="ij")
    cx, cy = (0.3 * torch.tanh(z[:, 0]))[:, None, None], (0.3 * torch.tanh(z[:, 1]))[:, None, None]
    disc = torch.sigmoid((0.5 - ((xx - cx) ** 2 + (yy - cy) ** 2).sqrt()) * 20)[:, None]
    colour = torch.tanh(z[:, 2:5])[:, :, None, None]
    return disc * colour - (1 - disc) * 0.5, None


def test_distillation_regresses_each_latent_onto_its_own_target(tmp_path):
    cfg = tiny(objective="distill", batch=8, g_lr=0.01, beta1=0.9, style_mixing_prob=0.0,
               mapping_lr_multiplier=0.1, ema_kimg=0.001)
    tr = T.Trainer(cfg, data_fn=latent_standin)
    z = torch.randn(16, cfg.z_dim, generator=torch.Generator().manual_seed(5))
    target = latent_standin(T.normalize_latents(z), 32)[0]

    def error():
        with torch.no_grad():
            img = tr.G.synthesis(tr.G.mapping(z), noise_mode="const").image
        return float((img - target).abs().mean())

    before = error()
    for _ in range(150):
        stats = tr.step()
    assert set(stats) >= {"loss_G", "l1", "grad_l1"} and "loss_D" not in stats
    assert error() < 0.6 * before
    # the discriminator takes no part in distillation
    fresh = T.Trainer(cfg, data_fn=latent_standin)
    for a, b in zip(tr.D.state_dict().values(), fresh.D.state_dict().values()):
        assert torch.equal(a, b)


def test_distilled_export_says_how_it_was_trained(tmp_path):
    pytest.importorskip("safetensors")
    run = tmp_path / "run"
    T.train(tiny(objective="distill", style_mixing_prob=0.0), kimg=1, out=run, data_fn=latent_standin,
            max_steps=2, log=quiet)
    assert (run / "reals.png").is_file()
    info = T.export(run / T.CKPT_NAME, tmp_path / "m.safetensors", with_d=False, log=quiet)["info"]
    assert "distillation" in info["trainer"] and info["placeholder"] == "false"
    info = T.export(run / T.CKPT_NAME, tmp_path / "p.safetensors", with_d=False, placeholder=True,
                    log=quiet)["info"]
    assert info["placeholder"] == "true"


def test_multiscale_and_gradient_l1_see_what_they_should():
    a = torch.zeros(1, 3, 8, 8)
    checker = (torch.arange(8)[:, None] + torch.arange(8)[None, :]) % 2 * 2.0 - 1.0
    b = checker.expand(1, 3, 8, 8)
    # a checkerboard averages to zero: only the full-resolution term sees it …
    assert T.multiscale_l1(a, b, 3) == pytest.approx(1.0)
    # … while the gradient term sees every edge
    assert T.gradient_l1(a, b) == pytest.approx(4.0)
    assert T.gradient_l1(b + 0.3, b) == 0


def test_growing_copies_the_low_resolution_blocks_and_refuses_other_architectures(tmp_path):
    small = T.train(tiny(objective="distill", style_mixing_prob=0.0, resolution=16), kimg=1,
                    out=tmp_path / "s16", data_fn=latent_standin, max_steps=3, log=quiet)
    big = T.Trainer(tiny(objective="distill", style_mixing_prob=0.0), data_fn=latent_standin)
    copied, fresh = big.grow_from(tmp_path / "s16" / T.CKPT_NAME)
    assert copied > 0 and fresh > 0
    ours, theirs = big.G_ema.state_dict(), small.G_ema.state_dict()
    for key in theirs:
        assert key in ours and torch.equal(ours[key], theirs[key]), key
    assert [k for k in ours if k not in theirs] and all(".b32." in k or "b32" in k for k in ours if k not in theirs)
    other = T.Trainer(tiny(objective="distill", style_mixing_prob=0.0, w_dim=16), data_fn=latent_standin)
    with pytest.raises(ValueError, match="same z_dim"):
        other.grow_from(tmp_path / "s16" / T.CKPT_NAME)


def test_distillation_with_an_adversarial_term_trains_d_on_the_targets():
    cfg = tiny(objective="distill", style_mixing_prob=0.0, distill_adv_weight=0.1, r1_interval=2)
    tr = T.Trainer(cfg, data_fn=latent_standin)
    d_before = [p.clone() for p in tr.D.parameters()]
    stats = [tr.step() for _ in range(3)]
    assert all({"adv", "loss_D", "D_real", "D_fake"} <= set(s) for s in stats)
    assert "r1_penalty" in stats[0] and "r1_penalty" not in stats[1]
    assert all(all_finite(s) for s in stats)
    assert any(not torch.equal(a, b) for a, b in zip(d_before, tr.D.parameters()))
    late = T.Trainer(tiny(objective="distill", style_mixing_prob=0.0, distill_adv_weight=0.1,
                          distill_adv_start_kimg=0.008), data_fn=latent_standin)
    assert ["adv" in late.step() for _ in range(3)] == [False, False, True]   # 4 images a step

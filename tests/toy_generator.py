"""A tiny differentiable stand-in for StyleGAN2 to test the drag engine end to end.

Two textured blobs on a textured background. The blob centres are a linear function of the
mean of the first `position_rows` W+ rows, so a drag that optimises those rows can move them;
later rows only tint the image. Every "block" k (2^(k+1) square, as in StyleGAN2) returns the
same analytic feature channels evaluated on its own pixel grid:

* per blob: its envelope exp(−|u|²/2), u = (x − c)/σ, and a few plane-wave textures in the
  blob's own coordinates times the envelope (they move with the blob and make every point of
  the blob distinguishable, so tracking has something to lock onto);
* background plane waves in image coordinates, faded out under the blobs.

Same duck-typed interface as `dragd.daemon.model.stylegan2.Generator`: `resolution`, `num_ws`,
`w_dim`, `block_resolution(k)`, `synthesize(w, noise_mode, stop_after_block, render)`, and it
accepts split latents `(head, tail)` (`supports_split_latent`).
`centres(w)` gives the true blob centres for measuring what moved.
"""
from __future__ import annotations

import math

import torch

from dragd.daemon.model.stylegan2 import SynthesisOutput


class ToyBlobGenerator:
    def __init__(self, resolution: int = 64, w_dim: int = 8, textures: int = 5, bg_channels: int = 4,
                 position_scale: float = 48.0, position_rows: int = 6, correlation: float = 0.3,
                 seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.resolution, self.w_dim = resolution, w_dim
        self.num_ws = 2 * int(math.log2(resolution)) - 2
        self.num_blocks = int(math.log2(resolution)) - 1
        self.position_rows = min(position_rows, self.num_ws)
        self.sigma = resolution / 14
        self.base = torch.tensor([[0.25, 0.40], [0.78, 0.60]]) * resolution     # [2 blobs, (x, y)]
        a1 = torch.randn(2, w_dim, generator=g)
        a1 = a1 / a1.norm(dim=1, keepdim=True)
        a2 = correlation * a1 + (1 - correlation) * torch.randn(2, w_dim, generator=g)
        a2 = a2 / a2.norm(dim=1, keepdim=True)
        self.A = torch.cat([a1, a2]) * position_scale                          # [4, w_dim]
        # Textures: (direction, frequency, phase) per blob and per background channel.
        ang = torch.rand(2, textures, generator=g) * math.pi
        self.tex_dir = torch.stack([ang.cos(), ang.sin()], -1)                  # [2, T, 2]
        self.tex_freq = 1.0 + 1.5 * torch.rand(2, textures, generator=g)
        self.tex_phase = torch.rand(2, textures, generator=g) * 2 * math.pi
        bang = torch.rand(bg_channels, generator=g) * math.pi
        self.bg_dir = torch.stack([bang.cos(), bang.sin()], -1)                # [B, 2]
        self.bg_freq = (0.3 + 0.4 * torch.rand(bg_channels, generator=g)) / self.sigma
        self.bg_phase = torch.rand(bg_channels, generator=g) * 2 * math.pi
        self.colours = torch.tensor([[0.9, -0.6, -0.4], [-0.5, -0.2, 0.9]])      # [2, 3]
        self.tint = torch.randn(w_dim, 3, generator=g) * 0.05
        self.render_calls = 0
        self.feature_calls = 0
        self.split_calls = 0
        self.supports_split_latent = True             # see dragd.daemon.edit.drag

    # -- the interface the drag engine uses --

    def block_resolution(self, k: int) -> int:
        return 2 ** (k + 1)

    def to_wplus(self, w) -> torch.Tensor:
        if isinstance(w, tuple):                      # split latent: (optimised rows, frozen rows)
            self.split_calls += 1
            w = torch.cat(w, dim=1)
        if w.ndim == 2:
            return w[:, None, :].expand(-1, self.num_ws, -1)
        assert w.shape[1:] == (self.num_ws, self.w_dim), tuple(w.shape)
        return w

    def centres(self, w: torch.Tensor) -> torch.Tensor:
        """Blob centres [N, 2, 2] (blob, (x, y)) in image pixels."""
        ws = self.to_wplus(w)
        m = ws[:, :self.position_rows].mean(dim=1)                            # [N, w_dim]
        return self.base.to(ws) + (m @ self.A.to(ws).t()).reshape(-1, 2, 2)

    def synthesize(self, w: torch.Tensor, noise_mode: str = "const", stop_after_block: int | None = None,
                   render: bool = True) -> SynthesisOutput:
        ws = self.to_wplus(w).to(torch.float32)
        last = self.num_blocks if stop_after_block is None else stop_after_block
        if not 1 <= last <= self.num_blocks:
            raise ValueError(f"stop_after_block must be in 1…{self.num_blocks}, got {stop_after_block}")
        c = self.centres(ws)
        features = [self._features(c, self.block_resolution(k)) for k in range(1, last + 1)]
        self.feature_calls += 1
        image = None
        if render and last == self.num_blocks:
            self.render_calls += 1
            image = self._image(c, ws)
        return SynthesisOutput(image=image, features=features)

    # -- internals --

    def _grid(self, r: int, like: torch.Tensor) -> torch.Tensor:
        ax = (torch.arange(r, dtype=like.dtype, device=like.device) + 0.5) * (self.resolution / r) - 0.5
        yy, xx = torch.meshgrid(ax, ax, indexing="ij")
        return torch.stack([xx, yy], -1)                                       # [r, r, 2]

    def _envelopes(self, c: torch.Tensor, xy: torch.Tensor):
        u = (xy[None, None] - c[:, :, None, None, :]) / self.sigma             # [N, 2, r, r, 2]
        env = torch.exp(-0.5 * u.square().sum(-1))                             # [N, 2, r, r]
        return u, env

    def _features(self, c: torch.Tensor, r: int) -> torch.Tensor:
        xy = self._grid(r, c)
        u, env = self._envelopes(c, xy)
        proj = torch.einsum("nbhwk,btk->nbthw", u, self.tex_dir.to(c))         # [N, 2, T, r, r]
        tex = torch.sin(self.tex_freq.to(c)[None, :, :, None, None] * 2.5 * proj
                        + self.tex_phase.to(c)[None, :, :, None, None]) * env[:, :, None]
        blob = torch.cat([env[:, :, None], tex], dim=2).flatten(1, 2)          # [N, 2(1+T), r, r]
        bg = torch.sin(2 * math.pi * self.bg_freq.to(c)[:, None, None]
                       * (xy @ self.bg_dir.to(c).t()).permute(2, 0, 1) + self.bg_phase.to(c)[:, None, None])
        fade = (1 - env[:, 0]) * (1 - env[:, 1])                               # [N, r, r]
        bg = bg[None] * fade[:, None]
        return torch.cat([blob, bg], dim=1)

    def _image(self, c: torch.Tensor, ws: torch.Tensor) -> torch.Tensor:
        xy = self._grid(self.resolution, c)
        _, env = self._envelopes(c, xy)
        img = torch.einsum("nbhw,bc->nchw", env, self.colours.to(c))
        rest = ws[:, self.position_rows:]
        if rest.shape[1]:
            tint = torch.tanh(rest.mean(dim=1) @ self.tint.to(c))                  # [N, 3]
        else:
            tint = c.new_zeros(c.shape[0], 3)
        return (img + tint[:, :, None, None]).clamp(-1, 1)


def unsplit_generator(G):
    """A copy of G that declines split latents: the engine then passes one W+ tensor, as it
    would to a generator without that capability."""
    import copy

    U = copy.deepcopy(G)
    U.supports_split_latent = False
    return U

"""dragd's own safetensors format (``format=dragd``, ``format_version=1``)."""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

import torch

from ..stylegan2 import Discriminator, DiscriminatorConfig, Generator, GeneratorConfig
from .common import CheckpointError, LoadedModel, _build, _finish


NATIVE_FORMAT = "dragd"

NATIVE_FORMAT_VERSION = "1"

def save_native(path: str | os.PathLike, G: Generator, D: Discriminator | None = None,
                info: dict | None = None, dtype: torch.dtype = torch.float16) -> None:
    """Write G (and D) as dragd safetensors; info values are stored as strings (JSON if not str)."""
    from safetensors.torch import save_file

    if dtype not in (torch.float16, torch.float32):
        raise ValueError("dtype must be torch.float16 or torch.float32")
    tensors = {f"G.{k}": v.detach().to("cpu", dtype).contiguous() for k, v in G.state_dict().items()}
    meta = {}
    for k, v in (info or {}).items():
        meta[str(k)] = v if isinstance(v, str) else json.dumps(v, sort_keys=True, default=str)
    meta.update(format=NATIVE_FORMAT, format_version=NATIVE_FORMAT_VERSION, generator_config=G.cfg.to_json(),
                dtype=str(dtype).removeprefix("torch."))
    if D is not None:
        tensors.update({f"D.{k}": v.detach().to("cpu", dtype).contiguous() for k, v in D.state_dict().items()})
        meta["discriminator_config"] = D.cfg.to_json()
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        save_file(tensors, str(tmp), metadata=meta)
        os.chmod(tmp, 0o644)            # safetensors writes 0600; a model is meant to be shared
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()

def load_native(path: str | os.PathLike, name: str | None = None) -> LoadedModel:
    from safetensors import SafetensorError, safe_open

    name = name or Path(path).name
    what = f"checkpoint {name}"
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            meta = dict(f.metadata() or {})
            if meta.get("format") != NATIVE_FORMAT:
                raise CheckpointError(f"{what} is a safetensors file but not a dragd model (metadata format="
                                      f"{meta.get('format')!r}); convert it with `dragd models convert`")
            if meta.get("format_version") != NATIVE_FORMAT_VERSION:
                raise CheckpointError(f"{what} has dragd format version {meta.get('format_version')!r}; this "
                                      f"dragd reads version {NATIVE_FORMAT_VERSION}: update dragd")
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, ValueError, OSError) as exc:
        msg = str(exc)
        hint = " (truncated or incomplete download?)" if re.search(r"incomplete|truncat|too small|out of bounds|"
                                                                     r"MetadataIncompleteBuffer|InvalidOffset", msg, re.I) else ""
        raise CheckpointError(f"{what} is a damaged safetensors file{hint}: {msg[:200]}") from None
    try:
        gcfg = GeneratorConfig.from_json(meta["generator_config"])
        dcfg = DiscriminatorConfig.from_json(meta["discriminator_config"]) if "discriminator_config" in meta else None
    except (KeyError, ValueError, TypeError) as exc:
        raise CheckpointError(f"{what}: bad model configuration in metadata ({exc})") from None
    g_sd = {k[2:]: v for k, v in tensors.items() if k.startswith("G.")}
    d_sd = {k[2:]: v for k, v in tensors.items() if k.startswith("D.")}
    other = [k for k in tensors if not k.startswith(("G.", "D."))]
    if other:
        raise CheckpointError(f"{what}: unexpected tensors {other[:4]}")
    G = _build(Generator, gcfg, g_sd, what)
    D = None
    if dcfg is not None:
        D = _build(Discriminator, dcfg, d_sd, f"{what} (D)")
    elif d_sd:
        raise CheckpointError(f"{what}: discriminator tensors without discriminator_config")
    info = {k: v for k, v in meta.items() if k not in ("generator_config", "discriminator_config")}
    info["format"] = "dragd"
    info["warnings"] = []
    return LoadedModel(_finish(G), _finish(D), info)

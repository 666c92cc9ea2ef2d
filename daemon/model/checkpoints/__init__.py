"""Checkpoint loading and saving: every supported format → our own Generator/Discriminator.

Supported inputs (the format is sniffed from the file's content, not its extension):

* **NVIDIA network pickles** (StyleGAN2-ADA-PyTorch `training/networks.py`, the StyleGAN3
  repository's `training/networks_stylegan2.py`), as the DragGAN model zoo uses them: a dict
  with ``G``, ``D``, ``G_ema``, ``training_set_kwargs``, ``augment_pipe``. Each network is a
  ``torch_utils.persistence`` object that embeds the Python source of its module and, under
  plain ``pickle``, executes it. We never do that: a restricted unpickler resolves only a short
  list of globals, each to a function of ours that builds inert data (a record of class name,
  init kwargs and state; tensors rebuilt from their raw bytes). The embedded source is only
  *parsed* (``ast``, never executed) to read the defaults of the constructor arguments.
* **NVIDIA TensorFlow pickles** (original StyleGAN2: ``stylegan2-car-config-f.pkl``,
  ``stylegan2-cat-config-f.pkl``): a tuple ``(G, D, Gs)`` of ``dnnlib.tflib.network.Network``
  states holding numpy arrays; converted with the variable mapping of NVIDIA's ``legacy.py``.
* **rosinality** ``.pt`` checkpoints (``g_ema`` state dict, optional ``latent_avg``, ``d``),
  read with ``torch.load(weights_only=True)``.
* **dragd native** ``.safetensors``: metadata ``format=dragd``, ``format_version=1``,
  ``generator_config`` (JSON), optional ``discriminator_config``, free-form info; tensors
  ``G.<name>`` / ``D.<name>`` in fp16 or fp32.

Anything else fails with a `CheckpointError` whose message says what the file is and what to
do. `load_checkpoint(path)` is the one entry point.
"""
from __future__ import annotations

import os
import pickle
import struct
import zipfile
from pathlib import Path

import torch

from .common import CheckpointError, LoadedModel, SUPPORTED
from .unpickler import (ALLOWED_GLOBALS, PersistentRecord, RestrictedUnpickler, TFNetworkRecord,
                        restricted_load)
from .nvidia import _from_nvidia_pickle_dict
from .tensorflow import _from_tf_pickle
from .rosinality import (check_zip_inflation, load_rosinality, rosinality_discriminator_to_ours,
                         rosinality_generator_config, rosinality_to_ours)
from .native import load_native, save_native


def load_network_pickle(path: str | os.PathLike, name: str | None = None) -> LoadedModel:
    """NVIDIA network pickle (PyTorch or TensorFlow StyleGAN2) → our modules, executing nothing."""
    name = name or Path(path).name
    try:
        with open(path, "rb") as f:
            obj = restricted_load(f)
    except CheckpointError as exc:
        raise CheckpointError(f"checkpoint {name} was refused: {exc}. A network pickle may only contain "
                              "StyleGAN network records and tensors; this one asks for something else, so it "
                              "is not loaded (loading it with plain pickle could run arbitrary code)") from None
    except (EOFError, pickle.UnpicklingError) as exc:
        if isinstance(exc, EOFError) or "truncated" in str(exc) or "exhausted" in str(exc):
            raise CheckpointError(f"checkpoint {name} is truncated (incomplete download?): {exc}; "
                                  "download it again") from None
        raise CheckpointError(f"checkpoint {name} is not a valid pickle ({exc})") from None
    except (ValueError, TypeError, AttributeError, IndexError, KeyError, RecursionError, MemoryError,
            OverflowError, RuntimeError) as exc:
        raise CheckpointError(f"checkpoint {name} is a malformed network pickle ({type(exc).__name__}: "
                              f"{str(exc)[:200]})") from None
    try:
        if isinstance(obj, tuple) and len(obj) == 3 and all(isinstance(n, TFNetworkRecord) for n in obj):
            return _from_tf_pickle(obj, name)
        if isinstance(obj, dict) and any(isinstance(v, PersistentRecord) for v in obj.values()):
            return _from_nvidia_pickle_dict(obj, name)
        if isinstance(obj, PersistentRecord):
            return _from_nvidia_pickle_dict({"G_ema": obj}, name)
    except (ValueError, TypeError, AttributeError, IndexError, KeyError, RecursionError, OverflowError) as exc:
        raise CheckpointError(f"checkpoint {name} is a malformed network pickle ({type(exc).__name__}: "
                              f"{str(exc)[:200]})") from None
    raise CheckpointError(f"checkpoint {name} is a pickle but not a StyleGAN network pickle "
                          f"(top level: {type(obj).__name__}); supported: {SUPPORTED}")

_LEGACY_TORCH_HEAD = b"\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19."

_WRONG_FORMATS = [
    (b"\x89PNG\r\n\x1a\n", "a PNG image"), (b"\xff\xd8\xff", "a JPEG image"), (b"GIF8", "a GIF image"),
    (b"\x1f\x8b", "a gzip archive (unpack it first)"), (b"BZh", "a bzip2 archive (unpack it first)"),
    (b"\xfd7zXZ", "an xz archive (unpack it first)"), (b"7z\xbc\xaf", "a 7-zip archive (unpack it first)"),
    (b"Rar!", "a RAR archive (unpack it first)"), (b"%PDF", "a PDF document"),
]

def sniff_format(path: str | os.PathLike) -> str:
    """→ 'safetensors' | 'torch-zip' | 'torch-legacy' | 'pickle'; CheckpointError for anything else."""
    p = Path(path)
    name = p.name
    try:
        size = p.stat().st_size
        with open(p, "rb") as f:
            head = f.read(64)
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {path} does not exist") from None
    except IsADirectoryError:
        raise CheckpointError(f"checkpoint {path} is a directory, not a file") from None
    except OSError as exc:
        raise CheckpointError(f"checkpoint {path} cannot be read: {exc}") from None
    if size == 0:
        raise CheckpointError(f"checkpoint {name} is empty (0 bytes): the download failed; fetch it again")
    if len(head) >= 9 and head[8:9] == b"{":
        (hlen,) = struct.unpack("<Q", head[:8])
        if hlen > 100 << 20:
            raise CheckpointError(f"checkpoint {name} is not a valid safetensors file (its header length is "
                                  "implausible)")
        if 8 + hlen > size:
            raise CheckpointError(f"checkpoint {name} is a truncated safetensors file ({size} bytes, shorter than "
                                  "its own header); download or export it again")
        return "safetensors"
    if head.startswith((b"PK\x03\x04", b"PK\x05\x06")):
        return "torch-zip"
    if head.startswith(_LEGACY_TORCH_HEAD):
        return "torch-legacy"
    if len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5:
        return "pickle"
    for magic, what in _WRONG_FORMATS:
        if head.startswith(magic):
            raise CheckpointError(f"checkpoint {name} is {what}, not a model; supported: {SUPPORTED}")
    text = head.lstrip().lower()
    if text.startswith((b"<!doctype html", b"<html", b"<?xml", b"<head")):
        raise CheckpointError(f"checkpoint {name} is an HTML page, not a model (the download returned an error "
                              f"or login page); supported: {SUPPORTED}")
    if text.startswith((b"{", b"[")):
        raise CheckpointError(f"checkpoint {name} looks like a JSON/text file, not a model; supported: {SUPPORTED}")
    if head[:1] in (b"(", b"c", b"}", b"]") and b"\n" in head:
        raise CheckpointError(f"checkpoint {name} is a protocol-0/1 pickle; network pickles use protocol 2 or "
                              f"later; supported: {SUPPORTED}")
    # Never quote the bytes: the message goes back to a client that may have named someone else's file.
    raise CheckpointError(f"checkpoint {name} is in an unknown format (not a pickle, zip or safetensors file); "
                          f"supported: {SUPPORTED}")

def load_checkpoint(path: str | os.PathLike, device: str | torch.device = "cpu") -> LoadedModel:
    """Any supported checkpoint → LoadedModel(G, D, info) on `device`, in eval mode, frozen."""
    p = Path(path)
    kind = sniff_format(p)
    if kind == "safetensors":
        loaded = load_native(p)
    elif kind == "pickle":
        loaded = load_network_pickle(p)
    else:
        if kind == "torch-zip":
            try:
                with zipfile.ZipFile(p) as z:
                    check_zip_inflation(z, p.stat().st_size, p.name)
                    names = z.namelist()
            except (zipfile.BadZipFile, ValueError, NotImplementedError, OSError, EOFError):
                raise CheckpointError(f"checkpoint {p.name} is a truncated or damaged zip file (incomplete "
                                      "download?); download it again") from None
            if not any(n.endswith("data.pkl") for n in names):
                raise CheckpointError(f"checkpoint {p.name} is a zip archive but not a torch.save file "
                                      f"(contains {names[:4]}); supported: {SUPPORTED}")
        loaded = load_rosinality(p)
    loaded.info.setdefault("warnings", [])
    loaded.info.update(name=p.stem, path=str(p), resolution=loaded.G.cfg.resolution,
                       has_discriminator=loaded.D is not None)
    loaded.G.to(device)
    if loaded.D is not None:
        loaded.D.to(device)
    return loaded

__all__ = ["CheckpointError", "LoadedModel", "load_checkpoint", "save_native", "load_native",
           "load_network_pickle", "load_rosinality", "sniff_format", "restricted_load", "RestrictedUnpickler",
           "ALLOWED_GLOBALS", "PersistentRecord", "rosinality_to_ours", "rosinality_generator_config",
           "rosinality_discriminator_to_ours"]

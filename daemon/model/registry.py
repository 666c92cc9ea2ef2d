"""Known public StyleGAN2 checkpoints, the local model cache, and name → file resolution.

The registry lists the checkpoints of the DragGAN model zoo (the same files DragGAN's
``scripts/download_model.py`` fetches). None of their publishers print a SHA-256 for them
(NVIDIA's CDN/NGC pages and the self-distilled-StyleGAN bucket give none), so ``sha256`` is
None for all of them: `fetch` then reports the digest of what it downloaded instead of
checking it. Entries added later with a published digest are verified before the file is
moved into place.

Cache directory: ``$DRAGD_CACHE`` if set, else ``~/.cache/dragd/models``.
"""
from __future__ import annotations

import hashlib
import http.client
import os
import socket
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Mapping, Sequence

DEFAULT_MODEL_PATH = Path(__file__).resolve().parents[1] / "assets" / "default.safetensors"
CONNECT_TIMEOUT_S = 10.0
USER_AGENT = "dragd-model-fetch/1"


class ModelError(Exception):
    """A model could not be found or fetched; the message says what to do."""


@dataclass(frozen=True)
class ModelEntry:
    name: str
    filename: str
    resolution: int
    urls: tuple[str, ...]            # first that answers wins
    sha256: str | None               # None: the publisher gives none
    kind: str                        # "nvidia-pickle" | "nvidia-tf-pickle"
    description: str
    license: str
    align: str | None = None         # the faces the model wants: "ffhq" = aligned as FFHQ's
    drag_lr: float = 1e-3            # the paper's drag learning rate: 2e-3 for FFHQ, AFHQ cats and
                                     # LSUN cars, 1e-3 for the other models


_NGC = "https://api.ngc.nvidia.com/v2/models/nvidia/research/stylegan2/versions/1/files/"
_SELF_DISTILLED = "https://storage.googleapis.com/self-distilled-stylegan/"
_TF_MIRRORS = ("http://d36zk2xti64re0.cloudfront.net/stylegan2/networks/",
               "https://nvlabs-fi-cdn.nvidia.com/stylegan2/networks/")
_NV_LICENSE = "NVIDIA Source Code License (non-commercial)"
_SD_LICENSE = "Self-Distilled StyleGAN (Mokady et al. 2022); see the authors' terms"

REGISTRY: dict[str, ModelEntry] = {e.name: e for e in [
    ModelEntry("stylegan2-ffhq-512x512", "stylegan2-ffhq-512x512.pkl", 512, (_NGC + "stylegan2-ffhq-512x512.pkl",),
               None, "nvidia-pickle", "FFHQ faces, StyleGAN2 (StyleGAN3 release)", _NV_LICENSE, align="ffhq",
               drag_lr=2e-3),
    ModelEntry("stylegan2-afhqcat-512x512", "stylegan2-afhqcat-512x512.pkl", 512,
               (_NGC + "stylegan2-afhqcat-512x512.pkl",), None, "nvidia-pickle",
               "AFHQ cats, StyleGAN2 (StyleGAN3 release)", _NV_LICENSE, drag_lr=2e-3),
    ModelEntry("stylegan2-car-config-f", "stylegan2-car-config-f.pkl", 512,
               tuple(m + "stylegan2-car-config-f.pkl" for m in _TF_MIRRORS), None, "nvidia-tf-pickle",
               "LSUN cars (512×384 content, letterboxed), original TensorFlow StyleGAN2", _NV_LICENSE,
               drag_lr=2e-3),
    ModelEntry("stylegan2-cat-config-f", "stylegan2-cat-config-f.pkl", 256,
               tuple(m + "stylegan2-cat-config-f.pkl" for m in _TF_MIRRORS), None, "nvidia-tf-pickle",
               "LSUN cats, original TensorFlow StyleGAN2", _NV_LICENSE),
    ModelEntry("stylegan2_lions_512_pytorch", "stylegan2_lions_512_pytorch.pkl", 512,
               (_SELF_DISTILLED + "lions_512_pytorch.pkl",), None, "nvidia-pickle", "lions (self-distilled)",
               _SD_LICENSE),
    ModelEntry("stylegan2_dogs_1024_pytorch", "stylegan2_dogs_1024_pytorch.pkl", 1024,
               (_SELF_DISTILLED + "dogs_1024_pytorch.pkl",), None, "nvidia-pickle", "dogs (self-distilled)",
               _SD_LICENSE),
    ModelEntry("stylegan2_horses_256_pytorch", "stylegan2_horses_256_pytorch.pkl", 256,
               (_SELF_DISTILLED + "horses_256_pytorch.pkl",), None, "nvidia-pickle", "horses (self-distilled)",
               _SD_LICENSE),
    ModelEntry("stylegan2_elephants_512_pytorch", "stylegan2_elephants_512_pytorch.pkl", 512,
               (_SELF_DISTILLED + "elephants_512_pytorch.pkl",), None, "nvidia-pickle",
               "elephants (self-distilled)", _SD_LICENSE),
]}


def cache_dir(create: bool = False) -> Path:
    env = os.environ.get("DRAGD_CACHE")
    d = Path(env).expanduser() if env else Path.home() / ".cache" / "dragd" / "models"
    if create:
        d.mkdir(parents=True, exist_ok=True)
    return d


def model_path(name: str, directory: Path | None = None, registry: Mapping[str, ModelEntry] | None = None) -> Path:
    entry = _entry(name, registry)
    return (directory or cache_dir()) / entry.filename


def _entry(name: str, registry: Mapping[str, ModelEntry] | None) -> ModelEntry:
    reg = REGISTRY if registry is None else registry
    if name not in reg:
        raise ModelError(f"unknown model {name!r}; known models: {', '.join(sorted(reg))}")
    return reg[name]


@dataclass
class ModelStatus:
    entry: ModelEntry
    path: Path
    present: bool
    size: int | None


def list_models(directory: Path | None = None, registry: Mapping[str, ModelEntry] | None = None
                ) -> list[ModelStatus]:
    reg = REGISTRY if registry is None else registry
    d = directory or cache_dir()
    out = []
    for entry in reg.values():
        p = d / entry.filename
        present = p.is_file() and p.stat().st_size > 0
        out.append(ModelStatus(entry, p, present, p.stat().st_size if present else None))
    return out


ProgressFn = Callable[[int, int | None], None]


def text_progress(stream=None, width: int = 30) -> ProgressFn:
    """A progress callback drawing `[#####.....]  12.3/45.6 MiB` on one line of `stream`."""
    stream = stream or sys.stderr
    state = {"last": 0.0}

    def progress(done: int, total: int | None) -> None:
        now = time.monotonic()
        final = total is not None and done >= total
        if not final and now - state["last"] < 0.2:
            return
        state["last"] = now
        mib = done / 2**20
        if total:
            filled = int(width * min(done / total, 1.0))
            line = f"\r[{'#' * filled}{'.' * (width - filled)}] {mib:8.1f}/{total / 2**20:.1f} MiB"
        else:
            line = f"\r{mib:8.1f} MiB"
        stream.write(line + ("\n" if final else ""))
        stream.flush()

    return progress


def _describe_url_error(url: str, exc: BaseException) -> str:
    reason = getattr(exc, "reason", exc)
    if isinstance(exc, urllib.error.HTTPError):
        return f"{url}: HTTP {exc.code} {exc.reason}"
    if isinstance(reason, (socket.timeout, TimeoutError)):
        return f"{url}: no answer within {CONNECT_TIMEOUT_S:g} s (no network, or the host is down)"
    if isinstance(reason, socket.gaierror):
        return f"{url}: host name could not be resolved (no network or DNS?)"
    if isinstance(reason, ConnectionRefusedError):
        return f"{url}: connection refused"
    if isinstance(exc, http.client.IncompleteRead):
        return f"{url}: the connection closed after {len(exc.partial)} bytes (incomplete download)"
    return f"{url}: {reason}"


def _resolve_within(url: str, timeout: float) -> str | None:
    """Name resolution is not covered by socket timeouts: bound it here. → error text or None."""
    host = urllib.parse.urlsplit(url).hostname
    if not host:
        return f"{url}: not a valid URL"
    result: dict = {}

    def work():
        try:
            socket.getaddrinfo(host, None)
            result["ok"] = True
        except OSError as exc:
            result["error"] = exc

    t = threading.Thread(target=work, daemon=True)
    t.start()
    t.join(timeout)
    if "ok" in result:
        return None
    if "error" in result:
        return f"{url}: host name could not be resolved (no network or DNS?)"
    return f"{url}: name resolution did not answer within {timeout:g} s (no network?)"


def fetch(name: str, progress: ProgressFn | None = None, directory: Path | None = None,
          registry: Mapping[str, ModelEntry] | None = None, timeout: float = CONNECT_TIMEOUT_S,
          force: bool = False, log: Callable[[str], None] | None = None) -> Path:
    """Download model `name` into the cache (temp file, SHA-256 check, atomic rename) → its path.

    Raises ModelError with a clear message when every URL fails (no network: within `timeout`),
    or when the checksum does not match (the partial file is removed).
    """
    entry = _entry(name, registry)
    d = directory or cache_dir()
    d.mkdir(parents=True, exist_ok=True)
    final = d / entry.filename
    if final.is_file() and final.stat().st_size > 0 and not force:
        return final
    errors = []
    for url in entry.urls:
        dns_problem = _resolve_within(url, timeout)
        if dns_problem:
            errors.append(dns_problem)
            continue
        try:
            req = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
            resp = urllib.request.urlopen(req, timeout=timeout)
        except (urllib.error.URLError, OSError, ValueError) as exc:
            errors.append(_describe_url_error(url, exc))
            continue
        with resp:
            try:
                return _download(resp, url, entry, final, progress, log)
            except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
                errors.append(_describe_url_error(url, exc))
            except ModelError as exc:          # incomplete or wrong checksum: try the next mirror
                errors.append(str(exc))
    raise ModelError(f"could not download {name}: " + "; ".join(errors) +
                     f". Check the network, or download the file by hand and put it at {final}")


def _download(resp, url: str, entry: ModelEntry, final: Path, progress: ProgressFn | None,
              log: Callable[[str], None] | None) -> Path:
    total = resp.headers.get("Content-Length")
    total = int(total) if total and total.isdigit() else None
    digest = hashlib.sha256()
    fd, tmp_name = tempfile.mkstemp(prefix=f".{entry.filename}.", suffix=".part", dir=final.parent)
    tmp = Path(tmp_name)
    done = 0
    try:
        with os.fdopen(fd, "wb") as out:
            while True:
                chunk = resp.read(1 << 20)
                if not chunk:
                    break
                out.write(chunk)
                digest.update(chunk)
                done += len(chunk)
                if progress:
                    progress(done, total)
            out.flush()
            os.fsync(out.fileno())
        if total is not None and done != total:
            raise ModelError(f"download of {entry.name} from {url} stopped at {done} of {total} bytes; try again")
        if done == 0:
            raise ModelError(f"download of {entry.name} from {url} was empty")
        got = digest.hexdigest()
        if entry.sha256 is not None and got != entry.sha256.lower():
            raise ModelError(f"checksum mismatch for {entry.name} from {url}: expected sha256 {entry.sha256}, "
                             f"got {got}; the file was discarded")
        if entry.sha256 is None and log:
            log(f"{entry.name}: no published checksum; sha256 of the download is {got}")
        os.replace(tmp, final)
        return final
    finally:
        if tmp.exists():
            tmp.unlink()


def entry_for(name_or_path: str | os.PathLike, path: str | os.PathLike | None = None) -> ModelEntry | None:
    """The registry entry of a model named by its registry name or its file's name, if any."""
    names = {str(name_or_path), Path(str(name_or_path)).name, Path(str(path)).name if path else ""}
    return next((e for e in REGISTRY.values() if e.name in names or e.filename in names), None)


def alignment_of(name_or_path: str | os.PathLike, path: str | os.PathLike | None = None) -> str | None:
    """The alignment a registry model wants, by its name or its file's name (None: none known)."""
    e = entry_for(name_or_path, path)
    return e.align if e is not None else None


def known_metadata(name_or_path: str | os.PathLike, path: str | os.PathLike | None = None) -> dict:
    """What the registry knows about a model that its file does not say: the faces it wants
    and the paper's drag learning rate for it (as checkpoint info keys)."""
    e = entry_for(name_or_path, path)
    if e is None:
        return {}
    return {**({"align": e.align} if e.align else {}), "drag_lr": repr(e.drag_lr)}


def resolve_model(name_or_path: str | os.PathLike, directory: Path | None = None,
                  registry: Mapping[str, ModelEntry] | None = None, default_path: Path | None = None,
                  allowed: Sequence[Path] | None = None) -> Path:
    """A file path, a registry name present in the cache, or "default" → the file to load.

    `allowed` is what the daemon passes: the only files and folders (besides the cache folder)
    a path may point into, so that a client cannot make it open any file on its disk. None (the
    CLI on the user's own files) accepts any local path."""
    text = str(name_or_path)
    reg = REGISTRY if registry is None else registry
    if text == "default":
        p = default_path or DEFAULT_MODEL_PATH
        if not p.is_file():
            raise ModelError(f"the embedded default model is missing ({p}); this dragd install is incomplete — "
                             "reinstall it, or pass a checkpoint path or a model name (see `dragd models list`)")
        return p
    p = Path(text).expanduser()
    if allowed is not None and text not in reg:
        _require_model_folder(p, text, [directory or cache_dir(), *allowed], reg)
    if p.is_file():
        return p
    if text in reg:
        cached = (directory or cache_dir()) / reg[text].filename
        if cached.is_file() and cached.stat().st_size > 0:
            return cached
        raise ModelError(f"model {text!r} is not downloaded yet; run `dragd models fetch {text}` "
                         f"(it goes to {cached})")
    if p.exists():
        raise ModelError(f"{p} is not a file")
    if os.sep in text or (os.altsep and os.altsep in text) or p.suffix in (".pkl", ".pt", ".pth", ".safetensors"):
        raise ModelError(f"checkpoint file {p} does not exist")
    raise ModelError(f"{text!r} is neither a checkpoint file nor a known model name; known: default, "
                     f"{', '.join(sorted(reg))}")


def in_model_folders(path: Path, folders: Iterable[Path]) -> bool:
    """Whether `path`, symlinks followed, is one of `folders` or lies inside one of them."""
    real = Path(os.path.realpath(path))
    for folder in folders:
        root = Path(os.path.realpath(Path(folder).expanduser()))
        if real == root or root in real.parents:
            return True
    return False


def _require_model_folder(p: Path, text: str, folders: list[Path], reg: Mapping[str, ModelEntry]) -> None:
    # Checked before the file is touched: the answer must not even tell whether it exists.
    if in_model_folders(p, folders):
        return
    shown = text if len(text) <= 120 else text[:117] + "..."
    raise ModelError(f"{shown!r} is not in the daemon's model folders: the daemon loads only model names "
                     f"(default, {', '.join(sorted(reg))}), files in its model cache {folders[0]}, and files or "
                     "folders its operator allowed when starting it (`dragd serve --model PATH` or "
                     "`dragd serve --allow-model PATH_OR_DIR`)")


def iter_present(directory: Path | None = None) -> Iterable[ModelStatus]:
    return (s for s in list_models(directory) if s.present)

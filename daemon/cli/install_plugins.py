"""`dragd install-plugins`: install the GIMP 3 and Krita 5 plug-ins into a user's profile, protocol vendored.

Installed layouts keep the repository's import names, so the plug-in code imports
`dragd.protocol` and `dragd.gimp_plugin` / `dragd.krita_plugin` the same way in the
repository and inside the host:

    GIMP:  <gimp>/plug-ins/dragd-gimp/dragd-gimp.py          (executable entry)
           <gimp>/plug-ins/dragd-gimp/dragd/{gimp_plugin,plugin_common,protocol}/
    Krita: <pykrita>/dragd_krita.desktop
           <pykrita>/dragd_krita/__init__.py     (entry Krita loads; puts its folder on sys.path)
           <pykrita>/dragd_krita/dragd/{krita_plugin,plugin_common,protocol}/

The Krita packages live INSIDE dragd_krita/ because Krita's "Import Python Plugin from
File..." extracts only the .desktop file and the folder it names (X-KDE-Library); the zip
(build_krita_zip) has the same layout, with directory entries, which that importer needs
to find the folder.

Only Python sources and data files are copied (no __pycache__).
"""
from __future__ import annotations

import os
import shutil
import stat
import sys
import zipfile
from importlib import resources
from pathlib import Path

from .errors import UserFacingError

GIMP_NAME = "dragd-gimp"
KRITA_NAME = "dragd_krita"
_SKIP = shutil.ignore_patterns("__pycache__", "*.pyc")


def _package_dir(name: str) -> Path:
    return Path(str(resources.files(f"dragd.{name}")))


def default_gimp_dir() -> Path:
    """The GIMP 3.0 user plug-ins folder for this platform."""
    if sys.platform == "win32":
        base = Path(os.environ.get("APPDATA", Path.home() / "AppData" / "Roaming"))
        return base / "GIMP" / "3.0" / "plug-ins"
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Application Support" / "GIMP" / "3.0" / "plug-ins"
    base = Path(os.environ.get("XDG_CONFIG_HOME", Path.home() / ".config"))
    return base / "GIMP" / "3.0" / "plug-ins"


def default_pykrita_dir() -> Path:
    if sys.platform == "win32":
        base = Path(os.environ.get("APPDATA", Path.home() / "AppData" / "Roaming"))
        return base / "krita" / "pykrita"
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Application Support" / "krita" / "pykrita"
    base = Path(os.environ.get("XDG_DATA_HOME", Path.home() / ".local" / "share"))
    return base / "krita" / "pykrita"


def _copy_vendored(dest_root: Path, host_package: str) -> None:
    """dest_root/dragd/{host_package,plugin_common,protocol} from the installed dragd
    package."""
    ns = dest_root / "dragd"
    for name in (host_package, "plugin_common", "protocol"):
        target = ns / name
        if target.exists():
            shutil.rmtree(target)
        shutil.copytree(_package_dir(name), target, ignore=_SKIP)


def install_gimp(plugins_dir: Path | None = None) -> Path:
    """Install the GIMP plug-in; returns the folder it went to."""
    root = (plugins_dir or default_gimp_dir()) / GIMP_NAME
    root.mkdir(parents=True, exist_ok=True)
    _copy_vendored(root, "gimp_plugin")
    entry = root / f"{GIMP_NAME}.py"
    shutil.copyfile(_package_dir("gimp_plugin") / "entry.py", entry)
    entry.chmod(entry.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return root


def uninstall_gimp(plugins_dir: Path | None = None) -> Path:
    root = (plugins_dir or default_gimp_dir()) / GIMP_NAME
    if root.exists():
        shutil.rmtree(root)
    return root


def _krita_files(pykrita: Path) -> None:
    src = _package_dir("krita_plugin")
    shutil.copyfile(src / f"{KRITA_NAME}.desktop", pykrita / f"{KRITA_NAME}.desktop")
    entry_pkg = pykrita / KRITA_NAME
    entry_pkg.mkdir(exist_ok=True)
    shutil.copyfile(src / "entry.py", entry_pkg / "__init__.py")
    _copy_vendored(entry_pkg, "krita_plugin")
    # One .desktop file per archive: the importer treats every one it finds as a plug-in.
    for extra in (entry_pkg / "dragd" / "krita_plugin").glob("*.desktop"):
        extra.unlink()
    # An earlier development layout put the vendored packages beside the entry: remove it.
    old = pykrita / "dragd"
    for name in ("krita_plugin", "protocol"):
        if (old / name).is_dir():
            shutil.rmtree(old / name)
    if old.is_dir() and not any(old.iterdir()):
        old.rmdir()


def enable_krita_plugin(kritarc: Path) -> None:
    """Mark the plug-in enabled in kritarc ([python] enable_<name>=true), keeping every
    other line as it is. kritarc is a KConfig file, not an INI file configparser reads:
    it starts with keys outside any group, and values hold backslash escapes and raw
    bytes; so it is edited line by line."""
    key, value = f"enable_{KRITA_NAME}", "true"
    text = (kritarc.read_text(encoding="utf-8", errors="surrogateescape")
            if kritarc.exists() else "")
    lines = text.splitlines()
    start = next((i for i, line in enumerate(lines) if line.strip() == "[python]"), None)
    if start is None:
        while lines and not lines[-1].strip():
            lines.pop()
        lines += ([""] if lines else []) + ["[python]", f"{key}={value}"]
    else:
        end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("[")),
                   len(lines))
        found = [i for i in range(start + 1, end) if lines[i].split("=", 1)[0].strip() == key]
        if found:
            lines[found[0]] = f"{key}={value}"
        else:
            last = start
            for i in range(start + 1, end):
                if lines[i].strip():
                    last = i
            lines.insert(last + 1, f"{key}={value}")
    kritarc.parent.mkdir(parents=True, exist_ok=True)
    kritarc.write_text("\n".join(lines) + "\n", encoding="utf-8", errors="surrogateescape")


def install_krita(pykrita_dir: Path | None = None, kritarc: Path | None = None) -> Path:
    pykrita = pykrita_dir or default_pykrita_dir()
    pykrita.mkdir(parents=True, exist_ok=True)
    _krita_files(pykrita)
    enable_krita_plugin(kritarc or _default_kritarc())
    return pykrita


def _default_kritarc() -> Path:
    if sys.platform == "win32":
        return Path(os.environ.get("LOCALAPPDATA", Path.home() / "AppData" / "Local")) / "kritarc"
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Preferences" / "kritarc"
    return Path(os.environ.get("XDG_CONFIG_HOME", Path.home() / ".config")) / "kritarc"


def uninstall_krita(pykrita_dir: Path | None = None) -> Path:
    pykrita = pykrita_dir or default_pykrita_dir()
    (pykrita / f"{KRITA_NAME}.desktop").unlink(missing_ok=True)
    # dragd_krita/ holds the entry and the vendored packages; <pykrita>/dragd/ is an
    # earlier development layout.
    for sub in (pykrita / KRITA_NAME, pykrita / "dragd" / "krita_plugin",
                pykrita / "dragd" / "protocol"):
        if sub.exists():
            shutil.rmtree(sub)
    ns = pykrita / "dragd"
    if ns.exists() and not any(ns.iterdir()):
        ns.rmdir()
    return pykrita


def build_krita_zip(out: Path) -> Path:
    """A zip that Krita's Tools ▸ Scripts ▸ Import Python Plugin from File… accepts:
    the .desktop file and the package folders at the archive's top level."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        staging = Path(tmp)
        _krita_files(staging)
        out.parent.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            # Directory entries too: Krita's importer finds the plug-in's folder by its
            # "dragd_krita/" entry.
            for path in sorted(staging.rglob("*")):
                if path.is_file() or path.is_dir():
                    zf.write(path, path.relative_to(staging).as_posix())
    return out


def add_parser(sub) -> None:
    ip = sub.add_parser("install-plugins", help="install the GIMP 3 / Krita 5 plug-ins")
    ip.add_argument("--gimp", action="store_true")
    ip.add_argument("--krita", action="store_true")
    ip.add_argument("--krita-zip", type=Path, metavar="OUT.zip",
                    help="build a zip for Krita's Tools ▸ Scripts ▸ Import Python Plugin from File…")
    ip.add_argument("--uninstall", action="store_true")
    ip.add_argument("--dest", type=Path, help="plug-ins folder (GIMP) or pykrita folder (Krita) "
                    "instead of the user's default")
    ip.set_defaults(handler=cmd_install_plugins)


def cmd_install_plugins(args) -> int:
    if not (args.gimp or args.krita or args.krita_zip):
        raise UserFacingError("say which: --gimp, --krita and/or --krita-zip OUT.zip")
    if args.gimp:
        if args.uninstall:
            print(f"removed the GIMP plug-in from {uninstall_gimp(args.dest)}")
        else:
            where = install_gimp(args.dest)
            print(f"installed the GIMP plug-in in {where}; restart GIMP, then use "
                  "Filters ▸ Generative ▸ Drag (DragGAN)… (GIMP's Python needs pyzmq and msgpack: see docs/GIMP.md)")
    if args.krita:
        if args.uninstall:
            print(f"removed the Krita plug-in from {uninstall_krita(args.dest)}")
        else:
            where = install_krita(args.dest)
            print(f"installed and enabled the Krita plug-in in {where}; restart Krita "
                  "(Krita's Python needs pyzmq and msgpack: see docs/KRITA.md)")
    if args.krita_zip:
        print(f"wrote {build_krita_zip(args.krita_zip)}")
    return 0

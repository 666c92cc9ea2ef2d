"""Run a real GIMP 3.0 and a real Krita 5.2 for the host tests, inside the Debian trixie chroot
that tests/hosts/build_chroot.sh builds and caches (docs/HOSTS.md has the facts and recipes).

    root = ensure_chroot()                       # build or reuse; skip/fail when impossible
    with new_home("gimp") as home:               # a private, pre-warmed profile in the chroot
        install_gimp_plugin(home, PROBE_DIR / "gimp" / "dragd_probe")
        r = run_gimp_script(source, timeout=60, home=home)
        r.check(); r.result                      # JSON the script wrote to $DRAGD_RESULT
    r = run_krita_module(module_dir, "mod", ["arg"], timeout=60)
    r.check(); r.result                          # kritarunner always exits 0: read the file

Scripts and modules write their result as JSON to the chroot path in $DRAGD_RESULT; the helpers
read it back into `.result`. Every subprocess has a timeout and runs in its own session, so a
timeout kills GIMP/Krita/Xvfb and their children. The chroot shares the host's network
namespace: code inside reaches a server bound on the host's 127.0.0.1.
"""
from __future__ import annotations

import fcntl
import json
import os
import random
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
BUILD_SCRIPT = HERE / "build_chroot.sh"
PROBE_DIR = HERE / "probe"
DEFAULT_ROOT = "/var/cache/dragd/trixie-hosts"
GUI_RUNNER_DIR = HERE / "krita_gui_runner"
GIMP_PLUGIN_DIR = ".config/GIMP/3.0/plug-ins"
KRITA_PYKRITA_DIRS = (".local/share/krita/pykrita",        # the real Krita's plug-in folder
                      ".local/share/kritarunner/pykrita")  # on kritarunner's sys.path
BUILD_TIMEOUT = float(os.environ.get("DRAGD_HOSTS_BUILD_TIMEOUT", "2400"))
_STATE_DIR = "var/lib/dragd-hosts"        # inside the chroot: warmed profile templates
_ready_root: Path | None = None


class HostsUnavailable(RuntimeError):
    """This machine cannot build or run the host chroot."""


def chroot_root() -> Path:
    return Path(os.environ.get("DRAGD_HOSTS_CHROOT", DEFAULT_ROOT))


def hosts_required() -> bool:
    """CI (CI set) or DRAGD_REQUIRE_HOSTS=1: a missing host is a failure, never a skip."""
    return bool(os.environ.get("CI")) or os.environ.get("DRAGD_REQUIRE_HOSTS") == "1"


def _unavailable(reason: str):
    import pytest

    if hosts_required():
        pytest.fail("real GIMP/Krita hosts are required here (CI or DRAGD_REQUIRE_HOSTS=1) "
                    "but " + reason, pytrace=False)
    pytest.skip("real GIMP/Krita hosts unavailable: " + reason)


def _cannot_build_reason() -> str | None:
    """Why this machine truly cannot build the chroot, or None if it should be able to."""
    if os.name != "posix" or not Path("/proc/self/mountinfo").exists():
        return "needs Linux"
    if os.geteuid() != 0:
        return "needs root (debootstrap, chroot and mount); run the tests as root"
    if shutil.which("chroot") is None or shutil.which("mount") is None:
        return "no chroot/mount commands"
    if shutil.which("debootstrap") is None and shutil.which("apt-get") is None:
        return "no debootstrap and no apt-get to install it"
    return None


def ensure_chroot(warm: bool = True) -> Path:
    """Build (first time: 1.5-5 min, 1.4 GB) or reuse the chroot and make sure its mounts are
    in place; returns its root. With warm, also make the warmed profile templates (first time:
    about a minute) so that every later GIMP/Krita start is fast. Skips (pytest) when the
    machine cannot build it, unless CI or DRAGD_REQUIRE_HOSTS=1, where it fails. A build that
    should work but does not raises HostsUnavailable (an error, never a skip)."""
    global _ready_root
    root = chroot_root()
    if _ready_root == root and (root / "proc/self").exists():
        return root
    reason = _cannot_build_reason()
    if reason:
        _unavailable(reason)
    try:
        proc = subprocess.run(["bash", str(BUILD_SCRIPT)], capture_output=True, text=True,
                              timeout=BUILD_TIMEOUT, env=dict(os.environ,
                                                              DRAGD_HOSTS_CHROOT=str(root)))
    except subprocess.TimeoutExpired as exc:
        raise HostsUnavailable("build_chroot.sh timed out after %.0f s:\n%s"
                               % (BUILD_TIMEOUT, _text(exc.stderr)[-3000:])) from None
    if proc.returncode != 0:
        raise HostsUnavailable("build_chroot.sh failed (%d):\n%s"
                               % (proc.returncode, proc.stderr[-4000:]))
    _ready_root = root
    if warm:
        for kind in ("gimp", "krita", "krita-gui"):
            _template(kind)
    return root


def _text(b) -> str:
    if b is None:
        return ""
    return b.decode("utf-8", "replace") if isinstance(b, bytes) else b


# --------------------------------------------------------------------------------------------
# Running commands inside the chroot

BASE_ENV = {
    "PATH": "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin",
    "LANG": "C.UTF-8",
    "LC_ALL": "C.UTF-8",
    "NO_AT_BRIDGE": "1",          # no accessibility bus inside the chroot
    "PYTHONDONTWRITEBYTECODE": "1",
}


def run_in_chroot(argv, *, timeout: float, env: dict | None = None, input=None,
                  home: "Home | None" = None, text: bool = True) -> subprocess.CompletedProcess:
    """Run argv inside the chroot with a clean environment (BASE_ENV + HOME + env). On timeout
    the whole process group (X server, host application, its plug-ins) is killed and
    subprocess.TimeoutExpired raised, carrying what was printed so far."""
    root = ensure_chroot()
    full_env = dict(BASE_ENV)
    if home is not None:
        full_env["HOME"] = home.inside
        full_env["XDG_RUNTIME_DIR"] = home.inside + "/.run"
        full_env["TMPDIR"] = home.inside + "/.tmp"   # temp files go away with the home
        home.path(".tmp").mkdir(exist_ok=True)
    else:
        full_env["HOME"] = "/root"
    full_env.update(env or {})
    cmd = ["chroot", str(root), "/usr/bin/env", "-i"]
    cmd += ["%s=%s" % kv for kv in full_env.items()]
    cmd += [str(a) for a in argv]
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE if input is not None else
                            subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=text, start_new_session=True)
    try:
        out, err = proc.communicate(input, timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        out, err = proc.communicate()
        raise subprocess.TimeoutExpired(cmd, timeout, output=out, stderr=err) from None
    finally:
        if proc.poll() is None:
            _kill_group(proc)
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def _kill_group(proc: subprocess.Popen) -> None:
    """SIGTERM the process group, then SIGKILL whatever is left (Xvfb, plug-ins included)."""
    for sig, wait in ((signal.SIGTERM, 3), (signal.SIGKILL, 5)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            pass


def run_chroot_python(code: str, *, timeout: float = 30, env: dict | None = None):
    """python3 -c CODE with the chroot's own Python 3.13 (python3-zmq, python3-msgpack)."""
    return run_in_chroot(["python3", "-c", code], timeout=timeout, env=env)


# --------------------------------------------------------------------------------------------
# Private profiles (HOME) inside the chroot

class Home:
    """A private HOME inside the chroot: GIMP's profile is ~/.config/GIMP/3.0, Krita's
    (kritarunner's) ~/.config/kritarunnerrc + ~/.local/share/kritarunner. `host` is its path on
    this machine, `inside` the same directory as processes in the chroot see it."""

    def __init__(self, root: Path, inside: str):
        self.root = root
        self.inside = inside
        self.host = root / inside.lstrip("/")

    def path(self, rel: str) -> Path:
        return self.host / rel

    def chroot_path(self, rel: str) -> str:
        return self.inside + "/" + rel

    def cleanup(self) -> None:
        shutil.rmtree(self.host, ignore_errors=True)

    def __enter__(self) -> "Home":
        return self

    def __exit__(self, *exc) -> None:
        self.cleanup()

    def __repr__(self) -> str:
        return "Home(%r)" % self.inside


def _template(kind: str) -> Path:
    """A warmed profile for kind ("gimp", "krita", "krita-gui"), made once per chroot under a
    lock: the first start of GIMP with an empty profile queries every plug-in (+4 s); Krita's
    (kritarunner's and the GUI's separately) builds a resource database (+20-30 s each).
    Copies of a warmed profile start fast."""
    root = ensure_chroot(warm=False)
    state = root / _STATE_DIR
    state.mkdir(parents=True, exist_ok=True)
    tpl = state / ("home-" + kind)
    if (tpl / ".dragd-ready").exists():
        return tpl
    with open(state / ("template-%s.lock" % kind), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (tpl / ".dragd-ready").exists():
            return tpl
        shutil.rmtree(tpl, ignore_errors=True)
        tpl.mkdir(parents=True)
        home = Home(root, "/" + str(tpl.relative_to(root)))
        (tpl / ".run").mkdir(mode=0o700)
        if kind == "gimp":
            r = _gimp_batch("pass\n", timeout=180, home=home, env={})
        elif kind == "krita":
            mod = tpl / ".dragd-warm"
            mod.mkdir()
            (mod / "dragd_warm.py").write_text(
                "import json, os\n\ndef __main__(args):\n"
                "    with open(os.environ['DRAGD_RESULT'], 'w') as f:\n"
                "        json.dump({'ok': True}, f)\n")
            r = _krita_run(home, home.chroot_path(".dragd-warm"), "dragd_warm", [],
                           timeout=240, env={})
            shutil.rmtree(mod)
        elif kind == "krita-gui":
            shutil.copytree(_template("krita"), tpl, symlinks=True, dirs_exist_ok=True)
            (tpl / ".dragd-ready").unlink()
            warm = tpl / ".dragd-warm.py"
            warm.write_text("def main(window, app):\n    return {'ok': True}\n")
            r = _krita_gui_run(home, home.chroot_path(".dragd-warm.py"), timeout=240, env={})
            warm.unlink()
        else:
            raise ValueError(kind)
        if kind == "gimp" and r.returncode != 0 or kind != "gimp" and r.result != {"ok": True}:
            raise HostsUnavailable("warming the %s profile failed:\n%s" % (kind, r.log()))
        (tpl / ".dragd-ready").write_text("ok\n")
    return tpl


def new_home(kind: str = "gimp") -> Home:
    """A fresh private HOME in the chroot's /tmp, copied from the warmed template of kind:
    "gimp", "krita" (kritarunner), "krita-gui" (kritarunner and the full Krita, with the GUI
    test runner plug-in installed) or "empty". Use as a context manager to delete it after."""
    root = ensure_chroot()
    tmp = root / "tmp"
    host = Path(tempfile.mkdtemp(prefix="dragd-home-", dir=tmp))
    host.chmod(0o755)
    if kind != "empty":
        shutil.copytree(_template(kind), host, symlinks=True, dirs_exist_ok=True)
        (host / ".dragd-ready").unlink(missing_ok=True)
    (host / ".run").mkdir(mode=0o700, exist_ok=True)
    return Home(root, "/tmp/" + host.name)


def install_gimp_plugin(home: Home, src: Path, name: str | None = None) -> Path:
    """Install a GIMP 3 plug-in into home's profile: src is NAME.py (or a folder holding
    NAME.py and its helpers, copied whole) -> ~/.config/GIMP/3.0/plug-ins/NAME/NAME.py, made
    executable. Returns the installed main file (host path)."""
    src = Path(src)
    name = name or (src.stem if src.is_file() else src.name)
    dest = home.path(GIMP_PLUGIN_DIR) / name
    if dest.exists():
        shutil.rmtree(dest)
    if src.is_dir():
        shutil.copytree(src, dest, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    else:
        dest.mkdir(parents=True)
        shutil.copy2(src, dest / (name + ".py"))
    main = dest / (name + ".py")
    if not main.is_file():
        raise FileNotFoundError("a GIMP plug-in folder must hold %s.py: %s" % (name, src))
    main.chmod(0o755)
    return main


def install_krita_plugin(home: Home, package_dir: Path, desktop_file: Path | None = None,
                         enable: bool = True) -> list[Path]:
    """Install a Krita Python plug-in (a package folder plus its .desktop file) into home's
    pykrita folders: ~/.local/share/krita/pykrita (the real Krita) and
    ~/.local/share/kritarunner/pykrita (on kritarunner's sys.path, which does not load
    plug-ins: the test module imports the package). With enable, kritarc/kritarunnerrc get
    [python] enable_NAME=true."""
    package_dir = Path(package_dir)
    name = package_dir.name
    installed = []
    for rel in KRITA_PYKRITA_DIRS:
        base = home.path(rel)
        base.mkdir(parents=True, exist_ok=True)
        dest = base / name
        if dest.exists():
            shutil.rmtree(dest)
        shutil.copytree(package_dir, dest, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        if desktop_file is not None:
            shutil.copy2(desktop_file, base / Path(desktop_file).name)
        installed.append(dest)
    if enable:
        for rc in ("kritarc", "kritarunnerrc"):
            _ini_set(home.path(".config/" + rc), "python", "enable_" + name, "true")
    return installed


def _ini_set(path: Path, section: str, key: str, value: str) -> None:
    lines = path.read_text().splitlines() if path.exists() else []
    out, in_sec, done = [], False, False
    for line in lines:
        if line.startswith("["):
            if in_sec and not done:
                out.append("%s=%s" % (key, value))
                done = True
            in_sec = line.strip() == "[%s]" % section
        elif in_sec and line.split("=", 1)[0] == key:
            line, done = "%s=%s" % (key, value), True
        out.append(line)
    if not done:
        if not in_sec:
            out += ["", "[%s]" % section]
        out.append("%s=%s" % (key, value))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(out) + "\n")


def copy_into_home(home: Home, src: Path, rel: str) -> Path:
    """Copy a file or folder to ~/rel in home; returns the host path."""
    dest = home.path(rel)
    dest.parent.mkdir(parents=True, exist_ok=True)
    if Path(src).is_dir():
        shutil.copytree(src, dest, dirs_exist_ok=True,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    else:
        shutil.copy2(src, dest)
    return dest


# --------------------------------------------------------------------------------------------
# GIMP and Krita

class HostResult(subprocess.CompletedProcess):
    """A CompletedProcess plus what the script wrote: `result` (parsed $DRAGD_RESULT or None),
    `trace` (GIMP undo-tracer lines, when asked for), `elapsed` seconds."""

    result = None
    trace = None
    elapsed = 0.0

    def log(self, limit: int = 6000) -> str:
        return "exit %s after %.1f s\n--- stdout\n%s\n--- stderr\n%s" % (
            self.returncode, self.elapsed, _text(self.stdout)[-limit:],
            _text(self.stderr)[-limit:])

    def check(self) -> "HostResult":
        """Raise unless the process exited 0 and a result was written."""
        if self.returncode != 0 or self.result is None:
            raise AssertionError("host run failed or wrote no result:\n" + self.log())
        return self


def _finish(proc, home: Home, result_rel: str, t0: float, trace_rel: str | None = None):
    r = HostResult(proc.args, proc.returncode, proc.stdout, proc.stderr)
    r.elapsed = time.monotonic() - t0
    res = home.path(result_rel)
    if res.exists():
        try:
            r.result = json.loads(res.read_text())
        except ValueError as exc:
            r.result = {"_unparsable_result": str(exc), "_text": res.read_text()[:2000]}
        res.unlink()
    if trace_rel is not None:
        tr = home.path(trace_rel)
        r.trace = [json.loads(line) for line in tr.read_text().splitlines()] if tr.exists() else []
        tr.unlink(missing_ok=True)
    return r


def _gimp_batch(source: str, *, timeout: float, home: Home, env: dict, trace: bool = False):
    env = dict(env)
    result_rel = ".dragd-result-%d.json" % random.getrandbits(40)
    env["DRAGD_RESULT"] = home.chroot_path(result_rel)
    trace_rel = None
    if trace:
        tracer = copy_into_home(home, PROBE_DIR / "gimp" / "gimp_trace" / "sitecustomize.py",
                                ".dragd-trace/sitecustomize.py")
        trace_rel = ".dragd-trace/trace-%d.jsonl" % random.getrandbits(40)
        env["DRAGD_GIMP_TRACE"] = home.chroot_path(trace_rel)
        env["PYTHONPATH"] = ":".join(filter(None, [home.chroot_path(".dragd-trace"),
                                                   env.get("PYTHONPATH")]))
        assert tracer.exists()
    t0 = time.monotonic()
    proc = run_in_chroot(["gimp-console-3.0", "-nis", "--batch-interpreter", "python-fu-eval",
                          "-b", "-", "--quit"], timeout=timeout, env=env, input=source,
                         home=home)
    return _finish(proc, home, result_rel, t0, trace_rel)


def run_gimp_script(py_source: str, timeout: float = 60, *, home: Home | None = None,
                    env: dict | None = None, trace: bool = False) -> HostResult:
    """Run py_source with GIMP 3.0's python-fu-eval batch interpreter:
    `gimp-console-3.0 -nis --batch-interpreter python-fu-eval -b - --quit` (source on stdin).
    HOME is `home` (its plug-ins are found) or a fresh warmed profile deleted afterwards.
    The script runs in python-eval.py's globals (Gimp imported, __name__ == "__main__"); it may
    write JSON to os.environ["DRAGD_RESULT"] -> `.result`. Exit status: 0 on success, 64 when
    the script raised (traceback on stderr). trace=True installs the undo tracer
    (probe/gimp/gimp_trace) for every Python process of the run -> `.trace`."""
    own = home is None
    home = home or new_home("gimp")
    try:
        return _gimp_batch(py_source, timeout=timeout, home=home, env=env or {}, trace=trace)
    finally:
        if own:
            home.cleanup()


def _krita_run(home: Home, module_path_inside: str, module_name: str, args, *, timeout: float,
               env: dict):
    env = dict(env)
    result_rel = ".dragd-result-%d.json" % random.getrandbits(40)
    env["DRAGD_RESULT"] = home.chroot_path(result_rel)
    env["PYTHONPATH"] = ":".join(filter(None, [module_path_inside, env.get("PYTHONPATH")]))
    env.setdefault("QT_QPA_PLATFORM", "xcb")
    # xvfb-run -a picks a free display from the chroot's /tmp lock files; start high and at
    # random so a host X server on :99 (same abstract-socket namespace) is not hit.
    display = str(random.randrange(200, 900))
    t0 = time.monotonic()
    proc = run_in_chroot(["xvfb-run", "-a", "-n", display, "-s", "-nolisten tcp -screen 0 "
                          "1280x1024x24", "kritarunner", "-s", module_name, *map(str, args)],
                         timeout=timeout, env=env, home=home)
    return _finish(proc, home, result_rel, t0)


def run_krita_module(module_dir: Path, module_name: str, args=(), timeout: float = 60, *,
                     home: Home | None = None, env: dict | None = None,
                     pythonpath=()) -> HostResult:
    """Copy module_dir into the chroot and run `xvfb-run -a kritarunner -s module_name args...`
    (Krita 5.2.9) with module_dir first on PYTHONPATH, then `pythonpath` (host folders, copied
    in too: e.g. a plug-in package's parent). kritarunner calls module_name.__main__(args: list
    of str) and always exits 0: the module writes JSON to os.environ["DRAGD_RESULT"] ->
    `.result` (None when it wrote nothing, e.g. it crashed: see .log())."""
    own = home is None
    home = home or new_home("krita")
    try:
        tag = random.getrandbits(32)
        inside = []
        for i, d in enumerate([Path(module_dir), *map(Path, pythonpath)]):
            rel = ".dragd-modules/%d-%d-%s" % (tag, i, d.name)
            copy_into_home(home, d, rel)
            inside.append(home.chroot_path(rel))
        env = dict(env or {})
        env["PYTHONPATH"] = ":".join(filter(None, inside[1:] + [env.get("PYTHONPATH")]))
        return _krita_run(home, inside[0], module_name, args, timeout=timeout, env=env)
    finally:
        if own:
            home.cleanup()


def _krita_gui_run(home: Home, test_inside: str, *, timeout: float, env: dict):
    install_krita_plugin(home, GUI_RUNNER_DIR / "dragd_gui_runner",
                         GUI_RUNNER_DIR / "dragd_gui_runner.desktop")
    env = dict(env)
    result_rel = ".dragd-result-%d.json" % random.getrandbits(40)
    env["DRAGD_RESULT"] = home.chroot_path(result_rel)
    env["DRAGD_KRITA_GUI_TEST"] = test_inside
    env.setdefault("QT_QPA_PLATFORM", "xcb")
    env.setdefault("PYTHONWARNINGS", "ignore::SyntaxWarning")  # Krita's bundled plug-ins
    display = str(random.randrange(200, 900))
    t0 = time.monotonic()
    proc = run_in_chroot(["xvfb-run", "-a", "-n", display, "-s", "-nolisten tcp -screen 0 "
                          "1280x1024x24", "krita", "--nosplash"], timeout=timeout, env=env,
                         home=home)
    return _finish(proc, home, result_rel, t0)


def run_krita_gui(test_file: Path, timeout: float = 90, *, home: Home | None = None,
                  env: dict | None = None) -> HostResult:
    """Run the full Krita 5.2 GUI under Xvfb (`xvfb-run -a krita --nosplash`) with every
    plug-in enabled in home (install_krita_plugin) loaded, dockers created, one main window.
    Once that window exists the dragd_gui_runner plug-in (krita_gui_runner/) calls
    test_file's main(window, app) and writes its JSON-able return value -> `.result`
    ({"error": traceback} if it raised), then quits Krita. Pass data in through `env` (the
    test reads os.environ). home defaults to a fresh "krita-gui" profile, deleted afterwards."""
    own = home is None
    home = home or new_home("krita-gui")
    try:
        rel = ".dragd-modules/gui-test-%d.py" % random.getrandbits(32)
        copy_into_home(home, Path(test_file), rel)
        return _krita_gui_run(home, home.chroot_path(rel), timeout=timeout, env=env or {})
    finally:
        if own:
            home.cleanup()

"""Put this checkout's nsrecipes on every machine of a lab (``invoke machines-install``).

Document section "Network namespace", across machines: every machine runs the same
recipes (:mod:`recipes.ops.agent`), so every machine needs the same nsrecipes. This builds the
checkout's wheel once (``pip wheel --no-deps``), then on every machine at once, through
Fabric: makes the machine's ``venv`` (``python3 -m venv``), puts the wheel there
(``Connection.put``, SFTP) and ``pip install``\\s it. The dependencies come from PyPI where
the machine reaches it, else from a wheelhouse put there too (``--wheelhouse DIR``: a
directory of wheels, e.g. ``pip download -d DIR invoke pyroute2 graphviz zstandard`` where
PyPI is reachable; then pip installs with ``--no-index``). Last, each machine's version is checked
the way a build checks it (``recipes.ops.agent version --expect V``).
"""
from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

from nsutil.errors import InvalidInput, NsrError

from recipes.labs.machines import sessions as remote_sessions

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), *[os.pardir] * 3))  #: this checkout
WHEELS = "nsr-wheels"      #: the directory in the venv the wheels are put in


def build_wheel(directory: str) -> str:
    """``pip wheel --no-deps -w DIRECTORY .`` of this checkout; the wheel's path (the
    ``build/`` directory setuptools leaves in the checkout goes, unless it was there)."""
    scratch = os.path.join(ROOT, "build")
    had_build = os.path.exists(scratch)
    try:
        done = _pip_wheel(directory)
    finally:
        if not had_build:
            shutil.rmtree(scratch, ignore_errors=True)
    wheels = [f for f in os.listdir(directory) if f.startswith("nsrecipes-") and f.endswith(".whl")]
    if done.returncode or not wheels:
        tail = _last_error(done.stderr, f"exit {done.returncode}")
        raise NsrError(f"pip wheel of {ROOT} failed: {tail}", hint="run it by hand: "
                       f"{sys.executable} -m pip wheel --no-deps -w DIR {ROOT}")
    return os.path.join(directory, wheels[0])


def _pip_wheel(directory: str) -> subprocess.CompletedProcess:
    """With setuptools and wheel here, built offline with them; else pip fetches both
    from PyPI into an isolated build environment."""
    import importlib.util
    offline = all(importlib.util.find_spec(m) for m in ("setuptools", "wheel"))
    return subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w",
                           directory, *(["--no-build-isolation"] if offline else []), ROOT],
                          capture_output=True, text=True, timeout=600)


def _last_error(text: str, default: str) -> str:
    """The last ``error:`` line of pip's output (else its last line, else ``default``)."""
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return next((ln for ln in reversed(lines) if "error" in ln.lower()), lines[-1] if lines else default)


def wheelhouse_files(wheelhouse: str | None) -> list[str]:
    """The wheels of ``--wheelhouse DIR`` (none without it); InvalidInput if it has none."""
    if wheelhouse is None:
        return []
    found = sorted(os.path.join(wheelhouse, f) for f in os.listdir(wheelhouse)
                   if f.endswith(".whl")) if os.path.isdir(wheelhouse) else []
    if not found:
        raise InvalidInput(f"wheelhouse {wheelhouse} has no wheels",
                           hint="make one where PyPI is reachable: "
                                "pip download -d DIR invoke pyroute2 graphviz zstandard")
    return found


def install_commands(venv: str, wheel: str, offline: bool, python: str) -> list[str]:
    """What runs on the machine: make the venv, then pip install the wheel put there."""
    wheels = f"{venv}/{WHEELS}"
    pip = [f"{venv}/bin/python", "-m", "pip", "install", "-q", "--disable-pip-version-check",
           "--force-reinstall"]
    if offline:
        pip += ["--no-index", "--find-links", wheels]
    return [shlex.join([python, "-m", "venv", venv]), shlex.join(["mkdir", "-p", wheels]),
            shlex.join([*pip, f"{wheels}/{os.path.basename(wheel)}"])]


def install_one(m: dict, wheel: str, extra: list[str], python: str) -> float:
    """Install ``wheel`` (and the wheelhouse ``extra``) into machine ``m``'s venv; seconds."""
    start = time.perf_counter()
    make_venv, mkdir, pip = install_commands(m["venv"], wheel, bool(extra), python)
    try:
        conn = remote_sessions.connection(m)
    except Exception as exc:   # whatever Fabric, paramiko or the socket raise
        raise NsrError(f"machine {m['name']} ({m['ssh']}): ssh: {remote_sessions.ssh_reason(exc)}",
                       hint="is its sshd up and the key authorized?") from None
    try:
        for command in (make_venv, mkdir):
            _run(conn, m, command)
        for path in [wheel, *extra]:
            conn.put(path, f"{m['venv']}/{WHEELS}/{os.path.basename(path)}")
        _run(conn, m, pip)
    except NsrError:
        raise
    except Exception as exc:   # the connection failing half-way
        raise NsrError(f"machine {m['name']} ({m['ssh']}): ssh: {remote_sessions.ssh_reason(exc)}",
                       hint="run machines-install again") from None
    finally:
        conn.close()
    return time.perf_counter() - start


def _run(conn, m: dict, command: str) -> None:
    done = conn.run(command, hide=True, warn=True, in_stream=False)
    if done.exited:
        tail = _last_error(done.stderr, f"exit {done.exited}")
        raise NsrError(f"machine {m['name']} ({m['ssh']}): `{command}` failed: {tail}",
                       hint="a Python 3.11+ with venv there? (--python), PyPI reachable "
                            "there? (else --wheelhouse DIR)")


def install(plan_machines: dict[str, dict], wheelhouse: str | None = None,
            python: str = "python3", say=print) -> dict[str, float]:
    """Install this checkout on every machine at once and check each one's version;
    machine -> seconds. The first failure raises (one line naming the machine)."""
    extra = wheelhouse_files(wheelhouse)
    for m in plan_machines.values():
        if os.path.realpath(m["venv"]) == os.path.realpath(sys.prefix):
            raise InvalidInput(f"machine {m['name']} has no venv of its own (the default is this "
                               f"process's, {sys.prefix}, which the install would replace if "
                               "the machine shares this file system)",
                               hint=f'give it one: [machines.{m["name"]}] venv = "/opt/nsrecipes"')
    with tempfile.TemporaryDirectory(prefix="nsr-wheel-") as d:
        wheel = build_wheel(d)
        say(f"built {os.path.basename(wheel)}; installing on {', '.join(plan_machines)}"
            + (f" with {len(extra)} wheels of {wheelhouse}" if extra else " (dependencies from PyPI)"))
        ms = list(plan_machines.values())
        with ThreadPoolExecutor(max_workers=len(ms)) as pool:
            futures = [pool.submit(install_one, m, wheel, extra, python) for m in ms]
            seconds = {m["name"]: f.result() for m, f in zip(ms, futures)}
    sessions = remote_sessions.run_all(ms, ["version"])
    for name, s in sessions.items():
        say(f"  {name} ({s.machine['ssh']}): nsrecipes {s.has('version')['version']} in "
            f"{s.machine['venv']} ({seconds[name]:.1f} s)")
    return seconds

"""Environments: running a command inside one (``env-exec``), as ``nsenter --all`` does:
the user namespace first, then the others, with the holder's root and working directory."""
from __future__ import annotations

import os
import signal
from contextlib import contextmanager
from typing import Iterator, Sequence

from nsutil import idmap, process, programs
from nsutil import shell as nshell
from nsutil.backend import Runner, Step
from nsutil.errors import NotFound, NsrError, SyscallError
from nsutil.nstypes import NsType, parse_types

from recipes.env.state import check_path, dead, load


# --- before entering --------------------------------------------------------------------------

def check_enterable(name: str, st: dict, cwd: str | None = None) -> None:
    """What nsenter would fail at, said first in one line with what to do: a user namespace
    whose maps are not written (``setgid failed: Invalid argument``), a working directory
    that is not there inside. (A dead holder is :func:`recipes.env.state.load`'s.)"""
    pid = st["holder"]["pid"]
    if "user" in st["types"]:
        try:
            _check_maps_written(name, pid)
        except FileNotFoundError:   # the holder died since it was found alive
            raise dead(name, st) from None
    if cwd is not None and not os.path.isdir(f"/proc/{pid}/root{cwd}"):
        raise NotFound(f"working directory {cwd} does not exist inside {name}",
                       hint=f"create it (invoke env-exec {name} -- mkdir -p {cwd}) or give "
                            "another --cwd")


def _check_maps_written(name: str, pid: int) -> None:
    missing = [f"{which}_map" for which in ("uid", "gid") if not idmap.read_map(pid, which)]
    if not missing:
        return
    if len(missing) == 2:
        hint = f"write the maps first: invoke env-idmap {name} --uid-map 0:100000:65536"
    else:
        hint = (f"write its {missing[0]} first (printf '0 ID COUNT\\n' > /proc/{pid}/"
                f"{missing[0]}): env-idmap writes both maps, only when neither is written")
    raise NsrError(f"environment {name!r} cannot be entered yet: the {' and '.join(missing)} of "
                   "its user namespace " + ("are" if len(missing) == 2 else "is") +
                   " not written (no id is mapped inside)", hint=hint)


# --- running commands inside ----------------------------------------------------------------

def env_nsenter_argv(st: dict, argv: Sequence[str], cwd: str | None = None) -> list[str]:
    """``nsenter -t PID --user ... --mount --root --wd -- argv`` (all the environment's types).

    An environment made without root adds ``--preserve-credentials`` to ``--user``: this
    user is already the one mapped to 0 inside, and nsenter's own setgroups() would fail
    where the holder's map denies it."""
    opts = [t.option for t in parse_types(st["types"])]
    if st.get("rootless"):
        opts = ["--user", "--preserve-credentials"] + [o for o in opts if o != "--user"]
    return (["nsenter", "-t", st["holder"]["pid"]] + opts +
            ["--root", f"--wd={cwd}" if cwd else "--wd", "--"] + list(argv))


def _native_exec(pid: int, types: list[NsType], argv: list[str], *, capture: bool,
                 input: bytes | None, cwd: str | None) -> process.Completed:
    import subprocess

    def child() -> process.Completed:
        root = os.open(f"/proc/{pid}/root", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        wd = os.open(f"/proc/{pid}/cwd", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        process.enter_all(pid, types)  # user first, as nsenter; uid/gid 0 in a user ns
        os.fchdir(root)
        os.chroot(".")
        try:
            if cwd:
                os.chdir(cwd)
            else:
                os.fchdir(wd)
        except OSError as exc:
            raise SyscallError.from_oserror(f"chdir({cwd!r}) inside", exc) from None
        os.close(root)
        os.close(wd)
        try:
            proc = subprocess.run(argv, input=input, preexec_fn=_default_signals,
                                  stdout=subprocess.PIPE if capture else None,
                                  stderr=subprocess.PIPE if capture else None)
        except FileNotFoundError:
            return process.Completed(argv, 127, "", f"{argv[0]}: command not found inside\n")
        except PermissionError:
            return process.Completed(argv, 126, "", f"{argv[0]}: permission denied\n")
        return process.Completed(argv, proc.returncode,
                                 (proc.stdout or b"").decode(errors="replace"),
                                 (proc.stderr or b"").decode(errors="replace"))
    done = process.fork_call(child, f"enter {pid}")
    if done.returncode < 0:
        done.returncode = 128 - done.returncode
    return done


def _default_signals() -> None:
    for sig in (signal.SIGINT, signal.SIGQUIT):
        signal.signal(sig, signal.SIG_DFL)


def _shell_exec(argv: list[str], *, capture: bool, input: bytes | None) -> process.Completed:
    if capture:
        return nshell.run_full(argv, input=input)
    if programs.which(argv[0]) is None:
        from nsutil.errors import ToolMissing
        raise ToolMissing(argv[0], programs.package_for(argv[0]))
    # the command gets Ctrl-C itself; we raise after it
    proc = process.run_foreground(argv, input=input, capture=False, preexec_fn=_default_signals)
    rc = proc.returncode if proc.returncode >= 0 else 128 - proc.returncode
    return process.Completed(argv, rc, "")


@contextmanager
def _ignoring_interrupts(active: bool) -> Iterator[None]:
    """While a foreground command runs, Ctrl-C is for it, not for us (as a shell does)."""
    if not active:
        yield
        return
    old = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGQUIT)}
    try:
        yield
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)


def exec_in(run: Runner, name: str, argv: Sequence[str] | None = None, *, capture: bool = True,
            input: str | bytes | None = None, cwd: str | None = None) -> process.Completed:
    """Step: run ``argv`` in all of the environment's namespaces (user first), with its root
    and working directory (``cwd`` overrides the latter); returns exit code and output.

    With ``capture=False`` the command uses this process's terminal (an interactive shell
    gets it); no ``argv`` runs ``$SHELL`` (or /bin/sh) that way.
    """
    if not argv:
        argv = [os.environ.get("SHELL") or "/bin/sh"]
        capture = False
    argv = [str(a) for a in argv]
    if cwd is not None:
        cwd = check_path(cwd, "working directory") if cwd != "/" else "/"
    data = input.encode() if isinstance(input, str) else input
    st = load(name, run)
    if not run.explain:
        check_enterable(name, st, cwd)
    types = parse_types(st["types"])
    full = env_nsenter_argv(st, argv, cwd)
    with _ignoring_interrupts(not capture and not run.explain):
        return run.run(Step(
            f"run {' '.join(argv)!r} inside {name}", argv=full,
            native=lambda: _native_exec(st["holder"]["pid"], types, argv, capture=capture,
                                        input=data, cwd=cwd),
            shell=lambda a: _shell_exec(a, capture=capture, input=data),
            placeholder=process.Completed(full, 0, "")))

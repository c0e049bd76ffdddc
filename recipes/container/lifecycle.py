"""A container's life after ``container-run``: list, logs, stop, kill, wait, remove; and the
Python API :class:`Container` (``Container.run(argv, detach=True)``).

A container is named by its name or id, or a prefix only it has
(:func:`recipes.container.ids.resolve`). Signals go to PID 1 of the container (``kill
-SIG PID1``; its PID 1 passes them on to the command), as ``docker kill`` and ``docker
stop`` send them: ``stop`` is SIGTERM, then SIGKILL after ``--time`` seconds. A detached
container's supervisor then records the exit code; ``container-rm`` removes the container
(a running one only with ``--force``, which kills it first).
"""
from __future__ import annotations

import os
import signal
import sys
import time
from typing import IO, Any, Sequence

from nsutil import procfs
from nsutil import shell as nshell
from nsutil.backend import Runner, Step
from nsutil.errors import InvalidInput, NsrError
from nsutil.state import prune, read_json

from recipes.container import ids
from recipes.container.execin import NotRunning, exec_in
from recipes.container.state import remove_container

#: columns of ``container-ls``
COLUMNS = ("CONTAINER ID", "NAME", "IMAGE", "COMMAND", "STATE", "PID", "CREATED", "EXIT")
#: how long ``stop``/``rm --force`` wait for the supervisor to record the exit after SIGKILL
REAP_WAIT = 30.0


def _reread(rec: dict) -> dict:
    return read_json(os.path.join(rec["dir"], "state.json")) or {}


def row(rec: dict) -> dict[str, Any]:
    """One container as ``container-ls --json`` gives it."""
    state = ids.status(rec)
    return {"id": rec.get("id") or "", "name": rec.get("name"),
            "image": rec.get("image") or rec.get("rootfs"),
            "command": rec.get("argv") or [], "state": state,
            "pid": rec.get("pid1") if state == "running" else None,
            "created": rec.get("created"), "exit_code": rec.get("exit_code"),
            "why": rec.get("why"), "detached": bool(rec.get("detached"))}


def rows(all: bool = False) -> list[dict[str, Any]]:
    """Every container (``all``) or the running ones, oldest first."""
    from recipes.container.state import states
    out = [row(r) for r in states()]
    out = [r for r in out if all or r["state"] in ("running", "created")]
    return sorted(out, key=lambda r: r["created"] or 0)


def _ago(when: float | None) -> str:
    if not when:
        return "-"
    s = max(0, int(time.time() - when))
    for unit, size in (("days", 86400), ("hours", 3600), ("minutes", 60)):
        if s >= size:
            return f"{s // size} {unit} ago"
    return f"{s} seconds ago"


def table(items: list[dict[str, Any]]) -> str:
    """``container-ls``'s table (as ``docker ps``)."""
    import shlex
    lines = [list(COLUMNS)]
    for r in items:
        cmd = shlex.join(r["command"])
        state = r["state"] + (f" ({r['exit_code']})" if r["exit_code"] is not None else "")
        lines.append([r["id"][:ids.SHORT] or "-", r["name"], os.path.basename(r["image"] or "-"),
                      cmd if len(cmd) <= 30 else cmd[:27] + "...", state,
                      str(r["pid"] or "-"), _ago(r["created"]),
                      "-" if r["exit_code"] is None else str(r["exit_code"])])
    widths = [max(len(ln[i]) for ln in lines) for i in range(len(COLUMNS))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(ln, widths)).rstrip() for ln in lines)


def _need_running(rec: dict, verb: str) -> None:
    if not ids.running(rec):
        raise NotRunning(f"container {rec.get('name')} is not running ({ids.status(rec)}): "
                         f"nothing to {verb}", hint=f"`invoke container-rm {rec.get('name')}` "
                                                    "removes it")


def signal_number(sig: str | int) -> int:
    """A signal given as ``KILL``, ``SIGKILL`` or ``9``."""
    text = str(sig).upper()
    try:
        return int(text) if text.isdigit() else int(getattr(signal, text if text.startswith(
            "SIG") else f"SIG{text}"))
    except (AttributeError, TypeError):
        raise InvalidInput(f"--signal {sig}: no such signal",
                           hint="e.g. TERM, KILL, HUP, USR1, or a number") from None


def kill(run: Runner, rec: dict, sig: str | int = "KILL") -> None:
    """Step: send ``sig`` to PID 1 of the running container (``kill -SIG PID1``)."""
    _need_running(rec, "kill")
    num = signal_number(sig)
    pid1 = rec["pid1"]

    def send() -> None:
        if ids.running(rec):      # still the same process: never a re-used pid
            try:
                os.kill(pid1, num)
            except ProcessLookupError:
                pass

    def shell(argv: list[str]) -> None:
        if ids.running(rec):
            nshell.run(argv)

    run.run(Step(f"send {signal.Signals(num).name} to PID 1 of {rec['name']} (pid {pid1})",
                 argv=["kill", f"-{num}", str(pid1)], native=send, shell=shell))


def _gone(rec: dict, timeout: float) -> bool:
    """Wait up to ``timeout`` seconds for PID 1 to end; True if it did."""
    deadline = time.monotonic() + timeout
    while ids.running(rec):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.02)
    return True


def wait(rec: dict, timeout: float | None = None) -> int | None:
    """Wait for the container to end; its exit code (None: it ended without one recorded:
    a foreground container without ``--no-rm``, or its tool or supervisor died)."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        now = _reread(rec)
        if "exit_code" in now:
            return now["exit_code"]
        if not now or ids.status(now) != "running":
            return None
        if deadline is not None and time.monotonic() >= deadline:
            raise NsrError(f"container {rec.get('name')} still runs after {timeout:g} s",
                           hint="stop it with `invoke container-stop`")
        time.sleep(0.02)


def stop(run: Runner, rec: dict, seconds: float = 10.0) -> int | None:
    """``container-stop``: SIGTERM to PID 1, SIGKILL after ``seconds``; its exit code."""
    if seconds < 0:
        raise InvalidInput(f"--time {seconds:g}: must be 0 or more", hint="e.g. --time 10")
    kill(run, rec, "TERM")
    if not _gone(rec, seconds) and ids.running(rec):
        kill(run, rec, "KILL")
    return wait(rec, REAP_WAIT) if rec.get("detached") else None


def remove(run: Runner, rec: dict, force: bool = False) -> None:
    """``container-rm``: remove a container that is not running (``force``: kill it first);
    its processes, cgroup, directory and log go."""
    name = rec.get("name")
    if ids.status(rec) in ("running", "created"):
        if not force:
            raise NsrError(f"container {name} is running (pid {rec.get('pid1')})",
                           errno_name="EBUSY", hint=f"stop it first with `invoke container-stop "
                                                    f"{name}`, or use container-rm --force")
        if ids.running(rec):
            kill(run, rec, "KILL")
        if procfs.same_process(rec.get("creator")) and rec.get("detached"):
            wait(rec, REAP_WAIT)    # its supervisor records the end, then it is ours to remove
    now = _reread(rec) or rec
    now["dir"] = rec["dir"]
    run.run(Step(f"remove container {name}: its processes, cgroup and directory",
                 argv=["rm", "-rf", "--one-file-system", rec["dir"]],
                 native=lambda: remove_container(now), shell=lambda argv: remove_container(now)))
    prune()


def logs(run: Runner, rec: dict, follow: bool = False, out: IO[bytes] | None = None) -> None:
    """``container-logs``: what a detached container printed (stdout and stderr in one);
    ``follow``: go on until it exits (``tail -f --pid=SUPERVISOR``)."""
    path = rec.get("log")
    if not path:
        raise NsrError(f"container {rec.get('name')} has no log: it was run in the foreground, "
                       "where its output goes to the terminal",
                       hint="start it with `invoke container-run --detach` to keep a log")
    out = out or sys.stdout.buffer
    sup = (rec.get("creator") or {}).get("pid")
    argv = ["tail", "-n", "+1", path] if not follow else \
        ["tail", "-n", "+1", "-f", f"--pid={sup}", path]

    def native() -> None:
        with open(path, "rb") as f:
            while True:
                data = f.read(65536)
                if data:
                    out.write(data)
                    out.flush()
                    continue
                if not follow or not procfs.same_process(rec.get("creator")):
                    break
                time.sleep(0.05)
            out.write(f.read())
            out.flush()

    def shell(a: list[str]) -> None:
        import subprocess
        out.flush()
        subprocess.run(a, stdout=out.fileno(), check=False)

    run.run(Step(f"show the log of {rec.get('name')}" + (" until it exits" if follow else ""),
                 argv=argv, native=native, shell=shell))


class Container:
    """A detached container, for scripts: ``with Container.run(["sleep", "60"]) as c:
    c.exec(["true"])``; leaving the ``with`` removes it (``rm(force=True)``)."""

    def __init__(self, rec: dict, backend: str | None = None) -> None:
        self.id: str = rec.get("id") or ""
        self.name: str = rec.get("name") or ""
        self.backend = backend

    @classmethod
    def run(cls, argv: Sequence[str], detach: bool = True, rootfs: str | None = None,
            backend: str | None = None, rm: bool = False, **options: Any) -> "Container":
        """Start ``argv`` in a new detached container (options of ``container-run``: memory,
        pids, name, env, workdir, user, ...). Only ``detach=True``: a foreground run is
        :func:`recipes.container.run_container`."""
        from recipes.container import supervisor
        if not detach:
            raise InvalidInput("Container.run(detach=False) is not a handle",
                               hint="use recipes.container.run_container(run, argv, ...)")
        cid = supervisor.spawn(list(argv), rootfs, backend, rm, options)
        return cls(ids.resolve(cid), backend)

    @classmethod
    def get(cls, query: str, backend: str | None = None) -> "Container":
        """The container that ``query`` (name, id, or a prefix of either) names."""
        return cls(ids.resolve(query), backend)

    def record(self) -> dict:
        """Its record as it is now."""
        return ids.resolve(self.id)

    @property
    def state(self) -> str:
        """``running``, ``exited`` or ``dead``."""
        return ids.status(self.record())

    def exec(self, argv: Sequence[str], **kw: Any) -> int:
        """Run ``argv`` in it (:func:`recipes.container.execin.exec_in` options); exit status."""
        with Runner(backend=self.backend, keep=True, announce_owner=False) as r:
            return exec_in(r, self.record(), argv, **kw)

    def logs(self) -> str:
        """What it printed so far."""
        path = self.record().get("log")
        with open(path, "rb") as f:
            return f.read().decode(errors="replace")

    def kill(self, sig: str | int = "KILL") -> None:
        """Send it a signal (default SIGKILL)."""
        with Runner(backend=self.backend, keep=True, announce_owner=False) as r:
            kill(r, self.record(), sig)

    def stop(self, seconds: float = 10.0) -> int | None:
        """SIGTERM, SIGKILL after ``seconds``; its exit code."""
        with Runner(backend=self.backend, keep=True, announce_owner=False) as r:
            return stop(r, self.record(), seconds)

    def wait(self, timeout: float | None = None) -> int | None:
        """Wait for it to end; its exit code."""
        return wait(self.record(), timeout)

    def rm(self, force: bool = False) -> None:
        """Remove it (``force``: kill it first if it runs)."""
        with Runner(backend=self.backend, keep=True, announce_owner=False) as r:
            remove(r, self.record(), force)

    def __enter__(self) -> "Container":
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self.rm(force=True)
        except ids.NoSuchContainer:
            pass    # removed already (rm=True, or rm() in the block)

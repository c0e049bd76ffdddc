"""A started :class:`Container`, its record (``STATE_DIR/nsr-c-*/state.json``) and leftovers.

A small room of its own below :mod:`recipes.container` and :mod:`recipes.cgroup`: the
container recipe writes a record, ``cleanup`` reads them all, and the cgroup recipe asks
which cgroups belong to recorded containers (so it does not list them twice). Nothing here
imports either recipe, so neither imports the other.
"""
from __future__ import annotations

import json
import os
import signal
import time
from dataclasses import dataclass, field
from typing import Any

from nsutil import cgroupfs
from nsutil import procfs
from nsutil import rootless
from nsutil.backend import Runner, Step
from nsutil.cgroupfs import Cgroup
from nsutil.errors import SyscallError
from nsutil.names import PREFIX
from nsutil.state import atomic_write_json, prune, read_json, state_dir

from recipes.common import userns
from recipes.common.leftover import Leftover
from recipes.cow import remove_tree


@dataclass
class Container:
    """A started container: its name, directory, cgroup and host PIDs."""

    name: str
    dir: str
    cgroup: Cgroup | None   #: None: without root and no delegated cgroup
    rootfs: str
    pid: int = 0            #: the tool's child: PID 1 as root, else the process outside
    report_r: int = -1      #: read end of the error pipe
    reaped: bool = False    #: True once ``pid`` has been waited for (never signal it again)
    pid1: int = 0           #: PID 1 of the container, as the host sees it
    id: str = ""            #: 64 hex digits, as Docker's (:mod:`recipes.container.ids`)
    extra: dict = field(default_factory=dict)   #: more for the record (env, log, detached)

    @property
    def upper(self) -> str:
        """The overlay's upper directory: everything the container wrote."""
        return os.path.join(self.dir, "upper")

    @property
    def work(self) -> str:
        """The overlay's work directory."""
        return os.path.join(self.dir, "work")

    @property
    def merged(self) -> str:
        """Where the overlay is mounted (inside the container's mount namespace only)."""
        return os.path.join(self.dir, "merged")


def record(run: Runner, path: str, data: dict[str, Any]) -> None:
    """Step: write the container's record ``data`` to ``path`` so `cleanup` can find it."""
    run.run(Step(f"record the container in {path}", display=f"echo '{{...}}' > {path}",
                 native=lambda: write_json(path, dict(data, created=time.time()))))


def container_record(ct: Container, argv: list[str], rm: bool) -> dict[str, Any]:
    """What is recorded of a started container ``ct``: the tool that runs it (``creator``,
    as environments record theirs; a detached container's is its supervisor) and its PIDs
    with their start times (a reused PID is never killed), cgroup, directory, id and
    ``ct.extra`` (the command's environment, user and working directory for
    ``container-exec``; the log file of a detached one)."""
    return {"name": ct.name, "dir": ct.dir, "rootfs": ct.rootfs, "argv": argv,
            "creator": procfs.identity(),
            "pid": ct.pid, "starttime": procfs.start_time(ct.pid) if ct.pid else None,
            "pid1": ct.pid1, "pid1_starttime": procfs.start_time(ct.pid1) if ct.pid1 else None,
            "cgroup": ct.cgroup.unique_dirs() if ct.cgroup else [], "rm": rm, "id": ct.id,
            **ct.extra}


def write_json(path: str, data: dict) -> None:
    """Write a state file atomically (temporary name, rename). No fsync: the record only has
    to outlive the tool, not the machine (/run is gone after a reboot anyway)."""
    tmp = f"{path}.tmp"
    try:
        with open(tmp, "w") as f:
            json.dump(data, f, indent=1, sort_keys=True)
        os.replace(tmp, path)
    except OSError as exc:
        raise SyscallError.from_oserror(f"write({path!r})", exc) from None


def record_exit(path: str, code: int, why: str | None) -> bool:
    """Write a container's exit code (and the one line saying why, when nsrecipes knows it)
    into its record at ``path`` with an atomic rename: from then on it is ``exited``, kept
    (by ``cleanup`` too) until ``container-rm``. False if the record is gone (removed
    meanwhile: ``cleanup --all``, ``container-rm --force``)."""
    rec = read_json(path)
    if rec is None:
        return False
    rec.update(exit_code=code, finished=time.time(), why=why)
    atomic_write_json(path, rec)
    return True


def states() -> list[dict]:
    """Every recorded container (``nsr-c-*`` under the state directory), with its ``dir``."""
    base = state_dir(create=False)
    if not os.path.isdir(base):
        return []
    out = []
    for entry in sorted(os.listdir(base)):
        if entry.startswith(f"{PREFIX}-c-") and os.path.isdir(os.path.join(base, entry)):
            data = read_json(os.path.join(base, entry, "state.json")) or {}
            data.setdefault("name", entry)
            data["dir"] = os.path.join(base, entry)
            out.append(data)
    return out


def recorded_cgroups() -> set[str]:
    """Cgroup directories that belong to recorded containers (their leftovers remove them)."""
    return {d for s in states() for d in s.get("cgroup", [])}


def remove_container(state: dict) -> None:
    """Kill a recorded container's processes (only if still the same: start time), remove
    its cgroups and its directory."""
    for key, start_key in (("pid", "starttime"), ("pid1", "pid1_starttime")):
        pid, start_time = state.get(key), state.get(start_key)
        if pid and start_time is not None and procfs.start_time(pid) == start_time:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    for d in reversed(state.get("cgroup", [])):
        real = os.path.realpath(d)
        if real.startswith(cgroupfs.ROOT + "/") and os.path.basename(real).startswith(PREFIX):
            cgroupfs.remove_dir(real)
    if rootless.decide():   # what the container's ids own is root's only in a user namespace
        userns.call_mapped(userns.widest(), lambda: remove_tree(state["dir"]),
                           f"remove {state['dir']}")
    else:
        remove_tree(state["dir"])
    prune()


def leftovers() -> list[Leftover]:
    """Containers recorded under the state directory (``nsr-c-*``): their processes, cgroups,
    mounts and directories."""
    return [Leftover("container", s["name"], lambda s=s: remove_container(s)) for s in states()]

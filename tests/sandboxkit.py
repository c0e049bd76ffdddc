"""A sandbox where only a test's own nsrecipes objects exist: a private mount + network
namespace of the test's own in which /tmp, /run/netns and /etc/netns are fresh tmpfs, the
state directory is ``NSR_STATE_DIR=/tmp/nsr-state`` and /sys/fs/cgroup shows only a v2 cgroup
the test made. A user's environments, namespaces, cgroups and scratch directories are out of
its sight, so neither ``cleanup`` nor ``cleanup --all`` run there can touch them.
"""
from __future__ import annotations

import os
import subprocess
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator

import pytest

from helpers import ROOT, checkout_under, cli
from nsutil import cgroupfs, process
from nsutil import syscalls as sc
from nsutil.names import scope_id

STATE = "/tmp/nsr-state"             # the state directory inside the sandbox
HIDDEN = (("/tmp", "1777"), ("/run/netns", "755"), ("/etc/netns", "755"))
#: cleanup's grace for unrecorded things, long enough for a test that takes minutes in a TCG VM
GRACE = 3600
LONG_AGO = 2 * GRACE                 # older than that grace


def _private_view(cgroup_dir: str | None,
                  hidden: tuple[tuple[str, str], ...] = HIDDEN) -> Callable[[], None]:
    """What the sandbox holder does in its new mount namespace: fresh tmpfs over the
    directories in ``hidden``, and ``cgroup_dir`` (if given) as the only cgroup hierarchy."""
    def setup() -> None:
        sc.make_propagation("/", "private", recursive=True)   # nothing below reaches the host
        for target, mode in hidden:
            if os.path.isdir(target):
                sc.mount("nsr-sandbox", target, "tmpfs", 0, f"mode={mode}")
        if cgroup_dir is None:
            return
        staging = "/tmp/.nsr-cgroup"                          # on the fresh /tmp
        os.mkdir(staging)
        sc.mount(cgroup_dir, staging, None, sc.MS_BIND)
        sc.umount("/sys/fs/cgroup", sc.MNT_DETACH)           # the host's hierarchies, here only
        sc.mount(staging, "/sys/fs/cgroup", None, sc.MS_MOVE)
        os.rmdir(staging)
    return setup


@dataclass
class Sandbox:
    """A holder of a private mount + network namespace, and the host path of its cgroup."""

    holder: process.Holder
    cgroup: str
    state: str = STATE               # the state directory the CLI is given inside

    def enter(self) -> list[str]:
        """The ``nsenter`` prefix that runs a command inside."""
        return ["nsenter", "-t", str(self.holder.pid), "--mount", "--net", f"--wd={ROOT}", "--"]

    def path(self, inside: str) -> str:
        """The host's path of ``inside`` (through the holder's root)."""
        return f"/proc/{self.holder.pid}/root{inside}"

    def cli(self, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
        """``invoke ARGS`` inside, with the sandbox's state directory (``env`` adds to, or
        with ``NSR_STATE_DIR: None`` takes from, the environment it runs with)."""
        full = {"NSR_STATE_DIR": self.state, "TMPDIR": "/tmp", "NSR_CLEANUP_GRACE": str(GRACE),
                **(env or {})}
        return cli(*args, env={k: v for k, v in full.items() if v is not None},
                   prefix=self.enter(), unset=[k for k, v in full.items() if v is None])

    def run(self, *argv: str) -> None:
        """A command inside that must succeed."""
        subprocess.run(self.enter() + list(argv), check=True, capture_output=True, timeout=60)

    def netns(self) -> set[str]:
        """The network namespaces ``ip netns list`` shows inside."""
        return set(os.listdir(self.path("/run/netns")))


@contextmanager
def open_sandbox(hidden: tuple[tuple[str, str], ...] = HIDDEN, own_cgroups: bool = True,
                 state: str = STATE) -> Iterator[Sandbox]:
    """A sandbox whose ``hidden`` directories are fresh tmpfs; with ``own_cgroups`` it sees
    only a v2 cgroup of its own and ends with ``cleanup --all`` (which then reaches only
    what the sandbox holds); without, it sees the host's cgroups and the caller undoes
    what it made (``cleanup --all`` there could reach a concurrent run's cgroups). ``state``
    is the state directory its CLI calls are given."""
    shadowed = checkout_under(*(d for d, _ in hidden))
    if shadowed:
        pytest.fail(f"the checkout is under {shadowed}, which this sandbox replaces with a fresh "
                    "tmpfs: clone the project somewhere else (e.g. /opt or your home)")
    cg = None
    if own_cgroups:
        layout = cgroupfs.detect()
        if layout.v2 is None:
            pytest.skip("no cgroup v2 hierarchy: the sandbox's cgroup view needs one")
        cg = os.path.join(layout.v2, f"nsr-sbx-{scope_id()}")
    os.makedirs("/run/netns", exist_ok=True)    # as `ip netns add` would make it
    if cg is not None:
        os.mkdir(cg)
    holder = None
    try:
        holder = process.spawn_holder(sc.CLONE_NEWNS | sc.CLONE_NEWNET, quiet=True,
                                      setup=_private_view(cg, hidden))
        box = Sandbox(holder, cg or "", state)
        if cg is not None:
            cgroupfs.write_file(os.path.join(cg, "cgroup.procs"), holder.pid)  # in use meanwhile
        yield box
        if cg is not None:
            final = box.cli("cleanup", "--all")      # only the sandbox's, whatever failed
            assert final.returncode == 0, final.stdout + final.stderr
    finally:
        if holder is not None:
            holder.stop()
        if cg is not None:
            cgroupfs.remove_dir(cg)


@pytest.fixture
def sandbox() -> Iterator[Sandbox]:
    """A sandbox with a cgroup of its own (see :func:`open_sandbox`)."""
    with open_sandbox() as box:
        yield box

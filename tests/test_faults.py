"""Failures half-way and Ctrl-C: whatever a run made is undone."""
from __future__ import annotations

import os
import signal
import subprocess
import time

import pytest

from helpers import INVOKE, ROOT
from nsutil import process
from nsutil.backend import Runner, Step
from nsutil.errors import NsrError
from nsutil.nstypes import ns_inode
from recipes.common import start_holder
from recipes import uts


def test_failure_half_way_undoes(backend):
    import socket
    host = socket.gethostname()
    holders = []
    with pytest.raises(NsrError, match="boom"):
        with Runner(backend=backend, keep=True) as run:
            holders.append(start_holder(run, "uts"))
            uts.set_hostname(run, holders[0], "nsr-half")
            assert process.call_in(holders[0].pid, ["uts"], socket.gethostname) == "nsr-half"
            def fail():
                raise NsrError("boom")
            run.run(Step("a step that fails", argv=None, native=fail))
    assert not holders[0].alive()
    assert socket.gethostname() == host


def test_undo_is_last_in_first_out(backend):
    order = []
    with Runner(backend=backend) as run:
        for n in range(3):
            run.defer(Step(f"undo {n}", native=lambda n=n: order.append(n)))
    assert order == [2, 1, 0]


def test_keep_leaves_things_for_the_user_until_undone(backend):
    with Runner(backend=backend, keep=True) as run:
        holder = start_holder(run, "uts")
    try:
        assert holder.alive() and ns_inode(holder.pid, "uts") != ns_inode("self", "uts")
    finally:
        holder.stop()
    assert not holder.alive()


@pytest.mark.parametrize("backend", ["shell", "native"])
def test_ctrl_c_undoes(backend):
    """SIGINT to the process group (what a terminal's Ctrl-C does) mid-demo."""
    proc = subprocess.Popen([INVOKE, "uts-demo", "--backend", backend, "--command", "sleep 30"],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        def holder_pid():
            kids = []
            for p in process.descendants(proc.pid):
                try:
                    if ns_inode(p, "uts") != ns_inode("self", "uts"):
                        kids.append(p)
                except NsrError:
                    pass  # a short-lived process (nsenter, hostname) that just exited
            return kids
        held = process.wait_for(holder_pid, 300, "the demo's holder")   # a CLI start: ~15 s in TCG
        os.killpg(proc.pid, signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 130, err
    assert "interrupted" in err and len(err.strip().splitlines()) == 1
    deadline = time.monotonic() + 5
    while any(process.pid_alive(p) for p in held) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(process.pid_alive(p) for p in held)

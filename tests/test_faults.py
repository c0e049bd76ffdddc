"""Failures half-way and Ctrl-C: whatever a run made is undone."""
from __future__ import annotations

import os
import signal
import subprocess
import time

import pytest

from helpers import INVOKE, ROOT
from nsutil import process
from nsutil import procfs
from nsutil.backend import Runner, Step
from nsutil.errors import NsrError
from nsutil.nstypes import ns_inode
from recipes.common.holder import start_holder
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


@pytest.fixture
def default_sigint():
    """Python's own SIGINT handler (a library user's script), restored after the test."""
    old = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, old)


@pytest.mark.userspace   # signal handlers of this process: no kernel object
@pytest.mark.parametrize("fails", [False, True], ids=["succeeds", "fails"])
def test_a_task_called_from_python_gives_the_signal_handlers_back(default_sigint, fails):
    """A task called as a function (a user's script, a test) puts back the caller's SIGINT,
    SIGHUP and SIGTERM handlers when it returns or fails: a finished task's handler would
    swallow every later Ctrl-C of the caller."""
    from invoke import Context, Exit

    from cli.common import nsr_task

    @nsr_task(lesson="shell")
    def demo(c, backend=None, explain=False):
        if fails:
            raise NsrError("a failure", hint="none")
    before = [signal.getsignal(s) for s in (signal.SIGINT, signal.SIGHUP, signal.SIGTERM)]
    try:
        demo(Context(), shell=True)
    except Exit:
        assert fails
    assert [signal.getsignal(s) for s in (signal.SIGINT, signal.SIGHUP, signal.SIGTERM)] == before
    with pytest.raises(KeyboardInterrupt):
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(1)


@pytest.mark.userspace   # the Runner's undo loop and Python's SIGINT handler: no kernel object
def test_ctrl_c_during_the_undo_lets_it_finish_then_raises(default_sigint):
    """A library user's Runner (no CLI wrapper): Ctrl-C in the middle undo step does not
    leave the steps below it behind; KeyboardInterrupt comes out of the block after them."""
    order: list[str] = []

    def interrupted() -> None:
        order.append("middle")
        os.kill(os.getpid(), signal.SIGINT)   # the default handler raises KeyboardInterrupt
        order.append("middle, after the Ctrl-C")

    with pytest.raises(KeyboardInterrupt):
        with Runner(backend="native", keep=True) as run:
            run.defer(Step("made first", native=lambda: order.append("first")))
            run.defer(Step("made second", native=interrupted))
            run.defer(Step("made last", native=lambda: order.append("last")))
            raise NsrError("a failure half-way")
    assert order == ["last", "middle", "first"]
    assert run.undo_stack == []


@pytest.mark.userspace   # the Runner's undo loop: no kernel object
def test_a_third_ctrl_c_during_one_undo_cuts_it_short():
    """The escape hatch: the third KeyboardInterrupt during one undo is raised at once and
    the steps below it stay on the stack, for a later undo."""
    order: list[int] = []

    def interrupted(n: int) -> None:
        order.append(n)
        raise KeyboardInterrupt

    run = Runner(backend="native")
    steps = [Step(f"undo {n}", native=lambda n=n: order.append(n)) for n in (0, 1)]
    steps += [Step(f"undo {n}", native=lambda n=n: interrupted(n)) for n in (2, 3, 4)]
    for step in steps:
        run.defer(step)
    with pytest.raises(KeyboardInterrupt):
        run.undo()
    assert order == [4, 3, 2]
    assert run.undo_stack == steps[:2]
    assert run.undo() == [] and order == [4, 3, 2, 1, 0]   # a new undo: counted anew


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
            for p in procfs.descendants(proc.pid):
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
    while any(procfs.pid_alive(p) for p in held) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(procfs.pid_alive(p) for p in held)


@pytest.mark.userspace
@pytest.mark.parametrize("how", ["run_foreground", "shell.run_full", "shell.run_many"])
def test_a_ctrl_c_before_the_command_started_reaches_it(how, monkeypatch, default_sigint):
    """A Ctrl-C that comes while a foreground command is being started, before it exists to
    get the terminal's, is passed on to it: the command ends at once and the interrupt is
    raised after it, and run_many starts no more. (A Ctrl-C test of a demo once landed in
    that window: its `sleep 30` ran the whole 30 s.) The Ctrl-C is sent to this process
    just before each start: the window, made certain. Python's own SIGINT handler, as a
    user's script has it: pytest started in the background by a shell without job control
    inherits SIGINT ignored, and then no Ctrl-C comes at all."""
    from nsutil import shell

    def late(start):
        def started(*args, **kwargs):
            os.kill(os.getpid(), signal.SIGINT)
            return start(*args, **kwargs)
        return started

    t = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        if how == "run_foreground":
            monkeypatch.setattr(subprocess, "Popen", late(subprocess.Popen))
            process.run_foreground(["sleep", "30"])
        elif how == "shell.run_full":
            monkeypatch.setattr(shell, "start", late(shell.start))
            shell.run_full(["sleep", "30"])
        else:
            monkeypatch.setattr(shell, "start", late(shell.start))
            shell.run_many([(["sleep", "30"], None), (["sleep", "31"], None)], width=1)
    assert time.monotonic() - t < 10

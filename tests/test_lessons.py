"""Lessons: ``--shell`` (a learner's shell inside the demo's namespaces) and ``--step``.

Interactive runs are driven through a real terminal: a tmux server of our own (``-L
nsr-lessons-XXXX``) runs the CLI in a pane, the test types the document's commands with
send-keys and reads the screen with capture-pane. Pipe runs (``bash -s``) go through the
Python API: a Runner whose Lesson reads a pipe, the shell's output caught with capfd.
"""
from __future__ import annotations

import os
import re
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import time

import pytest

import leakcheck
from helpers import INVOKE, ROOT, cli, one_line_error
from nsutil import netlink as nl, sysvipc
from nsutil import procfs
from nsutil.backend import Runner
from nsutil.lesson import Lesson, LessonQuit
from recipes import ipc
from recipes import mount
from recipes import net
from recipes import pid
from recipes import user
from recipes import uts

#: how long to wait for screen text (the VM starts Python ~60x slower than this host)
DEADLINE = float(os.environ.get("NSR_LESSON_DEADLINE", "300"))
PROMPT = "[root@NewNamespace]#"
HOST = socket.gethostname()

needs_tmux = pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is missing: apt-get "
                                "install tmux (./bootstrap pytest installs it)")


# --- a terminal of our own ---------------------------------------------------------------------

#: the pane runs the CLI under sh, which prints its exit status and stays (Ctrl-C is for the
#: CLI: sh only traps it; sh reaps the CLI:
#: tmux 3.3a here sometimes leaves a pane's exited process a zombie, its status unknown)
WRAPPER = 'trap : INT; "$@"; echo "nsr-exit-status: $?"; exec sleep 86400'


class Pane:
    """The CLI running in a tmux pane on our own server; type into it, read its screen.

    ``leader``: the CLI is the pane's process itself (``exec``), the terminal's session
    leader, which the kernel sends SIGHUP when the terminal goes away."""

    def __init__(self, server: str, conf: str, args: list[str], env: dict[str, str],
                 leader: bool = False) -> None:
        self.server, self.conf = server, conf
        argv = ["env", *[f"{k}={v}" for k, v in env.items()], INVOKE, *args]
        command = "exec " + shlex.join(argv if leader else ["sh", "-c", WRAPPER, "sh", *argv])
        self.tmux("new-session", "-d", "-x", "120", "-y", "40", "-c", ROOT, command)
        self.pid = int(self.tmux("display-message", "-p", "#{pane_pid}").strip())

    def tmux(self, *args: str) -> str:
        """Run a tmux command on our server; its stdout."""
        done = subprocess.run(["tmux", "-L", self.server, "-f", self.conf, *args],
                              capture_output=True, text=True, timeout=60)
        return done.stdout

    def screen(self) -> str:
        """Everything the pane showed (history included), wrapped lines joined."""
        text = self.tmux("capture-pane", "-p", "-J", "-S", "-", "-E", "-")
        return "\n".join(ln.rstrip() for ln in text.splitlines())

    def wait(self, pattern: str, count: int = 1) -> str:
        """Poll the screen until ``pattern`` (a regex, per line) matches ``count`` lines."""
        deadline = time.monotonic() + DEADLINE
        while time.monotonic() < deadline:
            text = self.screen()
            if sum(1 for ln in text.splitlines() if re.search(pattern, ln.rstrip())) >= count:
                return text
            if "nsr-exit-status: " in text and "nsr-exit-status" not in pattern:
                break
            time.sleep(0.1)
        raise AssertionError(f"no {pattern!r} (x{count}) on the screen:\n{self.screen()}")

    def keys(self, *keys: str) -> None:
        """Press keys (tmux names: Enter, C-c, C-d)."""
        self.tmux("send-keys", *keys)

    def type(self, line: str) -> None:
        """Type ``line`` literally and press Enter."""
        self.tmux("send-keys", "-l", line)
        self.keys("Enter")

    def command(self, line: str, prompt: str = PROMPT) -> list[str]:
        """Type a command at the shell's ``prompt``; the lines it printed."""
        at = "^" + re.escape(prompt) + r"( |$)"
        before = len([ln for ln in self.screen().splitlines() if re.search(at, ln.rstrip())])
        self.type(line)
        lines = [ln.rstrip() for ln in self.wait(at, before + 1).splitlines()]
        start = max(i for i, ln in enumerate(lines) if ln.rstrip() == f"{prompt} {line}")
        end = max(i for i, ln in enumerate(lines) if re.search(at, ln))
        return lines[start + 1:end]

    def exit_status(self) -> int:
        """Wait for the CLI to end; its exit status."""
        text = self.wait(r"^nsr-exit-status: \d+$")
        return int(re.findall(r"^nsr-exit-status: (\d+)$", text, re.M)[-1])


@pytest.fixture
def terminal(tmp_path):
    """Start the CLI in panes of a tmux server of our own; the server is killed at the end."""
    server = f"nsr-lessons-{secrets.token_hex(3)}"
    conf = tmp_path / "tmux.conf"
    conf.write_text("set -g history-limit 5000\n")
    panes: list[Pane] = []

    def start(*args: str, backend: str = "shell", leader: bool = False) -> Pane:
        panes.append(Pane(server, str(conf), list(args), {"NSR_BACKEND": backend}, leader))
        return panes[-1]
    try:
        yield start
    finally:
        subprocess.run(["tmux", "-L", server, "kill-server"], capture_output=True, timeout=60)
        for pane in panes:
            _wait_gone(pane.pid)
        socket_file = f"/tmp/tmux-{os.getuid()}/{server}"  # tmux leaves it behind
        if os.path.exists(socket_file):
            os.unlink(socket_file)


def _wait_gone(pid: int) -> None:
    """Wait until ``pid`` (the CLI) and what it started are gone."""
    deadline = time.monotonic() + DEADLINE
    while os.path.exists(f"/proc/{pid}") and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not os.path.exists(f"/proc/{pid}"), f"the CLI (pid {pid}) is still running"


#: what a lesson test can leave: its processes (this session's only), IPC objects and /tmp
#: entries; network namespaces, mounts and records are checked by name where a test makes
#: them (other runs on this shared host make their own meanwhile); the session's leak guard
#: checks everything at the end
OURS = ("processes", "ipc", "tmp")


@pytest.fixture
def nothing_left():
    """Assert that the test left nothing of nsrecipes on the host (and no extra IPC queue)."""
    before, queues = leakcheck.snapshot(), sysvipc.queue_ids()
    yield
    assert sysvipc.queue_ids() == queues
    left = leakcheck.new_since(before, leakcheck.snapshot())
    assert {k: v for k, v in left.items() if k in OURS} == {}


# --- --shell through a terminal ---------------------------------------------------------------

@needs_tmux
def test_uts_shell_prompt_hostname_and_host_after_exit(nothing_left, terminal, backend):
    pane = terminal("uts-demo", "--shell", backend=backend)
    pane.wait("^" + re.escape(PROMPT) + "$")
    assert pane.command("hostname") == ["NewNamespace"]
    inside = pane.command("readlink /proc/$$/ns/uts")
    assert inside and inside[0] != os.readlink("/proc/self/ns/uts")
    assert pane.command("set -o | grep -w monitor") == ["monitor         on"]  # job control
    pane.type("sleep 1000")                 # Ctrl-C is the shell's: it stops its command
    pane.keys("C-c")
    assert pane.command("echo back") == ["back"]
    pane.type("sleep 1000 &")               # left running at exit: must not outlive the demo
    pane.type("exit")
    assert pane.exit_status() == 0
    after = pane.screen().split(f"{PROMPT} exit", 1)[1]
    assert f"[root@{HOST}]# hostname\n{HOST}    <- the host's name is unchanged" in after
    assert socket.gethostname() == HOST


@needs_tmux
def test_pid_shell_is_pid_1_and_ctrl_d_goes_on(nothing_left, terminal):
    pane = terminal("pid-demo", "--shell", backend="native")
    pane.wait("^" + re.escape(PROMPT) + "$")
    assert pane.command("echo $$") == ["1"]
    ps = pane.command("ps -e -o pid=,comm=")
    assert [ln.split() for ln in ps] == [["1", "bash"], ["2", "ps"]]
    pane.keys("C-d")
    assert pane.exit_status() == 0
    assert "grandchild" in pane.screen().split(PROMPT)[-1]  # the demo went on after the shell


@pytest.mark.userspace   # the terminal's side (tmux, keys, screen); the namespaces are tested below on every kernel
@needs_tmux
def test_ipc_shell_host_queue_invisible_inside(nothing_left, terminal):
    pane = terminal("ipc-demo", "--shell")
    screen = pane.wait("^" + re.escape(PROMPT) + "$")
    qid = re.search(r"Message queue id: (\d+)", screen).group(1)
    key = next(q["key"] for q in sysvipc.list_queues() if str(q["msqid"]) == qid)
    inside = pane.command("ipcs -q")
    assert "Message Queues" in "\n".join(inside) and key not in "\n".join(inside)
    pane.type("exit")
    assert pane.exit_status() == 0
    after = pane.screen().split(f"{PROMPT} exit", 1)[1]
    assert key in after  # the host's ipcs -q shows its queue again


@pytest.mark.userspace   # the terminal's side (tmux, keys, screen); the namespaces are tested below on every kernel
@needs_tmux
def test_net_veth_shell_pings_the_peer_inside(nothing_left, terminal):
    names = ["--name", "nsr-lsa", "--peer", "nsr-lsb", "--addr", "10.231.7.1/24",
             "--peer-addr", "10.231.7.2/24"]
    try:
        pane = terminal("net-veth", *names, "--shell", backend="native")
        prompt = f"[root@{HOST} netns:nsr-lsa]#"
        pane.wait("^" + re.escape(prompt) + "$")
        out = pane.command("ping -c 1 -W 5 10.231.7.2", prompt)
        assert any("1 received" in ln for ln in out), out
        assert "nsr-lsa" in "\n".join(pane.command("ip -o link show type veth", prompt))
        pane.type("exit")
        assert pane.exit_status() == 0
        after = pane.screen().split(f"{prompt} exit", 1)[1]
        assert 'Device "nsr-lsa" does not exist.' in after     # the host's side
        assert not {"nsr-lsa", "nsr-lsb"} & set(os.listdir("/run/netns"))   # a lesson: undone
    finally:
        assert cli("net-veth", *names, "--delete").returncode == 0   # if the test failed first


@needs_tmux
@pytest.mark.parametrize("at", ["shell", "step"])
def test_killed_terminal_leaves_nothing(nothing_left, terminal, at):
    pane = terminal("ipc-demo", f"--{at}", leader=True)
    if at == "shell":
        pane.wait("^" + re.escape(PROMPT) + "$")
        pane.type("sleep 1000 & echo started")   # a job the learner leaves running
        pane.wait("^started$")
    else:
        for n in (1, 2, 3, 4):                   # the host's queue, the holder, its hostname
            pane.wait(rf"^-- step {n}: ")
            pane.keys("Enter")
        pane.wait(r"^-- step 5: ")
    started = procfs.descendants(pane.pid)  # the holder (, the shell, its sleep)
    assert len(started) >= (3 if at == "shell" else 1), started
    pane.tmux("kill-server")                # the terminal goes away: SIGHUP
    for pid_ in [pane.pid] + started:
        _wait_gone(pid_)


@pytest.mark.userspace   # signal handling in the task wrapper: no kernel object
def test_signals_during_the_undo_let_it_finish():
    """A hung-up terminal both fails the read (the demo quits and undoes) and sends SIGHUP;
    in the VM the SIGHUP once came during the undo and cut it short, leaving the ipc demo's
    host queue. Here, through the real task wrapper: an undo step that receives SIGHUP and
    then Ctrl-C (as signals come in between two steps) -- the steps below it still run; a
    third Ctrl-C would cut it short."""
    from invoke import Context, Exit
    from cli.common import nsr_task
    from nsutil.backend import Step
    done: list[str] = []

    def signalled() -> None:
        os.kill(os.getpid(), signal.SIGHUP)
        os.kill(os.getpid(), signal.SIGINT)
        done.append("signalled")

    @nsr_task(lesson="step")
    def demo(c, backend=None, explain=False):
        with Runner(backend="native", out=open(os.devnull, "w")) as run:
            run.defer(Step("the first step made", native=lambda: done.append("first")))
            run.defer(Step("the last step made", native=signalled))
            raise KeyboardInterrupt                       # Ctrl-C in the middle of the demo
    old = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGHUP, signal.SIGTERM)}
    try:
        with pytest.raises(Exit) as ended:
            demo(Context(), step=True)
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)
    assert ended.value.code == 130
    assert done == ["signalled", "first"]


@pytest.mark.userspace   # signal handling in the task wrapper: no kernel object
@pytest.mark.parametrize("during, finished", [(2, True), (3, False)])
def test_the_third_ctrl_c_during_the_undo_cuts_it_short(during, finished):
    """Through the real task wrapper: the Ctrl-C that starts the undo is not counted; two
    more during the undo still let it finish, the third received during it cuts it short
    (the step it came in and those below stay on the stack)."""
    from invoke import Context, Exit
    from cli.common import nsr_task
    from nsutil.backend import Step
    done: list[str] = []
    runners: list[Runner] = []

    def signalled() -> None:
        for n in range(1, during + 1):
            os.kill(os.getpid(), signal.SIGINT)
            done.append(f"Ctrl-C {n}")

    @nsr_task()
    def demo(c, backend=None, explain=False):
        with Runner(backend="native", out=open(os.devnull, "w")) as run:
            runners.append(run)
            run.defer(Step("the first step made", native=lambda: done.append("first")))
            run.defer(Step("the last step made", native=signalled))
            os.kill(os.getpid(), signal.SIGINT)          # Ctrl-C in the middle of the demo
    old = signal.getsignal(signal.SIGINT)
    try:
        with pytest.raises(Exit) as ended:
            demo(Context())
    finally:
        signal.signal(signal.SIGINT, old)
    assert ended.value.code == 130
    if finished:
        assert done == ["Ctrl-C 1", "Ctrl-C 2", "first"] and runners[0].undo_stack == []
    else:
        assert done == ["Ctrl-C 1", "Ctrl-C 2"]
        assert [s.title for s in runners[0].undo_stack] == ["the first step made"]


# --- --step through a terminal ----------------------------------------------------------------

STEP = r"^   \[Enter: run it"


@pytest.mark.userspace   # the terminal's side (tmux, keys, screen); the namespaces are tested below on every kernel
@needs_tmux
def test_step_enter_shell_quit(nothing_left, terminal, backend):
    pane = terminal("uts-demo", "--step", backend=backend)
    screen = pane.wait(STEP)
    assert "-- step 1: start a process in new UTS namespaces" in screen
    assert "   $ unshare --uts -- sleep infinity" in screen
    pane.keys("s", "Enter")                 # nothing made yet
    pane.wait(r"no namespaces made yet")
    pane.keys("Enter")                      # step 1 runs
    pane.wait(r"^-- step 2: set the hostname inside to 'NewNamespace'")
    pane.keys("Enter")
    pane.wait(r"^-- step 3: run 'hostname' inside")
    pane.keys("s", "Enter")                 # a shell in the namespaces made so far
    prompt = "[root@NewNamespace]#"
    pane.wait("^" + re.escape(prompt) + "$")
    assert pane.command("hostname") == ["NewNamespace"]
    pane.type("exit")
    pane.wait(STEP, 5)                      # back at step 3
    pane.keys("q", "Enter")
    assert pane.exit_status() == 0
    assert "quit at step 3: what this run made is undone" in pane.screen()
    assert "[root@NewNamespace]# hostname\nNewNamespace\n[root@NewNamespace]# exit" not in \
        pane.screen().split("quit at step")[0].split("-- step 3")[1].replace(prompt + " exit", "")


@pytest.mark.userspace   # the terminal's side (tmux, keys, screen); the namespaces are tested below on every kernel
@needs_tmux
def test_step_ctrl_c_undoes(nothing_left, terminal):
    pane = terminal("ipc-demo", "--step")
    for n in (1, 2, 3):                     # queue made, listed, holder started
        pane.wait(rf"^-- step {n}: ")
        pane.keys("Enter")
    pane.wait(r"^-- step 4: ")
    pane.keys("C-c")
    assert pane.exit_status() == 130
    assert "interrupted; what this run made has been undone" in pane.screen()


@pytest.mark.userspace   # the terminal's side (tmux, keys, screen); the namespaces are tested below on every kernel
@needs_tmux
def test_tour_step_q_after_a_few_steps(nothing_left, terminal):
    pane = terminal("tour", "--step")
    for n in (1, 2, 3):
        pane.wait(rf"^-- step {n}: ")
        pane.keys("Enter")
    pane.wait(r"^-- step 4: ")
    pane.keys("q", "Enter")
    assert pane.exit_status() == 0
    screen = pane.screen()
    assert "# 1. " in screen and "# 2. UTS namespace" not in screen  # the tour stopped
    assert "quit at step 4" in screen


@pytest.mark.userspace   # the terminal's side (tmux, keys, screen); the namespaces are tested below on every kernel
# --- stdin not a terminal ---------------------------------------------------------------------

def test_shell_on_a_pipe_runs_non_interactively(nothing_left):
    proc = subprocess.run([INVOKE, "uts-demo", "--shell"], cwd=ROOT, input="hostname\necho $-\n",
                          capture_output=True, text=True, timeout=DEADLINE)
    assert proc.returncode == 0, proc.stderr
    after = proc.stdout.split("reading commands from stdin --", 1)[1]
    lines = after.splitlines()
    assert lines[2] == "NewNamespace" and "i" not in lines[3]  # not interactive (no -i)
    assert f"{HOST}    <- the host's name is unchanged" in after


def test_net_veth_shell_undoes_its_pair_and_keeps_one_made_before():
    """A lesson leaves nothing: net-veth --shell removes the pair it made when the shell
    ends; a pair that was there before the run (made without --shell) stays."""
    names = ["--name", "nsr-lpa", "--peer", "nsr-lpb", "--addr", "10.231.8.1/24",
             "--peer-addr", "10.231.8.2/24"]
    mine = {"nsr-lpa", "nsr-lpb"}
    try:
        lesson = subprocess.run([INVOKE, "net-veth", *names, "--shell"], cwd=ROOT,
                                input="ip -o link show type veth\n", capture_output=True,
                                text=True, timeout=DEADLINE)
        assert lesson.returncode == 0, lesson.stderr
        assert "nsr-lpa" in lesson.stdout.split("reading commands from stdin --", 1)[1]
        assert not mine & set(nl.list_netns())
        assert cli("net-veth", *names).returncode == 0          # made to stay
        again = subprocess.run([INVOKE, "net-veth", *names, "--shell"], cwd=ROOT, input="true\n",
                               capture_output=True, text=True, timeout=DEADLINE)
        assert again.returncode == 0, again.stderr
        assert "nothing to do" in again.stdout and mine <= set(nl.list_netns())
    finally:
        assert cli("net-veth", *names, "--delete").returncode == 0
    assert not mine & set(nl.list_netns())


@pytest.mark.userspace
@pytest.mark.parametrize("option", ["--shell", "--step"])
def test_no_terminal_one_line(option, tmp_path, nothing_left):
    regular = tmp_path / "commands"
    regular.write_text("hostname\n")
    for stdin, kind in ((subprocess.DEVNULL, "/dev/null"), (open(regular), "file")):
        proc = subprocess.run([INVOKE, "uts-demo", option], cwd=ROOT, stdin=stdin,
                              capture_output=True, text=True, timeout=DEADLINE)
        line = one_line_error(proc)
        assert line.startswith(f"nsrecipes: {option} needs a terminal") and kind in line


@pytest.mark.userspace
def test_lesson_options_where_meaningful():
    import copy
    from cli.collection import ns
    # invoke's get_arguments() pops each help text off the task: ask a copy, or a later test
    # (test_every_task_has_help) finds none
    options = {t.name: {a.name: a.help for a in copy.deepcopy(t).get_arguments()}
               for t in ns.tasks.values()}
    for name in ("uts_demo", "ipc_demo", "pid_demo", "mount_demo", "net_demo", "net_veth",
                 "user_demo"):
        assert {"shell", "step"} <= set(options[name]), name
    for name in ("api_demo", "cgroup_demo", "cow_demo", "tour"):
        assert "step" in options[name] and "shell" not in options[name], name
    assert "[root@NewNamespace]#" in options["uts_demo"]["shell"]
    assert "q undoes everything" in options["tour"]["step"]


# --- the Runner with a pipe (Python API, both backends) -------------------------------------

def _pipe(text: str) -> int:
    r, w = os.pipe()
    os.write(w, text.encode())
    os.close(w)
    return r


PROBE = "readlink /proc/$$/ns/{ns}; hostname; echo pid=$$; id -u\n"


@pytest.mark.parametrize("recipe, ns, expect", [
    (uts.demo, "uts", {"hostname": "NewNamespace"}),
    (ipc.demo, "ipc", {"hostname": "NewNamespace"}),
    (pid.demo, "pid", {"hostname": "NewNamespace", "pid": "1"}),
    (mount.demo, "mnt", {}),
    (net.demo, "net", {}),
    (user.demo, "user", {"hostname": "NewNamespace", "uid": "0"}),
])
def test_learner_shell_is_inside(recipe, ns, expect, backend, capfd):
    fd = _pipe(PROBE.format(ns=ns))
    try:
        with Runner(backend=backend, lesson=Lesson(shell=True, fd=fd)) as run:
            recipe(run)
    finally:
        os.close(fd)
    out = capfd.readouterr().out
    link, name, pid_line, uid = out.split("reading commands from stdin --", 1)[1] \
        .splitlines()[2:6]
    assert re.fullmatch(rf"{ns}:\[\d+\]", link) and link != os.readlink(f"/proc/self/ns/{ns}")
    assert name == expect.get("hostname", HOST)
    if "pid" in expect:
        assert pid_line == "pid=1"
    assert uid == expect.get("uid", "0")


def test_step_answers_from_a_pipe(backend, capfd):
    # Enter, Enter, then `s` (a shell reading the pipe: hostname; exit), then q
    fd = _pipe("\n\ns\nhostname\nexit\nq\n")
    try:
        with pytest.raises(LessonQuit):
            with Runner(backend=backend, lesson=Lesson(step=True, fd=fd)) as run:
                uts.demo(run)
    finally:
        os.close(fd)
    out = capfd.readouterr().out
    # steps 1, 2, 3, and 3 again after the shell; q there
    assert out.count("-- step ") == 4 and out.count("-- step 3: run 'hostname' inside") == 2
    lines = out.splitlines()
    assert lines[lines.index(next(ln for ln in lines if ln.startswith("-- your shell"))) + 1] \
        == "NewNamespace"  # what the shell's hostname printed
    assert not run.undo_stack and not any(w.alive() for w in run.insides)

"""What a user would lose through the records: a re-used pid taken for a live process, a
record torn by a crash or seen half-written, two processes on one environment at once, a
removal cut short, and what ``cleanup`` then judges in use or orphaned.

Every test runs real processes on the real kernel with its own state directory
(``NSR_STATE_DIR``). A crash is a real one at a known point: SIGXFSZ from a small
RLIMIT_FSIZE in the middle of a write (the kernel kills the writer as it passes the limit),
or SIGKILL between two steps of a run paused as ``--step`` pauses (:mod:`tests.stepkit`).
A re-used pid is a real one too: inside a PID namespace of the test's own,
``/proc/sys/kernel/ns_last_pid`` makes the next process get the pid a dead one had (as CRIU
restores pids). Nothing is mocked.
"""
from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys

import pytest

from helpers import ROOT
from nsutil import process, procfs
from nsutil.backend import Runner
from recipes.ops import cleanup
from recipes import env
from recipes.env import state as envstate
from recipes import net
from stepkit import Stepped

PY = sys.executable


def _name(tag: str = "r") -> str:
    return f"nsr-{tag}-{secrets.token_hex(3)}"


def _quiet(backend: str = "native") -> Runner:
    return Runner(backend=backend, keep=True, out=open(os.devnull, "w"))


@pytest.fixture
def state(tmp_path, monkeypatch):
    """A state directory of the test's own (in this process and the ones it starts);
    whatever environment is left in it is removed at the end, also on failure."""
    base = str(tmp_path / "state")
    monkeypatch.setenv("NSR_STATE_DIR", base)
    yield base
    for item in env.leftovers():
        try:
            item.remove()
        except Exception as exc:   # report, and go on removing the rest
            print(f"cleanup of {item.name}: {exc}", file=sys.stderr)


def _env_sweep() -> tuple[list[str], dict[str, str]]:
    """What ``cleanup`` (not --all) would do with the environments: (names it would
    remove, {name: why it is kept}). Only environments: a shared host has others' objects."""
    plan = cleanup.sweep()
    return ([i.name for i in plan.remove if i.kind == "env"],
            {k.name: k.why for k in plan.kept if k.kind == "env"})


def _remove_envs(names: list[str]) -> None:
    """What ``cleanup`` does with the environments it judged orphaned."""
    plan = cleanup.sweep()
    items = [i for i in plan.remove if i.kind == "env" and any(n in i.name for n in names)]
    removed, failed = cleanup.remove_all(items=items)
    assert not failed, failed


def _mounts_of(name: str) -> list[str]:
    with open("/proc/self/mountinfo") as f:
        return [ln.split()[4] for ln in f if f"/{name}" in ln.split()[4]]


def _nothing_left(name: str, pids: set[int]) -> None:
    base = env.base_dir()
    assert not [e for e in os.listdir(base) if name in e] if os.path.isdir(base) else True
    assert not _mounts_of(name)
    assert not os.path.lexists(f"/run/netns/{name}")
    assert not [p for p in pids if procfs.pid_alive(p)], "a process of it still runs"


# --- a crash in the middle of writing a record ----------------------------------------------

#: the child: write the old record, then crash (SIGXFSZ) in the middle of writing the new one
_CRASH_WRITE = r"""
import json, os, resource, signal, sys
from recipes.container import state as containerstate
from recipes.env import state as envstate
from recipes import net
kind, where = sys.argv[1:3]
old = {"kind": "env", "name": "nsr-old", "version": 1, "status": "ready"}
new = dict(old, status="changed", mounts=[{"target": "/m%d" % i} for i in range(400)])

def write(data):
    if kind == "env":
        envstate.write_state(where, data)
    elif kind == "net":
        net.save_record(where, data)
    elif kind == "container":
        containerstate.write_json(where, data)
    else:   # /etc/netns/NAME/hosts
        net.write_etc_hosts(where, [("10.0.0.%d" % (i % 250 + 1), "h%d" % i)
                                    for i in range(len(data.get("mounts", [])) or 1)])
write(old)
print("old written", flush=True)
signal.signal(signal.SIGXFSZ, signal.SIG_DFL)       # Python ignores it; the kernel's default
resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
resource.setrlimit(resource.RLIMIT_FSIZE, (256, 256))
write(new)
print("not killed", flush=True)
"""


@pytest.mark.parametrize("kind", ["env", "net", "container", "etc-hosts"])
def test_a_crash_mid_write_leaves_the_old_record(state, kind, tmp_path):
    """The writer is killed by the kernel (SIGXFSZ at RLIMIT_FSIZE) half-way through writing
    the new record: the file every reader opens is still the old one, whole -- written to
    a temporary name and renamed, never in place."""
    name = _name("w")
    if kind == "env":
        os.makedirs(os.path.join(state, name), 0o700)
        where, path = name, os.path.join(state, name, env.STATE_FILE)
    elif kind == "net":
        os.makedirs(os.path.join(state, "net"), 0o700)
        where = path = net.record_path(name)
    elif kind == "container":
        where = path = str(tmp_path / "state.json")
    else:
        where, path = name, os.path.join(net.ETC_NETNS, name, "hosts")
    try:
        done = subprocess.run([PY, "-c", _CRASH_WRITE, kind, where], cwd=ROOT, timeout=300,
                              capture_output=True, text=True,
                              env={**os.environ, "PYTHONPATH": ROOT})
        assert done.stdout == "old written\n", done.stdout + done.stderr
        assert done.returncode == -signal.SIGXFSZ, done.stderr
        with open(path) as f:
            text = f.read()
        if kind == "etc-hosts":
            assert text.splitlines()[-1] == "10.0.0.1\th0", text[-300:]
        else:
            assert json.loads(text)["status"] == "ready"
        if kind == "env":
            assert env.read_state(name)["status"] == "ready"
            assert env.names() == [name]
    finally:
        if kind == "etc-hosts":
            net.remove_etc_netns(name)


#: the child: rewrite an environment's record COUNT times, under its lock, as fast as it can
_REWRITE = r"""
import sys
from recipes.env import state as envstate
name, count = sys.argv[1], int(sys.argv[2])
for n in range(1, count + 1):
    with envstate.env_lock(name):
        envstate.update_state(name, lambda d: d.update(
            hostname="h%d" % n, mounts=[{"type": "tmpfs", "target": "/m%d" % i, "size": None,
                                         "readonly": False} for i in range(n % 7 * 150)]))
print(n, flush=True)
"""


def test_a_reader_never_sees_a_torn_record(state):
    """One process rewrites an environment's record again and again (its mounts grow and
    shrink, as env-mount and env-rm do); another lists and reads it all the while: it is
    always there and whole (a record written in place is empty or cut off for a moment,
    and env-ls would drop the environment, cleanup take it for gone)."""
    name = _name("t")
    env.create(_quiet(), name, "uts")
    writer = subprocess.Popen([PY, "-c", _REWRITE, name, "60"], cwd=ROOT, stdout=subprocess.PIPE,
                              text=True, env={**os.environ, "PYTHONPATH": ROOT})
    reads, missed = 0, []
    try:
        while writer.poll() is None:
            reads += 1
            if env.names() != [name]:
                missed.append("names")
            st = env.read_state(name)
            if st is None or st.get("name") != name:
                missed.append("record")
    finally:
        writer.wait(60)
    writes = int(writer.stdout.read())
    print(f"{writes} writes, {reads} reads")
    assert writes == 60 and reads > 100
    assert not missed, f"{len(missed)} of {reads} reads saw no whole record"
    env.remove(_quiet(), name)


# --- a re-used pid -------------------------------------------------------------------------

#: runs as PID 1 of a PID namespace of the test's own (unshare --pid --fork --mount-proc)
_REUSE = r"""
import json, os, resource, signal, subprocess, sys, time
from nsutil import process, procfs
from nsutil.errors import NsrError
from recipes.ops import cleanup
from recipes import env
from nsutil.backend import Runner

def reap():
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return

def gone(pid):
    def check():
        reap()
        return not os.path.exists("/proc/%d" % pid)
    process.wait_for(check, 10, "pid %d to go" % pid)

def reuse(pid):
    "A new process with the pid a dead one had: ns_last_pid of this namespace (ours)."
    # a clock tick (1/100 s, /proc/PID/stat's start time) first: an idle machine can create,
    # kill and reuse within one tick, and the two would not differ even in start time
    time.sleep(0.03)
    for _ in range(5):
        with open("/proc/sys/kernel/ns_last_pid", "w") as f:
            f.write(str(pid - 1))
        p = subprocess.Popen(["sleep", "600"])
        if p.pid == pid:
            return p
        p.kill()
        p.wait()
    raise SystemExit("pid %d could not be had again" % pid)

def sweep(name):
    plan = cleanup.sweep()
    return ([i for i in plan.remove if i.kind in ("env", "container") and name in i.name],
            {k.name: k.why for k in plan.kept if k.kind in ("env", "container")})

what, name, backend = sys.argv[1:4]
out = {}
if what == "holder":
    e = env.Environment.create(name, "uts,ipc", backend=backend)
    st = e.state
    for key in ("holder", "parent"):
        try:
            os.kill(st[key]["pid"], signal.SIGKILL)
        except ProcessLookupError:
            pass
    for key in ("holder", "parent"):
        gone(st[key]["pid"])
    others = [reuse(st["holder"]["pid"])]
    out["start_differs"] = procfs.start_time(others[0].pid) != st["holder"]["start"]
    out["alive"] = e.alive()
    out["state"] = env.describe(name)["state"]
    try:
        e.exec(["true"])
        out["exec"] = "ran"
    except NsrError as exc:
        out["exec"] = str(exc)
elif what == "container":   # its tool SIGKILLed: a dead container; its pids go to others
    from recipes.container import state as containerstate
    tool = subprocess.Popen([sys.executable, "-c", sys.argv[4], name, backend])
    def recorded():
        return [s for s in containerstate.states() if s["name"] == name and s.get("pid1")]
    process.wait_for(lambda: recorded() or tool.poll() is not None, 120, "the container")
    tool.kill()
    out["code"] = tool.wait()
    reap()
    rec = next(s for s in containerstate.states() if s["name"] == name)
    for key in ("pid", "pid1"):
        gone(rec[key])
    # as root PID 1 is the tool's own child: the record's two pids are then one
    others = [reuse(pid) for pid in sorted({rec["pid"], rec["pid1"]})]
else:   # the creator killed (SIGXFSZ) while its record is half-made: .env-NAME.PID.tmp
    creator = subprocess.Popen([sys.executable, "-c", sys.argv[4], name, backend])
    out["creator_status"] = creator.wait()
    out["half_made"] = [e for e in os.listdir(env.base_dir()) if name in e]
    others = [reuse(creator.pid)]
remove, kept = sweep(name)
out["remove"] = [i.name for i in remove]
out["kept"] = kept
removed, failed = cleanup.remove_all(items=remove)
out["failed"] = [str(exc) for _, exc in failed]
out["other_alive"] = all(procfs.pid_alive(p.pid) for p in others)
base = env.base_dir()
out["left"] = sorted(os.listdir(base)) if os.path.isdir(base) else []
for p in others:
    p.kill()
    p.wait()
print(json.dumps(out), flush=True)
"""

#: the creator that the kernel kills (SIGXFSZ) while it writes its first record
_CREATE_UNTIL_RECORD = r"""
import os, resource, signal, sys
from nsutil.backend import Runner
from recipes import env
name, backend = sys.argv[1:3]
sys.dont_write_bytecode = True
signal.signal(signal.SIGXFSZ, signal.SIG_DFL)
resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
resource.setrlimit(resource.RLIMIT_FSIZE, (64, 64))
with Runner(backend=backend, keep=True, out=open(os.devnull, "w")) as run:
    env.create(run, name, "uts,ipc")
"""


#: the tool of a container kept after it exits (``container-run --no-rm``), which the test
#: SIGKILLs while the container runs (one that exited in the tool's hands is kept: exited)
_CONTAINER_TOOL = r"""
import os, sys
from nsutil.backend import Runner
from recipes import container
name, backend = sys.argv[1:3]
with open(os.devnull, "w") as null, Runner(backend=backend) as run:
    sys.exit(container.run_container(run, ["sleep", "600"], rm=False, name=name,
                                     stdout=null.fileno(), stderr=null.fileno()))
"""


def _in_own_pidns(state: str, *args: str) -> dict:
    """Run :data:`_REUSE` as PID 1 of a new PID namespace (with its own /proc, in a mount
    namespace of its own); its report."""
    done = subprocess.run(["unshare", "--pid", "--fork", "--mount-proc", "--", PY, "-c", _REUSE,
                           *args], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": ROOT, "NSR_STATE_DIR": state})
    assert done.returncode == 0, done.stdout + done.stderr
    return json.loads(done.stdout.splitlines()[-1])


def test_a_reused_pid_is_not_the_holder(state, backend):
    """The holder is killed and its pid is handed to another process (a re-used pid, with
    another start time): the environment is dead -- env-ls says so, env-exec refuses,
    cleanup removes it -- and that other process is neither taken for the holder nor
    killed."""
    name = _name("u")
    out = _in_own_pidns(state, "holder", name, backend)
    assert out["start_differs"]
    assert (out["alive"], out["state"]) == (False, "dead"), out
    assert "is dead" in out["exec"], out
    assert out["remove"] == [name] and out["kept"] == {}, out
    assert out["failed"] == [] and out["left"] == [], out
    assert out["other_alive"], "cleanup killed the process that re-used the holder's pid"


def test_a_container_whose_pids_were_reused_is_removed_without_killing_them(state, backend):
    """A container run with --no-rm whose tool is SIGKILLed (a dead one: no exit code was
    recorded): its processes (PID 1, and without root the process outside) are gone and
    their pids handed to other processes. cleanup judges the container orphaned, removes its record, cgroup and
    directory, and kills neither of the two."""
    name = f"nsr-c-u{secrets.token_hex(3)}"
    out = _in_own_pidns(state, "container", name, backend, _CONTAINER_TOOL)
    assert out["code"] == -signal.SIGKILL, out
    assert out["remove"] == [name] and out["kept"] == {}, out
    assert out["failed"] == [] and out["left"] == [], out
    assert out["other_alive"], "cleanup killed a process that re-used a container's pid"


def test_a_half_made_record_whose_creator_pid_was_reused_is_cleaned_up(state):
    """The creator dies while its record is half-made (``.env-NAME.PID.tmp``, killed by the
    kernel mid-write), and its pid goes to another process: cleanup still judges the record
    orphaned and removes it (its creator's lock on it is gone), and leaves the other
    process alone. Judged by the pid alone it stays for ever, as long as that pid runs."""
    name = _name("h")
    out = _in_own_pidns(state, "creator", name, "native", _CREATE_UNTIL_RECORD)
    assert out["creator_status"] == -signal.SIGXFSZ, out
    assert len(out["half_made"]) == 1 and out["half_made"][0].startswith(f".env-{name}."), out
    assert len(out["remove"]) == 1 and "half-made" in out["remove"][0], out
    assert out["failed"] == [] and out["left"] == [], out
    assert out["other_alive"], out


# --- two processes on one environment -----------------------------------------------------

def _flock_waiters(path: str) -> int:
    """How many flock requests wait for a lock on ``path`` (``->`` lines in /proc/locks)."""
    st = os.stat(path)
    dev = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    with open("/proc/locks") as f:
        return sum(1 for ln in f if "->" in ln and "FLOCK" in ln and dev in ln.split())


def _wait_waiters(path: str, count: int, procs: list[subprocess.Popen]) -> None:
    def ready() -> bool:
        for p in procs:
            assert p.poll() is None, p.communicate()
        assert os.path.isdir(path), f"{path} was removed: a process did not wait for its lock"
        return _flock_waiters(path) >= count
    process.wait_for(ready, 600, f"{count} processes to wait for the lock on {path}")


def test_two_creates_of_one_name_make_one_environment(state):
    """Two ``env-create`` of one name at once, both past the first check for the name
    (they wait for the state directory's lock the test holds meanwhile): exactly one
    makes it, the other says it exists already, and the one made is whole and alive."""
    name = _name("two")
    os.makedirs(state, 0o700, exist_ok=True)
    with env.global_lock():
        procs = [subprocess.Popen([os.path.join(os.path.dirname(PY), "invoke"), "env-create",
                                   name, "--ns", "uts,ipc,mnt", "--backend", backend],
                                  cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True)
                 for backend in ("native", "shell")]
        _wait_waiters(state, 2, procs)
    results = [p.communicate(timeout=300) + (p.returncode,) for p in procs]
    codes = sorted(r[2] for r in results)
    assert codes[0] == 0 and codes[1] != 0, results
    loser = next(r for r in results if r[2] != 0)
    assert "exists already" in loser[1] and len(loser[1].strip().splitlines()) == 1, loser
    assert env.describe(name)["state"] == "alive"
    assert sorted(env.bound_inodes(name)) == ["ipc", "mnt", "uts"]
    holder = env.read_state(name)["holder"]["pid"]
    env.remove(_quiet(), name)
    _nothing_left(name, {holder})


def test_env_rm_waits_for_a_create_in_progress(state, backend):
    """``env-rm`` of an environment still being made waits until the create is done (the
    environment's lock), then removes all of it; it never pulls the record from under the
    creator, which would leave a holder and binds that no record names."""
    name = _name("p")
    creator = Stepped("create", name, backend, "uts,ipc,mnt,net")
    remover = None
    try:
        creator.until("start the holder")
        assert env.read_state(name)["status"] == "creating"
        remover = subprocess.Popen(
            [os.path.join(os.path.dirname(PY), "invoke"), "env-rm", name], cwd=ROOT,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        _wait_waiters(env.env_dir(name), 1, [remover])
        creator.until("bring lo up")   # the holder, the binds, the netns name meanwhile
        assert remover.poll() is None, "env-rm went ahead of the create"
        st = env.read_state(name)
        assert creator.finish() == 0, creator.stderr()
        out, err = remover.communicate(timeout=300)
        assert remover.returncode == 0, out + err
    finally:
        creator.kill()
        if remover is not None and remover.poll() is None:
            remover.kill()
            remover.wait()
    _nothing_left(name, {st["holder"]["pid"], st["parent"]["pid"]})


def test_two_removes_at_once_remove_it_once(state):
    """Two ``env-rm`` of one environment at once (both waiting for its lock, which the test
    holds meanwhile): one removes it, the other says in one line that it does not exist;
    nothing of it is left."""
    name = _name("d")
    env.create(_quiet(), name, "uts,ipc,pid,mnt,net")
    st = env.read_state(name)
    with envstate.env_lock(name):
        procs = [subprocess.Popen([os.path.join(os.path.dirname(PY), "invoke"), "env-rm", name,
                                   "--backend", backend], cwd=ROOT, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True)
                 for backend in ("native", "shell")]
        _wait_waiters(env.env_dir(name), 2, procs)
    results = [p.communicate(timeout=300) + (p.returncode,) for p in procs]
    assert sorted(r[2] for r in results)[0] == 0, results
    other = [r for r in results if r[2] != 0]
    assert len(other) == 1, results
    assert "does not exist" in other[0][1] and len(other[0][1].strip().splitlines()) == 1, other
    _nothing_left(name, {st["holder"]["pid"], st["parent"]["pid"]})


# --- cleanup during a create --------------------------------------------------------------

def test_cleanup_keeps_a_create_in_progress_and_removes_it_once_its_creator_died(state, backend):
    """While a create is paused between its steps (record made, holder not yet; then the
    holder up, its netns not yet named) ``cleanup`` keeps the environment, saying who
    makes it; once the creator is SIGKILLed there, cleanup judges it orphaned and removes
    all of it: holder, binds, netns name, record."""
    name = _name("k")
    creator = Stepped("create", name, backend, "uts,ipc,pid,mnt,net")
    try:
        creator.until("start the holder")
        remove, kept = _env_sweep()
        assert name not in remove and kept.get(name) == f"being made by pid {creator.pid} runs"
        creator.until("make its network namespace visible")
        st = env.read_state(name)
        assert st["status"] == "creating" and st["holder"], st
        remove, kept = _env_sweep()
        assert name not in remove and name in kept
        creator.kill()
        remove, kept = _env_sweep()
        assert remove == [name] and name not in kept
        _remove_envs([name])
    finally:
        creator.kill()
    _nothing_left(name, {st["holder"]["pid"], st["parent"]["pid"]})


# --- the order of the removal steps -------------------------------------------------------

#: what env-rm does, in this order: what still runs can still be found and killed, and the
#: record -- the only map of what is left -- goes last
REMOVAL = ["kill the processes", "delete ", "remove the `ip netns` name", "unbind ",
           "remove its record"]


def _make_with_a_process_and_a_veth(name: str) -> tuple[dict, subprocess.Popen]:
    """An environment without a PID namespace (its processes are found by their namespaces,
    not by a PID 1 whose death takes all), a veth to the host, and a process of its own."""
    e = env.Environment.create(name, "uts,ipc,mnt,net", backend="native")
    e.add_veth(addr="10.231.0.2/30", peer_addr="10.231.0.1/30")
    st = e.state
    inside = subprocess.Popen(["nsenter", "-t", str(st["holder"]["pid"]), "--uts", "--ipc",
                               "--mount", "--net", "--", "sleep", "600"], start_new_session=True)
    process.wait_for(lambda: os.stat(f"/proc/{inside.pid}/ns/net").st_ino == st["ns"]["net"],
                     10, "the process to enter")
    return st, inside


def _order(titles: list[str]) -> list[int]:
    return [next(i for i, t in enumerate(titles) if t.startswith(words)) for words in REMOVAL]


def test_removal_order_and_a_crash_after_any_step(state):
    """env-rm's steps run in an order that a crash cannot turn into a leak: SIGKILLed
    before each of its steps in turn, what is left is still an environment ``cleanup``
    finds and removes whole -- no process of it left running, no host link, netns name,
    bind or record."""
    name = _name("o")
    st, inside = _make_with_a_process_and_a_veth(name)
    link = st["links"][0]
    try:
        remover = Stepped("remove", name, "native")
        assert remover.finish() == 0, remover.stderr()
        order = _order(remover.titles)
        assert order == sorted(order), remover.titles
        inside.wait(10)
        _nothing_left(name, {st["holder"]["pid"], inside.pid})
        assert not os.path.exists(f"/sys/class/net/{link}")
        steps = len(remover.titles)
    finally:
        inside.kill()
        inside.wait()
    # under TCG (tests/vm) each round costs a Python start of ~12 s: after the kill, the veth,
    # the netns name, the first unbind, and the last but one
    for k in ([1, 2, 3, 4, steps - 1] if os.environ.get("NSR_VM") else range(1, steps + 1)):
        name = _name("o")
        st, inside = _make_with_a_process_and_a_veth(name)
        try:
            remover = Stepped("remove", name, "native")
            remover.steps(k)      # it waits before step k + 1 (or has finished)
            remover.kill()
            # what a user does next: env-rm again (or cleanup, once the holder is dead)
            env.remove(_quiet(), name, missing_ok=True)
            process.wait_for(lambda: inside.poll() is not None, 10, "its process to be killed")
            _nothing_left(name, {st["holder"]["pid"], st["parent"]["pid"], inside.pid})
            assert not os.path.exists(f"/sys/class/net/{st['links'][0]}"), k
        finally:
            inside.kill()
            inside.wait()


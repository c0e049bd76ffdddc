"""Environments: the whole life cycle on both backends, each step, the CLI, bad
input and faults (SIGKILL of the holder and of the tool mid-create), other users, twenty
in parallel -- observed with nsenter, ip netns, lsns and /proc, not with our own code only.
"""
from __future__ import annotations

import errno
import json
import os
import secrets
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time

import pytest

from helpers import INVOKE, ROOT, as_nobody, cli, one_line_error
from nsutil import idmap, mountattr, mountinfo, process, state
from nsutil import syscalls as sc
from nsutil import procfs
from nsutil.backend import Runner
from nsutil.errors import Conflict, InvalidInput, NotFound, NsrError, SyscallError
from recipes.common import reach
from recipes import env
from recipes.env import holder, state as envstate

PY = sys.executable
BASE = env.base_dir()


def _name(tag: str = "e") -> str:
    return f"nsr-{tag}-{secrets.token_hex(3)}"


def _quiet(backend: str | None = None, **kw) -> Runner:
    return Runner(backend=backend, keep=True, out=open(os.devnull, "w"), **kw)


@pytest.fixture
def names():
    """Environment names for a test; whatever exists of them is removed afterwards."""
    made: list[str] = []

    def new(tag: str = "e") -> str:
        made.append(_name(tag))
        return made[-1]
    try:
        yield new
    finally:
        for n in made:
            env.remove(_quiet("native"), n, missing_ok=True)
        # half-made records of these names (a SIGKILLed creator)
        for item in env.leftovers():
            if any(n in item.name for n in made):
                item.remove()


def _run(argv: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, timeout=30, **kw)


def _inode(path: str) -> int:
    return os.stat(path).st_ino


def _members(inodes: dict[str, int]) -> set[int]:
    """Processes in any of these namespaces, found by scanning /proc (not with our code)."""
    found = set()
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            for t, ino in inodes.items():
                try:
                    if os.stat(f"/proc/{pid}/ns/{env.NS_TYPES[t].proc}").st_ino == ino:
                        found.add(int(pid))
                except OSError:
                    pass
    return found


def _members_named(name: str) -> list[int]:
    """Processes whose command line mentions ``name`` (a holder started for it)."""
    found = []
    for pid in os.listdir("/proc"):
        if pid.isdigit() and int(pid) != os.getpid():
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    if name.encode() in f.read():
                        found.append(int(pid))
            except OSError:
                pass
    return found


def _nothing_left(name: str, pids: set[int] | None = None) -> None:
    """Independent checks that nothing of ``name`` remains. (Namespace inode numbers are
    re-used at once by others' new namespaces, so processes are checked by pid.)"""
    assert not os.path.lexists(os.path.join(BASE, name))
    assert name not in _run(["ip", "netns", "list"]).stdout.split()
    with open("/proc/self/mountinfo") as f:
        mounts = f.read()   # read once: a second f.read() would return "" and check nothing
    assert f"/{name}/" not in mounts and f"/{name} " not in mounts
    assert not [p for p in (pids or ()) if procfs.pid_alive(p)], "a process of it still runs"
    assert not [e for e in os.listdir(BASE) if name in e] if os.path.isdir(BASE) else True


def _private_bind_undone() -> None:
    """Once no environment is left -- not even a half-made one (``.env-NAME.PID.tmp``) -- no
    mount is on the state directory: the private bind was undone. The message shows what the
    directory holds, the mounts on it and the bind record, so a failure says whose it is."""
    if env.names() or envstate.env_entries():
        return
    with open("/proc/self/mountinfo") as f:
        on_base = [ln.strip() for ln in f if ln.split()[4] == BASE]
    try:
        with open(os.path.join(BASE, holder.BIND_RECORD)) as f:
            record = f.read()
    except OSError as exc:
        record = f"no record ({exc.strerror})"
    held = sorted(os.listdir(BASE)) if os.path.isdir(BASE) else None
    assert not on_base, f"the private bind was not undone: {on_base}; {BASE} holds {held}; {record}"


# --- the life cycle, both backends ----------------------------------------------------------

def test_life_cycle(backend, names):
    name = names()
    e = env.Environment.create(name, "uts,ipc,pid,mnt,net,user,cgroup", hostname="web1",
                               backend=backend)
    st = e.state
    pid = st["holder"]["pid"]
    assert st["status"] == "ready" and st["backend"] == backend
    # state: 0700 dir, atomic record, one nsfs bind per type with the holder's inode
    assert stat.S_IMODE(os.stat(BASE).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(os.path.join(BASE, name, "env.json")).st_mode) == 0o600
    for t in st["types"]:
        assert _inode(f"{BASE}/{name}/{t}") == _inode(f"/proc/{pid}/ns/{env.NS_TYPES[t].proc}")
        assert _inode(f"/proc/{pid}/ns/{env.NS_TYPES[t].proc}") != _inode(f"/proc/self/ns/{env.NS_TYPES[t].proc}")
    # ip netns sees it by its name, and identifies the holder's netns
    assert name in _run(["ip", "netns", "list"]).stdout.split()
    assert _run(["ip", "netns", "identify", str(pid)]).stdout.strip() == name
    # lsns sees the same namespaces held by the same process tree
    rows = json.loads(_run(["lsns", "-J", "-o", "NS,TYPE,PID"]).stdout)["namespaces"]
    seen = {r["type"]: r["ns"] for r in rows if int(r["ns"]) in st["ns"].values()}
    assert {t: int(i) for t, i in seen.items()} == st["ns"]
    # nsenter through the bound files, without our code
    out = _run(["nsenter", f"--user={BASE}/{name}/user", f"--uts={BASE}/{name}/uts", "hostname"])
    assert out.stdout.strip() == "web1", out.stderr
    # the holder is PID 1 inside; exec joins every namespace, with root and workdir
    done = e.exec(["sh", "-c", "echo $$; hostname; id -u; pwd; readlink /proc/1/ns/net; exit 7"])
    lines = done.stdout.split()
    assert done.returncode == 7
    assert lines[1:4] == ["web1", "0", "/"]
    assert lines[4] == f"net:[{st['ns']['net']}]"
    assert e.exec(["pwd"], cwd="/tmp").stdout.strip() == "/tmp"
    assert e.exec(["sh", "-c", "cat /proc/1/comm"]).stdout.strip() in ("sh", name[:15])
    # env-ls
    row = env.describe(name)
    assert row["state"] == "alive" and row["pid"] == pid and row["nprocs"] >= 1
    assert pid in row["pids"] and row["ns"] == st["ns"]
    # remove
    pids = _members(st["ns"])
    assert pid in pids and set(row["pids"]) <= pids   # env-ls counts only its own processes
    e.remove()
    _nothing_left(name, pids)
    assert not procfs.pid_alive(pid)
    with pytest.raises(NotFound):
        e.remove()
    _private_bind_undone()


def test_context_manager_removes(backend, names):
    name = names()
    with env.Environment.create(name, "uts,net", backend=backend) as e:
        pid = e.pid
        assert e.alive()
    assert not procfs.pid_alive(pid)
    _nothing_left(name)


def test_steps(backend, names):
    a, b = names("a"), names("b")
    ea = env.Environment.create(a, "uts,ipc,pid,mnt,net", backend=backend)
    eb = env.Environment.create(b, "net,uts", backend=backend)
    # hostname and domain name, observed by nsenter through the bound file
    ea.set_hostname("alpha", "example.test")
    out = _run(["nsenter", f"--uts={BASE}/{a}/uts", "sh", "-c", "hostname; domainname"]).stdout
    assert out.split() == ["alpha", "example.test"]
    # a message queue inside: ipcs inside lists it, the host does not have its key
    qid = ea.make_queue()
    inside = _run(["nsenter", f"--ipc={BASE}/{a}/ipc", "ipcs", "-q"]).stdout
    key = next(ln.split()[0] for ln in inside.splitlines() if ln.startswith("0x"))
    assert int(next(ln.split()[1] for ln in inside.splitlines() if ln.startswith("0x"))) == qid
    assert key not in _run(["ipcs", "-q"]).stdout
    # a tmpfs and a read-only bind inside, invisible on the host
    scratch = tempfile.mkdtemp(prefix="nsr-envtest-")
    try:
        os.mkdir(f"{scratch}/tmp")
        os.mkdir(f"{scratch}/ro")
        ea.mount_tmpfs(f"{scratch}/tmp", size="1m")
        ea.bind_mount("/etc", f"{scratch}/ro", readonly=True)
        mnt = _run(["nsenter", f"--pid={BASE}/{a}/pid", f"--mount={BASE}/{a}/mnt", "findmnt", "-n", "-o", "FSTYPE,OPTIONS",
                    f"{scratch}/tmp"]).stdout
        assert mnt.startswith("tmpfs") and "size=1024k" in mnt
        ro = ea.exec(["sh", "-c", f"test -e {scratch}/ro/hostname && touch {scratch}/ro/x"])
        assert ro.returncode != 0 and "Read-only" in ro.stderr
        with open("/proc/self/mountinfo") as f:
            assert scratch not in f.read()
        st = ea.state
        assert [m["type"] for m in st["mounts"]] == ["tmpfs", "bind"] and st["queues"] == [qid]
        # a veth to another environment: real packets between the two netns only
        made = ea.add_veth(eb, addr="10.251.0.1/30", peer_addr="10.251.0.2/30")
        assert made == {"ifname": "eth0", "peer": b, "peer_ifname": "eth0",
                        "addr": "10.251.0.1/30", "peer_addr": "10.251.0.2/30"}
        assert reach.udp_check(a, "10.251.0.1", b, "10.251.0.2")
        # a veth to the host: the host end carries the prefix, the other end is inside
        host = ea.add_veth(addr="10.251.1.1/30", peer_addr="10.251.1.2/30")
        assert host["ifname"] == "eth1" and host["peer_ifname"].startswith("nsr-")
        assert os.path.exists(f"/sys/class/net/{host['peer_ifname']}")
        addrs = _run(["ip", "-n", a, "-o", "addr", "show", "dev", "eth1"]).stdout
        assert "10.251.1.1/30" in addrs
        ea.remove()
        # its host link went with it, and the other environment's end too
        assert not os.path.exists(f"/sys/class/net/{host['peer_ifname']}")
        assert "eth0" not in _run(["ip", "-n", b, "-o", "link"]).stdout
    finally:
        ea.remove(missing_ok=True)
        shutil.rmtree(scratch)
    eb.remove()


def test_idmap_step(backend, names):
    name = names()
    e = env.Environment.create(name, "user,uts", uid_map="none", backend=backend)
    pid = e.pid
    assert open(f"/proc/{pid}/uid_map").read().strip() == ""
    e.set_idmap("0:100000:65536")
    assert open(f"/proc/{pid}/uid_map").read().split() == ["0", "100000", "65536"]
    assert open(f"/proc/{pid}/gid_map").read().split() == ["0", "100000", "65536"]
    assert e.exec(["id", "-u"]).stdout.strip() == "0"
    # as seen from the host, root inside is uid 100000 (nsenter is the observer)
    out = _run(["nsenter", "-t", str(pid), "--user", "--uts", "--", "sleep", "0"])
    assert out.returncode == 0
    out = _run(["nsenter", "-t", str(pid), "--user", "--uts", "--", "id", "-u"])
    assert out.stdout.strip() == "0", out.stderr
    # a file made by root inside (no mount namespace: the host's /tmp) is owned by 100000
    scratch = tempfile.mkdtemp(prefix="nsr-idmap-")
    try:
        os.chmod(scratch, 0o777)
        made = e.exec(["touch", f"{scratch}/by-root-inside"])
        assert made.returncode == 0, made.stderr
        st = os.stat(f"{scratch}/by-root-inside")
        assert (st.st_uid, st.st_gid) == (100000, 100000)
        made = _run(["nsenter", "-t", str(pid), "--user", "--", "touch", f"{scratch}/by-nsenter"])
        assert made.returncode == 0, made.stderr
        assert os.stat(f"{scratch}/by-nsenter").st_uid == 100000
    finally:
        shutil.rmtree(scratch)
    with pytest.raises(Conflict):
        e.set_idmap("0:200000:1")
    e.remove()


def test_zombies_are_reaped(backend, names):
    name = names()
    e = env.Environment.create(name, "pid,mnt", backend=backend)
    # the shell exits at once; its background children become orphans of PID 1
    assert e.exec(["sh", "-c", "sleep 0.05 & sleep 0.05 & exit 0"]).returncode == 0
    holder = e.pid

    def reaped() -> bool:
        kids = procfs.children_of(holder)
        states = []
        for k in kids:
            try:
                states.append(open(f"/proc/{k}/stat").read().rsplit(")", 1)[1].split()[0])
            except OSError:
                pass
        return "Z" not in states and len(e.processes()) <= 3
    process.wait_for(reaped, 5, "orphans to be reaped")
    # observed, not assumed: the holder is PID 1 of the namespace, orphans really become its
    # children, and once they exit they are gone from /proc (reaped, not left as zombies)
    with open(f"/proc/{holder}/status") as f:
        nspid = next(ln.split()[1:] for ln in f if ln.startswith("NSpid:"))
    assert nspid[0] == str(holder) and nspid[-1] == "1", nspid
    # (their output goes to /dev/null: else exec waits for them to close its pipe; 3 s, so
    # that they still run when this looks, even on a loaded emulated machine)
    assert e.exec(["sh", "-c", "sleep 3 >/dev/null 2>&1 & sleep 3 >/dev/null 2>&1 & "
                   "exit 0"]).returncode == 0

    def orphan_sleeps() -> list[int]:
        found = []
        for k in procfs.children_of(holder):
            try:
                with open(f"/proc/{k}/cmdline", "rb") as f:
                    if f.read().split(b"\0")[:2] == [b"sleep", b"3"]:
                        found.append(k)
            except OSError:
                pass                           # gone meanwhile
        return found
    # reparented to PID 1 (the holder); on one CPU a child forked by the shell may still be
    # the shell (not yet sleep) when the shell has exited
    process.wait_for(lambda: len(orphan_sleeps()) == 2, 10, "two orphan sleeps under PID 1")
    orphans = orphan_sleeps()
    process.wait_for(lambda: not any(os.path.exists(f"/proc/{k}") for k in orphans), 15,
                     "the orphans to exit and be reaped by PID 1")
    e.remove()


# --- faults -----------------------------------------------------------------------------------

def test_holder_sigkill(backend, names):
    name = names()
    e = env.Environment.create(name, "uts,ipc,pid,mnt,net", backend=backend)
    st = e.state
    pids = _members(st["ns"])
    os.kill(st["holder"]["pid"], signal.SIGKILL)
    process.wait_for(lambda: not e.alive(), 5, "the holder to die")
    assert env.describe(name)["state"] == "dead"
    # the namespaces are still bound: remove must still take everything away
    assert env.bound_inodes(name) == st["ns"]
    with pytest.raises(NsrError, match="dead"):
        e.exec(["true"])
    assert [x.name for x in env.leftovers() if x.name == name] == [name]
    for item in env.leftovers():
        if item.name == name:
            item.remove()
    _nothing_left(name, pids)


def test_failure_half_way_removes_everything(backend, names, monkeypatch):
    """The kernel refuses the uid_map once the holder is up (a refusal put in its place: the
    maps' rules are checked before anything is made): the run undoes what it made, nothing
    half-made is left."""
    def refuse(pid, maps):
        raise SyscallError(f"write('/proc/{pid}/uid_map')", errno.EINVAL)
    monkeypatch.setattr(idmap, "write_uid_map", refuse)
    name = names()
    with pytest.raises(SyscallError, match="EINVAL"):
        with _quiet(backend) as run:
            env.create(run, name, "user,uts,pid,mnt,net", uid_map="0:1000:10")
    _nothing_left(name)


_CREATE = ("import sys; sys.path.insert(0, {root!r}); from recipes import env; "
           "from nsutil.backend import Runner; "
           "r = Runner(backend={backend!r}, keep=True); r.__enter__(); "
           "env.create(r, {name!r}, 'uts,ipc,pid,mnt,net,user'); print('made', flush=True)")


@pytest.mark.parametrize("backend", ["shell", "native"])
def test_tool_sigkill_mid_create(backend, names):
    """SIGKILL the creating tool at moments from the first file it writes on; whatever phase
    it was in, cleanup (the environment's leftovers) removes everything."""
    phases = []
    for delay in (0.0, 0.001, 0.003, 0.01, 0.03, 0.1):
        name = names("k")
        proc = subprocess.Popen([PY, "-c", _CREATE.format(root=ROOT, backend=backend, name=name)],
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline and proc.poll() is None:  # busy: be on time
                if os.path.isdir(BASE) and any(name in e for e in os.listdir(BASE)):
                    break
            time.sleep(delay)
        finally:
            proc.kill()
            proc.wait()
        st = env.read_state(name)
        phases.append("tmp" if st is None else (st["status"] if st.get("holder") is None
                                                else st["status"] + "+holder"))
        for item in env.leftovers():
            if name in item.name:
                item.remove()
        _nothing_left(name)
    print(f"{backend}: phase at each SIGKILL: {phases}")
    # at least one kill landed half-way through
    assert any(not p.startswith("ready") for p in phases), phases


def test_a_sigkilled_tools_late_mount_lands_on_nothing_of_ours(tmp_path, names):
    """The shell backend's commands outlive a SIGKILLed tool. Here `mount` of the state
    directory is slow (0.5 s, a loaded machine's), the tool is killed while it runs, cleanup
    runs, and environments are made and removed while the orphan finishes: none fails, and
    nothing is left. (Once the bind itself was such a `mount`: it landed on top of the next
    run's bind, unrecorded, hid that run's namespace files and stayed, as CI saw.)"""
    slow = tmp_path / "bin"
    slow.mkdir()
    (slow / "mount").write_text(
        "#!/bin/sh\n"
        f'case "$*" in *"{BASE} {BASE}"|*"--make-private {BASE}") sleep 0.5;; esac\n'
        f'exec {shutil.which("mount")} "$@"\n')
    (slow / "mount").chmod(0o755)
    name = names("o")
    proc = subprocess.Popen([PY, "-c", _CREATE.format(root=ROOT, backend="shell", name=name)],
                            env={**os.environ, "PATH": f"{slow}:{os.environ['PATH']}"},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    orphans: list[str] = []
    try:
        deadline = time.monotonic() + 60
        while not orphans and time.monotonic() < deadline and proc.poll() is None:
            orphans = subprocess.run(["pgrep", "-P", str(proc.pid), "-f", f"mount .*{BASE}$"],
                                     capture_output=True, text=True).stdout.split()
    finally:
        proc.kill()
        proc.wait()
    assert orphans, "the tool ran no slow `mount` of the state directory"
    before = _mounts_on(BASE)
    again = names("o")
    try:
        for item in env.leftovers():
            if name in item.name:
                item.remove()
        _nothing_left(name)
        while any(procfs.pid_alive(int(p)) for p in orphans):
            env.create(_quiet("shell"), again, "uts,mnt")
            env.remove(_quiet("shell"), again)
            _nothing_left(again)
        env.create(_quiet("shell"), again, "uts,mnt")
        env.remove(_quiet("shell"), again)
        _nothing_left(again)
        _private_bind_undone()
    finally:     # what a failure leaves: the orphan's bind, unrecorded, so no cleanup's
        while any(procfs.pid_alive(int(p)) for p in orphans):
            time.sleep(0.05)
        for item in env.leftovers():
            if again in item.name or name in item.name:
                item.remove()
        while _mounts_on(BASE)[-1:] and _mounts_on(BASE)[-1] not in before \
                and not holder.ours_on_top(BASE):
            sc.umount(BASE, sc.MNT_DETACH)
        for item in env.leftovers():
            if item.name.endswith("(private bind)"):
                item.remove()


def _mounts_on(path: str) -> list[int]:
    """The mount IDs on ``path``, bottom to top."""
    return [m.mount_id for m in mountinfo.read() if m.mount_point == path]


def test_state_is_written_atomically(tmp_path):
    """A writer SIGKILLed at random moments never leaves a torn or temporary file."""
    path = str(tmp_path / "env.json")
    code = ("import sys; sys.path.insert(0, %r); from nsutil.state import atomic_write_json\n"
            "i = 0\nwhile True:\n    i += 1; atomic_write_json(%r, {'i': i, 'pad': 'x' * 50000})\n"
            % (ROOT, path))
    for delay in (0.0, 0.003, 0.011, 0.023):
        proc = subprocess.Popen([PY, "-c", code])
        process.wait_for(lambda: os.path.exists(path), 10, "the first write")
        time.sleep(delay)
        proc.kill()
        proc.wait()
        with open(path) as f:
            assert json.load(f)["i"] >= 1
        for leftover in [p for p in os.listdir(tmp_path) if ".tmp." in p]:
            os.unlink(tmp_path / leftover)  # the one being written when killed


def _in_parallel(fn, items: list) -> list[str]:
    """Run fn(item) in one forked process per item, all at once; return their errors."""
    r, w = os.pipe()
    kids = []
    for item in items:
        pid = os.fork()
        if pid == 0:
            os.close(r)
            status = 0
            try:
                fn(item)
            except BaseException as exc:  # report anything to the parent
                os.write(w, f"{item}: {exc}\n".encode())
                status = 1
            os._exit(status)
        kids.append(pid)
    os.close(w)
    with os.fdopen(r) as f:
        errors = f.read().splitlines()
    for pid in kids:
        os.waitpid(pid, 0)
    return errors


def test_twenty_in_parallel(names):
    """Twenty creators at once (half per backend), then twenty removers at once:
    distinct namespaces, all alive, then all gone and /run/nsrecipes unmounted."""
    todo = [names("p") for _ in range(20)]
    t0 = time.monotonic()
    errors = _in_parallel(lambda n: env.create(_quiet("shell" if todo.index(n) % 2 else "native"),
                                               n, "uts,ipc,pid,mnt,net"), todo)
    made = time.monotonic() - t0
    assert not errors
    rows = {r["name"]: r for r in env.list_envs()}
    assert all(rows[n]["state"] == "alive" for n in todo)
    assert len({rows[n]["ns"]["net"] for n in todo}) == 20
    assert len({rows[n]["pid"] for n in todo}) == 20
    netns = _run(["ip", "netns", "list"]).stdout.split()
    assert all(n in netns for n in todo)
    pids = set().union(*(rows[n]["pids"] for n in todo))
    t0 = time.monotonic()
    errors = _in_parallel(lambda n: env.remove(_quiet("shell" if todo.index(n) % 2 else "native"), n),
                          todo)
    removed = time.monotonic() - t0
    assert not errors
    for n in todo:
        _nothing_left(n, pids)
    _private_bind_undone()
    print(f"20 environments in parallel: created in {made:.2f}s, removed in {removed:.2f}s")


# --- a shared root, as systemd makes it ---------------------------------------------------

#: Runs inside the test's own mount namespace: ROUNDS rounds, each creating two environments
#: and removing the two of the round before, all four at once (one lane per backend).
_RACE = r"""
import json, os, secrets, sys
from nsutil import process, procfs
from nsutil.backend import Runner
from recipes import env

rounds = int(sys.argv[1])
LANES = [("shell", "native", "uts,mnt,pid"), ("native", "shell", "mnt")]
# mounts there already (the host's, hidden under the tmpfs on /run but still listed)
BEFORE = {ln.split()[0] for ln in open("/proc/self/mountinfo")}

def quiet(backend):
    return Runner(backend=backend, keep=True, out=open(os.devnull, "w"))

def at_once(jobs):
    r, w = os.pipe()
    kids = []
    for job in jobs:
        pid = os.fork()
        if pid == 0:
            os.close(r)
            try:
                job()
            except BaseException as exc:
                os.write(w, (type(exc).__name__ + ": " + str(exc) + "\n").encode())
                os._exit(1)
            os._exit(0)
        kids.append(pid)
    os.close(w)
    with os.fdopen(r) as f:
        errors = f.read().splitlines()
    for pid in kids:
        os.waitpid(pid, 0)
    return errors

failures, holders, live = [], set(), [None] * len(LANES)
for i in range(rounds):
    jobs, new = [], []
    for k, (make, drop, ns) in enumerate(LANES):
        name = "nsr-race-" + secrets.token_hex(3)
        new.append(name)
        jobs.append(lambda n=name, b=make, ns=ns: env.create(quiet(b), n, ns))
        if live[k]:
            jobs.append(lambda n=live[k], b=drop: env.remove(quiet(b), n))
    failures += ["round %d: %s" % (i, e) for e in at_once(jobs)]
    for name in new:
        st = env.read_state(name) or {}
        holders |= {st[k]["pid"] for k in ("holder", "parent") if st.get(k)}
    live = new
for name in set(live) | set(env.names()):
    env.remove(quiet("native"), name, missing_ok=True)
base = env.base_dir()
print(json.dumps({
    "failures": failures,
    "left": sorted(os.listdir(base)) if os.path.isdir(base) else [],
    "mounts": [ln.split()[4] for ln in open("/proc/self/mountinfo")
               if ln.split()[4].startswith(base) and ln.split()[0] not in BEFORE],
    "running": sorted(p for p in holders if procfs.pid_alive(p)),
}))
"""


def _flock_waiters() -> int:
    """How many flock requests wait now (``->`` lines in /proc/locks)."""
    with open("/proc/locks") as f:
        return sum(1 for ln in f if "->" in ln and "FLOCK" in ln)


_WAITER = """
import os, sys, time
from recipes import env
with env.global_lock():
    sys.stdout.write("L"); sys.stdout.flush()
    time.sleep(0.2)
"""


def test_lock_is_on_the_directory_that_is_there(tmp_path, monkeypatch):
    """A process waiting for the state directory's lock while the directory is pruned (and
    made again by another) must not get a lock on the removed one, which would exclude
    nobody: it waits for whoever locks the new directory."""
    import contextlib
    monkeypatch.setenv("NSR_STATE_DIR", str(tmp_path / "state"))
    base = env.base_dir()
    new_lock = contextlib.ExitStack()
    with env.global_lock():
        waiters = _flock_waiters()
        waiter = subprocess.Popen([PY, "-c", _WAITER], stdout=subprocess.PIPE, cwd=ROOT,
                                  env={**os.environ, "PYTHONPATH": ROOT})
        try:
            # (its python starts in ~10 s in a TCG VM: imports over 9p)
            process.wait_for(lambda: _flock_waiters() > waiters or None, 600,
                             "the waiter to block")
            os.unlink(os.path.join(base, state.MADE_MARK))  # pruned while it waits
            os.rmdir(base)
            # made again and locked before the old lock is let go: else the waiter may
            # rightly be first to make and lock the new one
            new_lock.enter_context(env.global_lock())
        except BaseException:
            new_lock.close()
            waiter.kill()
            raise
    try:
        with new_lock:
            time.sleep(0.5)
            os.set_blocking(waiter.stdout.fileno(), False)
            got = waiter.stdout.read(1)
            assert not got, "the waiter got a lock on the pruned directory"
        # and the real one once it was free (bounded: a hang here must fail, not stall CI)
        import select
        ready, _, _ = select.select([waiter.stdout], [], [], 120)
        assert ready and waiter.stdout.read(1) == b"L", "the waiter never got the new lock"
    finally:
        waiter.kill()
        waiter.wait()


def _mntns_id(pid: int) -> int | None:
    """The kernel's id of a process's mount namespace (NS_GET_MNTNS_ID), None without it."""
    import fcntl
    import struct
    try:
        fd = os.open(f"/proc/{pid}/ns/mnt", os.O_RDONLY)
    except OSError:
        return None
    try:
        return struct.unpack("Q", fcntl.ioctl(fd, 0x8008B705, bytes(8)))[0]
    except OSError:
        return None
    finally:
        os.close(fd)


def _cpu_of_newest_ids() -> list[str]:
    """``taskset -c CPU`` for the CPU that hands out the greatest mount-namespace ids now.

    From 6.18 the ids come from per-CPU batches; a namespace made there has a greater id than
    the holders the test then makes on the other CPUs, which the kernel's loop check refuses
    to bind unless nsrecipes deals with it. (No ioctl, as on 6.1: ids are in order anyway.)
    """
    ids: dict[int, int | None] = {}
    if _mntns_id(os.getpid()) is None:
        return []
    for cpu in sorted(os.sched_getaffinity(0)):
        p = subprocess.Popen(["taskset", "-c", str(cpu), "unshare", "--mount", "sleep", "9"])
        try:
            process.wait_for(lambda: _mntns_id(p.pid) != _mntns_id(os.getpid()) or None, 5,
                             "unshare to start")
            ids[cpu] = _mntns_id(p.pid)
        finally:
            p.kill()
            p.wait()
    if len(ids) < 2 or None in ids.values():
        return []
    return ["taskset", "-c", str(max(ids, key=lambda c: ids[c]))]


#: rounds of the shared-root race; tests/vm/guest sets fewer (a round takes ~9 s under TCG, and
#: 6.1 has no per-CPU namespace ids to race against)
RACE_ROUNDS = int(os.environ.get("NSR_RACE_ROUNDS", "50"))


def test_shared_root_create_and_remove_in_parallel():
    """Inside a mount namespace of the test's own whose / is rshared and /run a shared tmpfs
    (as on systemd hosts), with another namespace a slave of it (as systemd's services are),
    made on the CPU with the newest namespace ids (see :func:`_cpu_of_newest_ids`),
    RACE_ROUNDS (50) rounds of two creates and two removes at once on both backends: no failure (each
    namespace file is bound where nothing propagates, the private bind of /run/nsrecipes is
    never unmounted under a create), and nothing left -- no record, no mount, no holder.

    An environment of the host's is alive meanwhile: its bind of /run/nsrecipes, hidden
    under the test's tmpfs on /run, stays listed in mountinfo there, and must not be taken
    for the visible one (it was, and every create failed)."""
    host_env = "nsr-race-" + secrets.token_hex(2)
    env.create(_quiet("native"), host_env, ns="uts")
    try:
        _race_on_a_shared_root()
    finally:
        env.remove(_quiet("native"), host_env, missing_ok=True)


def _race_on_a_shared_root() -> None:
    cpus = ",".join(map(str, sorted(os.sched_getaffinity(0))))
    setup = ("mount --make-rshared / && mount -t tmpfs nsr-run /run || exit 1; "
             f"taskset -p -c {cpus} $$ >/dev/null; "  # unpinned from here on
             "unshare --mount --propagation slave sleep 600 & slave=$!; "
             f"timeout 1700 \"$0\" -c \"$1\" {RACE_ROUNDS}; rc=$?; kill $slave; exit $rc")
    environ = {k: v for k, v in os.environ.items() if k != "NSR_STATE_DIR"}
    t0 = time.monotonic()
    done = subprocess.run(_cpu_of_newest_ids() + ["unshare", "--mount", "--", "sh", "-c", setup,
                                                  PY, _RACE],
                          cwd=ROOT, env={**environ, "PYTHONPATH": ROOT},
                          capture_output=True, text=True, timeout=1800)  # a TCG VM is slow
    took = time.monotonic() - t0
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout.splitlines()[-1])
    assert not report["failures"], f"{len(report['failures'])} failed: {report['failures'][:3]}"
    assert report["left"] == [] and report["mounts"] == [] and report["running"] == [], report
    print(f"50 rounds of 2 creates + 2 removes at once on a shared root: {took:.1f}s")


# --- bad input ------------------------------------------------------------------------------

@pytest.mark.userspace
@pytest.mark.parametrize("bad", ["", ".", "..", "nsr/x", "nsr x", "nsr-" + "x" * 70, "net",
                                 "nsr-c-x", "-nsr", "nsr\n"])
def test_bad_names(bad):
    before = set(os.listdir(BASE)) if os.path.isdir(BASE) else set()
    netns_before = set(os.listdir("/run/netns")) if os.path.isdir("/run/netns") else set()
    with pytest.raises(InvalidInput):
        env.create(_quiet(), bad)
    assert (set(os.listdir(BASE)) if os.path.isdir(BASE) else set()) == before
    assert (set(os.listdir("/run/netns")) if os.path.isdir("/run/netns") else set()) == netns_before
    assert not [e for e in os.listdir(BASE) if e.startswith(".env-")] if os.path.isdir(BASE) else True


@pytest.mark.userspace
def test_bad_input_creates_nothing(names):
    name = names()
    cases = [
        dict(ns="uts,bogus"), dict(ns=""), dict(ns="net", hostname="h"),
        dict(ns="uts", hostname="x" * 65), dict(ns="uts", hostname="a b"),
        dict(ns="uts", uid_map="0:1000:1"), dict(ns="user", uid_map="0:1000"),
        dict(ns="user", uid_map="0:abc:1"), dict(ns="user", uid_map="0:1000:0"),
    ]
    before = set(os.listdir(BASE)) if os.path.isdir(BASE) else set()
    for kw in cases:
        with pytest.raises(InvalidInput):
            env.create(_quiet(), name, **kw)
        assert not os.path.lexists(os.path.join(BASE, name)), kw
        assert not os.path.lexists(f"/run/netns/{name}"), kw
        assert not [p for p in _members_named(name)], kw
    after = set(os.listdir(BASE)) if os.path.isdir(BASE) else set()
    assert not [n for n in after - before if name in n]


def test_step_errors(names):
    name, other = names(), names()
    e = env.Environment.create(name, "uts,net", backend="native")
    cases = [
        (lambda: e.mount_tmpfs("/mnt"), InvalidInput),           # no mnt namespace
        (lambda: e.make_queue(), InvalidInput),                 # no ipc namespace
        (lambda: e.set_idmap("0:0:1"), InvalidInput),           # no user namespace
        (lambda: e.set_hostname(), InvalidInput),
        (lambda: e.set_hostname("a/b"), InvalidInput),
        (lambda: e.add_veth(peer_ifname="eth9"), InvalidInput),  # host end without prefix
        (lambda: e.add_veth(name), InvalidInput),                # to itself
        (lambda: e.add_veth(other), NotFound),
        (lambda: e.add_veth(ifname="x" * 16), InvalidInput),
        (lambda: e.add_veth(addr="10.0.0.1"), InvalidInput),
        (lambda: env.Environment(other).exec(["true"]), NotFound),
        (lambda: env.Environment(other).remove(), NotFound),
        (lambda: env.Environment.create(name, "uts"), Conflict),
    ]
    for fn, exc in cases:
        with pytest.raises(exc):
            fn()
    assert e.state["veths"] == [] and e.alive()
    e2 = env.Environment.create(other, "mnt")
    with pytest.raises(InvalidInput):
        e2.mount_tmpfs("relative/path")
    with pytest.raises(InvalidInput):
        e2.mount_tmpfs("/mnt", size="lots")
    with pytest.raises(NsrError):
        e2.mount_tmpfs("/nonexistent-nsr-dir")                 # the kernel says ENOENT
    assert e2.state["mounts"] == []
    e2.remove()
    e.remove()


def test_foreign_netns_name_is_a_conflict(names):
    name = names()
    assert _run(["ip", "netns", "add", name]).returncode == 0
    try:
        inode = _inode(f"/run/netns/{name}")
        with pytest.raises(Conflict):
            env.create(_quiet(), name, "uts,net")
        assert not os.path.lexists(os.path.join(BASE, name))
        assert _inode(f"/run/netns/{name}") == inode  # the other one is untouched
    finally:
        _run(["ip", "netns", "delete", name])


# --- the command line -----------------------------------------------------------------------

@pytest.mark.userspace
def test_cli(names):
    name = names()
    p = cli("env-create", name, "--ns", "uts,pid,mnt,net,ipc", "--hostname", "cli1")
    assert p.returncode == 0, p.stderr
    one_line_error(cli("env-create", name))                     # exists
    ls = json.loads(cli("env-ls", "--json").stdout)["environments"]
    row = next(r for r in ls if r["name"] == name)
    assert row["state"] == "alive" and set(row["ns"]) == {"uts", "pid", "mnt", "net", "ipc"}
    table = cli("env-ls").stdout.splitlines()
    assert table[0].split()[:5] == ["NAME", "PID", "STATE", "NPROCS", "CREATED"]
    assert any(ln.startswith(name) and " alive " in ln for ln in table)
    p = cli("env-exec", name, "--", "sh", "-c", "echo 'a  b'; hostname; exit 3")
    assert p.returncode == 3 and p.stdout.splitlines() == ["a  b", "cli1"], p.stderr
    assert cli("env-hostname", name, "--hostname", "cli2").returncode == 0
    assert cli("env-exec", name, "--", "hostname").stdout.strip() == "cli2"
    assert "Message queue id: 0" in cli("env-mq", name).stdout
    assert cli("env-mount", name, "/mnt", "--size", "2m").returncode == 0
    assert "tmpfs" in cli("env-exec", name, "--", "findmnt", "-n", "/mnt").stdout
    p = cli("env-veth", name, "--addr", "10.252.0.1/30", "--peer-addr", "10.252.0.2/30",
            "--peer-ifname", f"nsr-h{name[-6:]}")
    assert p.returncode == 0 and os.path.exists(f"/sys/class/net/nsr-h{name[-6:]}"), p.stderr
    p = cli("env-create", names(), "--explain")
    assert "unshare --ipc=/run/nsrecipes/" in p.stdout and "--fork --kill-child" in p.stdout
    # the user-namespace steps and a veth between two environments
    other = names()
    assert cli("env-create", other, "--ns", "user,uts,net", "--uid-map", "none").returncode == 0
    p = cli("env-idmap", other, "--uid-map", "0:100000:1000")
    assert p.returncode == 0, p.stderr
    assert open(f"/proc/{env.read_state(other)['holder']['pid']}/gid_map").read().split() == \
        ["0", "100000", "1000"]
    assert "written already" in one_line_error(cli("env-idmap", other, "--uid-map", "0:0:1"))
    p = cli("env-veth", name, "--peer", other, "--addr", "10.252.1.1/30", "--peer-addr",
            "10.252.1.2/30")
    assert p.returncode == 0 and f"<-> {other}:eth0" in p.stdout, p.stderr
    assert "10.252.1.2/30" in _run(["ip", "-n", other, "-o", "addr"]).stdout
    assert cli("env-rm", name).returncode == 0
    assert not os.path.exists(f"/sys/class/net/nsr-h{name[-6:]}")
    assert "does not exist" in one_line_error(cli("env-rm", name))        # twice
    assert "does not exist" in one_line_error(cli("env-exec", name, "--", "true"))
    assert "taken by nsrecipes" in one_line_error(cli("env-create", "net"))   # its records
    assert one_line_error(cli("env-create", "nsr-../x")).startswith("nsrecipes:")
    p = cli("env-create", "nsr-x", "--ns", "uts,nope")
    assert p.returncode == 2 and "unknown namespace type" in one_line_error(p)
    assert not os.path.lexists(os.path.join(BASE, "nsr-x"))          # nothing created
    assert "nsr-x" not in _run(["ip", "netns", "list"]).stdout.split()
    assert not os.path.lexists(os.path.join(BASE, "nsr-..")) and not os.path.lexists("/run/netns/nsr-..")
    _nothing_left(name)


@pytest.mark.parametrize("backend", ["shell", "native"])
def test_interactive_shell_gets_a_terminal(backend, names):
    name = names()
    env.Environment.create(name, "uts,pid,mnt", backend=backend)
    cmd = f"{INVOKE} env-exec {name} --backend {backend} -- sh -c 'tty; exit 4'"
    p = subprocess.run(["script", "-qec", cmd, "/dev/null"], cwd=ROOT, capture_output=True,
                       text=True, timeout=300)  # an emulated VM under load
    assert p.returncode == 4, p.stdout + p.stderr
    assert "/dev/pts/" in p.stdout
    # and without a tty the command still runs (stdin not a terminal)
    p = cli("env-exec", name, "--backend", backend, "--", "sh", "-c", "tty; true")
    assert "not a tty" in p.stdout


def test_other_user_cannot_enter_or_remove(names):
    name = names()
    e = env.Environment.create(name, "uts,net", backend="native")
    for args in (("env-exec", name, "--", "true"), ("env-rm", name)):
        p = as_nobody(*args)
        one_line_error(p)
    listed = as_nobody("env-ls")     # a user's own environments only: none
    assert listed.returncode == 0 and name not in listed.stdout, listed
    from conftest import unprivileged_argv
    p = _run(unprivileged_argv(["ls", f"{BASE}/{name}"]))
    assert p.returncode != 0 and "Permission denied" in p.stderr
    p = _run(unprivileged_argv(["nsenter", f"--uts={BASE}/{name}/uts", "true"]))
    assert p.returncode != 0
    p = _run(unprivileged_argv(["nsenter", f"--net=/run/netns/{name}", "true"]))
    assert p.returncode != 0
    assert e.alive() and env.describe(name)["state"] == "alive"
    e.remove()


@pytest.mark.userspace
def test_explain_changes_nothing(names):
    name = names()
    out = open(os.devnull, "w")
    run = Runner(backend="shell", explain=True, out=out)
    env.create(run, name, "uts,pid,mnt,net,user", hostname="x", uid_map="0:1000:1")
    env.remove(Runner(explain=True, out=out), name)
    assert not os.path.lexists(os.path.join(BASE, name))
    assert name not in _run(["ip", "netns", "list"]).stdout


def test_example_client_server():
    p = subprocess.run([PY, os.path.join(ROOT, "examples", "provision_client_server.py")],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "server answered the client" in p.stdout


# --- what a runtime user expects ---------------------------------------------------

_LOOPBACK = ("import socket; s = socket.create_server(('127.0.0.1', 0)); "
             "c = socket.create_connection(s.getsockname(), timeout=5); a, _ = s.accept(); "
             "c.sendall(b'ping'); print(a.recv(4).decode())")


@pytest.mark.parametrize("ns", ["net", "user,net,mnt"])
def test_lo_is_up_in_a_new_net_namespace(backend, names, ns):
    """A listener on 127.0.0.1 inside is reached from inside (lo is up), as with bwrap."""
    name = names()
    e = env.Environment.create(name, ns, backend=backend)
    link = _run(["ip", "-n", name, "-o", "link", "show", "dev", "lo"]).stdout
    assert ",UP" in link or "<UP" in link, link
    done = e.exec([PY, "-c", _LOOPBACK])
    assert done.returncode == 0 and done.stdout.strip() == "ping", done.stderr
    e.remove()


def _findmnt_inside(pid: int, path: str) -> list[list[str]]:
    """``findmnt -R`` of ``path`` in the mount namespace of ``pid`` (its /proc/PID/mountinfo,
    read by findmnt, not by our code)."""
    out = _run(["findmnt", "--task", str(pid), "-R", "-n", "-r", "-o", "TARGET,FSTYPE,OPTIONS",
                path]).stdout
    return [ln.split() for ln in out.splitlines()]


def test_readonly_tmpfs(backend, names, tmp_path):
    """env-mount --readonly on a tmpfs: the mount is ro, a write inside fails with EROFS."""
    name = names()
    env.Environment.create(name, "pid,mnt", backend=backend)
    target = str(tmp_path)
    p = cli("env-mount", name, target, "--size", "1m", "--readonly", "--backend", backend)
    assert p.returncode == 0, p.stderr
    rows = _findmnt_inside(env.read_state(name)["holder"]["pid"], target)
    assert rows[0][:2] == [target, "tmpfs"] and rows[0][2].split(",")[0] == "ro", rows
    p = cli("env-exec", name, "--", "touch", f"{target}/x")
    assert p.returncode != 0 and "Read-only file system" in p.stderr, p.stderr
    assert env.read_state(name)["mounts"] == [{"type": "tmpfs", "target": target,
                                                "size": "1m", "readonly": True}]


@pytest.mark.userspace
@pytest.mark.parametrize("size", ["0", "0k", "0%", "-1", "lots", "101%"])
def test_tmpfs_size_zero_or_bad_is_refused(size):
    """--size 0 would be a tmpfs without a limit: refused in one line, before anything."""
    with pytest.raises(InvalidInput, match="tmpfs size"):
        env.mount_tmpfs(_quiet(), "nsr-none-such", "/mnt", size)
    if size == "0":
        line = one_line_error(cli("env-mount", "nsr-none-such", "/mnt", "--size", "0"))
        assert "tmpfs size '0' is not a positive size" in line and "no limit" in line


@pytest.mark.userspace
def test_mount_options_that_do_not_fit_are_refused():
    assert "--recursive applies to a bind" in one_line_error(
        cli("env-mount", "nsr-none-such", "/mnt", "--recursive"))
    assert "--size applies to a tmpfs" in one_line_error(
        cli("env-mount", "nsr-none-such", "/mnt", "--source", "/etc", "--size", "1m"))


def test_recursive_bind(backend, names, tmp_path):
    """--recursive binds the mounts below the source too; with --readonly every one of them
    is read-only (mount_setattr AT_RECURSIVE), while the source stays writable."""
    name = names()
    e = env.Environment.create(name, "pid,mnt", backend=backend)
    src, plain, rec, ro = (str(tmp_path / d) for d in ("src", "plain", "rec", "ro"))
    for d in (src, plain, rec, ro):
        os.mkdir(d)
    os.mkdir(f"{src}/sub")
    e.mount_tmpfs(f"{src}/sub", size="1m")          # a submount, inside the environment only
    e.bind_mount(src, plain)
    e.bind_mount(src, rec, recursive=True)
    p = cli("env-mount", name, ro, "--source", src, "--recursive", "--readonly",
            "--backend", backend)
    assert p.returncode == 0, p.stderr
    pid = e.pid
    assert [r[0] for r in _findmnt_inside(pid, plain)] == [plain]          # no submount
    assert [r[:2] for r in _findmnt_inside(pid, rec)] == [[rec, _fstype(pid, src)],
                                                           [f"{rec}/sub", "tmpfs"]]
    tree = _findmnt_inside(pid, ro)
    assert [r[0] for r in tree] == [ro, f"{ro}/sub"]
    assert all(r[2].split(",")[0] == "ro" for r in tree), tree
    for path in (f"{ro}/x", f"{ro}/sub/x"):
        done = e.exec(["touch", path])
        assert done.returncode != 0 and "Read-only file system" in done.stderr, path
    for path in (f"{rec}/sub/y", f"{src}/sub/z"):
        assert e.exec(["touch", path]).returncode == 0, path
    assert [(m["target"], m["recursive"], m["readonly"]) for m in e.state["mounts"]
            if m["type"] == "bind"] == [(plain, False, False), (rec, True, False), (ro, True, True)]
    with open("/proc/self/mountinfo") as f:
        assert str(tmp_path) not in f.read()                                  # not on the host
    e.remove()


def _fstype(pid: int, path: str) -> str:
    """The type of the filesystem ``path`` is on in the mount namespace of ``pid``: the top of
    the mounts at its mount point (``findmnt --target`` names the lowest of stacked mounts,
    such as a VM's overlay under its tmpfs /tmp)."""
    best = ("", "")
    with open(f"/proc/{pid}/mountinfo") as f:
        for line in f:
            fields = line.split()
            point, fstype = fields[4], fields[fields.index("-") + 1]
            inside = path == point or path.startswith(point.rstrip("/") + "/")
            if inside and len(point) >= len(best[0]):      # later = mounted on top
                best = (point, fstype)
    return best[1]


def test_readonly_recursive_bind_without_mount_setattr(backend, names, tmp_path, monkeypatch):
    """On a kernel before 5.12 a read-only recursive bind is refused, saying why, and nothing
    is mounted (not a writable bind left behind)."""
    name = names()
    e = env.Environment.create(name, "mnt", backend=backend)
    monkeypatch.setattr(mountattr, "available", lambda: False)
    with pytest.raises(SyscallError, match="ENOSYS.*Linux 5.12") as err:
        e.bind_mount("/etc", str(tmp_path), readonly=True, recursive=True)
    assert "\n" not in str(err.value)
    assert _findmnt_inside(e.pid, str(tmp_path)) == [] and e.state["mounts"] == []
    e.remove()


def test_exec_before_the_maps_are_written(backend, names):
    """env-exec into a user namespace without maps: one line saying to run env-idmap, not
    nsenter's `setgid failed: Invalid argument`; after env-idmap it runs."""
    name = names()
    e = env.Environment.create(name, "user,uts,mnt", uid_map="none", backend=backend)
    p = cli("env-exec", name, "--backend", backend, "--", "true")
    line = one_line_error(p)
    assert "uid_map and gid_map of its user namespace are not written" in line, line
    assert f"invoke env-idmap {name} --uid-map" in line and "nsenter" not in p.stderr
    with pytest.raises(NsrError, match="not written"):
        e.exec(["true"])
    e.set_idmap("0:100000:65536")
    assert e.exec(["id", "-u"]).stdout.strip() == "0"
    line = one_line_error(cli("env-exec", name, "--cwd", "/nonexistent-nsr", "--", "true"))
    assert "working directory /nonexistent-nsr does not exist inside" in line
    e.remove()


@pytest.mark.userspace
def test_explain_shows_the_new_steps():
    """--explain prints lo brought up, a read-only tmpfs, the --rbind and mount_setattr."""
    out = cli("env-create", "nsr-explain", "--ns", "net,mnt", "--explain").stdout
    assert "$ ip -n nsr-explain link set dev lo up" in out, out
    out = cli("env-mount", "nsr-explain", "/mnt", "--size", "1m", "--readonly", "--explain").stdout
    assert "mount -t tmpfs -o ro,size=1m tmpfs /mnt" in out, out
    out = cli("env-mount", "nsr-explain", "/mnt", "--source", "/srv", "--recursive",
              "--readonly", "--explain").stdout
    assert "mount --rbind /srv /mnt" in out and "mount_setattr(AT_FDCWD, /mnt, AT_RECURSIVE" in out
    assert not os.path.lexists(os.path.join(BASE, "nsr-explain"))


@pytest.mark.userspace
def test_domainname_without_uts_names_domainname(names):
    name = names()
    with pytest.raises(InvalidInput, match="^--domainname needs a UTS namespace"):
        env.create(_quiet(), name, "net", domainname="example.test")
    line = one_line_error(cli("env-create", name, "--ns", "net", "--domainname", "d"))
    assert "--domainname needs a UTS namespace" in line and "--hostname" not in line
    assert "--hostname/--domainname needs" in one_line_error(
        cli("env-create", name, "--ns", "net", "--hostname", "h", "--domainname", "d"))
    assert not os.path.lexists(os.path.join(BASE, name))


def test_env_hostname_without_uts_names_the_option(backend, names):
    name = names()
    env.Environment.create(name, "net", backend=backend)
    for opt in ("--domainname", "--hostname"):
        line = one_line_error(cli("env-hostname", name, opt, "x", "--backend", backend))
        assert f"{opt} needs a UTS namespace: environment {name!r} has none" in line, line


@pytest.mark.userspace
@pytest.mark.parametrize("backend", ["shell", "native"])
@pytest.mark.parametrize("opt,spec,words", [
    ("--uid-map", "0:1000:10,5:2000:10", "--uid-map ranges 0:1000:10 and 5:2000:10 overlap inside"),
    ("--gid-map", "0:1000:10,20:1005:1", "--gid-map ranges 0:1000:10 and 20:1005:1 overlap outside"),
    ("--uid-map", "4294967290:0:10", "--uid-map 4294967290:0:10 runs past 4294967294 inside"),
])
def test_bad_maps_make_nothing(backend, names, opt, spec, words):
    """The kernel's map rules are checked before anything: one line naming the rule, exit 2,
    no heading printed, no record, netns or holder."""
    name = names()
    p = cli("env-create", name, "--ns", "user,uts,pid,mnt,net", opt, spec, "--backend", backend)
    line = one_line_error(p)
    assert p.returncode == 2 and words in line, line
    assert "==" not in p.stdout and "environment" not in p.stdout, p.stdout
    _nothing_left(name)
    assert not _members_named(name)


def test_a_name_the_user_gives_is_used_as_given():
    """One rule for names: ``env-create web`` makes environment and netns ``web`` (as ``ip
    netns add web`` would), env-ls lists it, cleanup keeps it while its holder runs (its
    record, not a prefix, makes it nsrecipes'), and env-rm removes it and its netns name."""
    name = f"web{secrets.token_hex(3)}"
    try:
        made = cli("env-create", name, "--ns", "uts,net")
        assert made.returncode == 0, made.stderr
        assert os.path.exists(f"/run/netns/{name}")
        assert name in cli("env-ls").stdout
        kept = cli("cleanup", "--dry-run").stdout
        assert f"keeping env {name}" in kept, kept
    finally:
        gone = cli("env-rm", name)
    assert gone.returncode == 0, gone.stderr
    assert not os.path.exists(f"/run/netns/{name}") and env.read_state(name) is None

"""The syscall layer and its helpers, against the real kernel.

Both implementations of unshare/setns are exercised: ctypes (every Python) and Python
3.12's ``os.unshare``/``os.setns`` -- the latter in a subprocess of a Python >= 3.12 with
``NSR_SYSCALLS=os``, since the project's own interpreter is 3.11.
"""
from __future__ import annotations

import functools
import glob
import io
import json
import errno
import os
import pickle
import shutil
import socket
import subprocess
import sys
import tempfile

import pytest

from conftest import unprivileged_argv
from helpers import ROOT
from nsutil import idmap, names, process
from nsutil import syscalls as sc
from nsutil.backend import Placeholder, Runner, Step
from nsutil.errors import (CommandError, Conflict, InvalidInput, NotFound, NotRoot, NsrError,
                           SyscallError, ToolMissing)
from nsutil.nstypes import NS_TYPES, enter, ns_inode, ns_link, parse_types

#: Run by each interpreter/implementation; prints what it observed as JSON.
PROBE = r'''
import json, os, sys
from nsutil import syscalls as sc
from nsutil.errors import SyscallError
from nsutil.nstypes import ns_inode
from nsutil.process import fork_call

out = {"impl": sc.IMPL.name, "python": list(sys.version_info[:2]), "host": ns_inode("self", "uts")}

def round_trip():
    back = os.open("/proc/self/ns/uts", os.O_RDONLY)
    sc.unshare(sc.CLONE_NEWUTS | sc.CLONE_NEWIPC)
    new = [ns_inode("self", "uts"), ns_inode("self", "ipc")]
    sc.setns(back, sc.CLONE_NEWUTS)   # back into the namespace we came from
    return new + [ns_inode("self", "uts")]

out["round_trip"] = fork_call(round_trip)
out["after"] = ns_inode("self", "uts")

def err(fn):
    try:
        fn()
    except SyscallError as exc:
        return [exc.errno_name, exc.call, exc.hint, str(exc)]
    return None

out["bad_fd"] = err(lambda: sc.setns(9999, sc.CLONE_NEWUTS))
fd = os.open("/proc/self/ns/uts", os.O_RDONLY)
out["wrong_type"] = err(lambda: sc.setns(fd, sc.CLONE_NEWIPC))
reg = os.open("/proc/self/status", os.O_RDONLY)
out["not_ns"] = err(lambda: sc.setns(reg, 0))

def unprivileged():
    os.setgroups([])
    os.setgid(65534)
    os.setuid(65534)          # from root to a plain user: every capability is dropped
    return err(lambda: sc.unshare(sc.CLONE_NEWUTS))

out["unprivileged"] = fork_call(unprivileged)
print(json.dumps(out))
'''


def _works(python: str) -> bool:
    try:
        return subprocess.run([python, "-c", "import os, sys; assert sys.version_info >= (3, 12) "
                               "and hasattr(os, 'setns')"], capture_output=True,
                              timeout=120).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@functools.lru_cache(maxsize=None)
def _python312() -> str | None:
    """A working Python >= 3.12 on this machine (pyenv's, then PATH), or None.
    (pyenv shims on PATH may name versions they refuse to run: each is tried.)"""
    candidates = ["/root/.pyenv/versions/3.12.1/bin/python",
                  *sorted(glob.glob("/root/.pyenv/versions/3.1[2-9]*/bin/python"))]
    candidates += [p for p in (shutil.which(n) for n in ("python3.12", "python3.13", "python3.14"))
                   if p]
    return next((p for p in candidates if os.path.exists(p) and _works(p)), None)


def _probe(python: str, impl: str, prefix: list[str] | None = None) -> dict:
    env = {**os.environ, "NSR_SYSCALLS": impl, "PYTHONPATH": ROOT}
    proc = subprocess.run((prefix or []) + [python, "-c", PROBE], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def _check_probe(out: dict, impl: str) -> None:
    assert out["impl"] == impl
    new_uts, new_ipc, back = out["round_trip"]
    assert new_uts != out["host"] and back == out["host"] == out["after"]
    assert new_ipc != new_uts
    assert out["bad_fd"][0] == "EBADF" and out["bad_fd"][1] == "setns(9999, CLONE_NEWUTS)"
    assert out["bad_fd"][3].startswith("setns(9999, CLONE_NEWUTS): EBADF")
    for key in ("wrong_type", "not_ns"):
        name, call, hint, text = out[key]
        assert name == "EINVAL" and call.startswith("setns(") and hint and "(hint: " in text
    name, call, hint, text = out["unprivileged"]
    assert (name, call, hint) == ("EPERM", "unshare(CLONE_NEWUTS)", "run as root")
    assert text == "unshare(CLONE_NEWUTS): EPERM (hint: run as root)"


# --- the two implementations ------------------------------------------------------------------

def test_ctypes_impl():
    _check_probe(_probe(sys.executable, "ctypes"), "ctypes")


def test_os_impl_on_python312():
    python = _python312()
    if python is None:
        pytest.skip("no Python >= 3.12 on this machine (needed for os.unshare/os.setns)")
    out = _probe(python, "os")
    assert out["python"] >= [3, 12]
    _check_probe(out, "os")


def test_ctypes_forced_on_python312():
    python = _python312()
    if python is None:
        pytest.skip("no Python >= 3.12 on this machine")
    _check_probe(_probe(python, "ctypes"), "ctypes")


def test_os_impl_unavailable_on_311_is_one_clear_error():
    if sc.available_impls().get("os"):
        pytest.skip("this interpreter has os.unshare")
    proc = subprocess.run([sys.executable, "-c", "import nsutil.syscalls"], cwd=ROOT,
                          env={**os.environ, "NSR_SYSCALLS": "os"}, capture_output=True, text=True)
    assert proc.returncode != 0
    assert "NSR_SYSCALLS='os' is not available here" in proc.stderr
    assert "choose one of ctypes" in proc.stderr


def _run_python_unprivileged(code: str) -> subprocess.CompletedProcess:
    """Run ``python -c code`` with this tree on the path, as uid 65534 with no capabilities."""
    return subprocess.run(unprivileged_argv([sys.executable, "-c", code]), cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": ROOT, "HOME": "/tmp"},
                          capture_output=True, text=True, timeout=300)


def test_unshare_as_unprivileged_user_says_run_as_root():
    """uid 65534 with no capabilities (setpriv), through the real CLI-less library path."""
    code = ("from nsutil import syscalls as sc\n"
            "from nsutil.errors import SyscallError\n"
            "for call in (lambda: sc.unshare(sc.CLONE_NEWNET), lambda: sc.umount('/proc')):\n"
            "    try:\n        call()\n"
            "    except SyscallError as exc:\n        print(exc)\n")
    proc = _run_python_unprivileged(code)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [
        "unshare(CLONE_NEWNET): EPERM (hint: run as root)",
        "umount2('/proc', 0): EPERM (hint: run as root)"]


# --- other syscalls, in throwaway namespaces ------------------------------------------------

def test_hostname_and_domainname_in_new_uts():
    def child():
        sc.unshare(sc.CLONE_NEWUTS)
        sc.sethostname("nsr-host")
        sc.setdomainname("nsr-domain")
        with open("/proc/sys/kernel/domainname") as f:
            return socket.gethostname(), f.read().strip()
    host = socket.gethostname()
    assert process.fork_call(child) == ("nsr-host", "nsr-domain")
    assert socket.gethostname() == host


def test_mount_data_propagation_umount_pivot_root():
    scratch = tempfile.mkdtemp(prefix="nsr-test-")

    def child():
        sc.unshare(sc.CLONE_NEWNS)
        sc.make_propagation("/", "private", recursive=True)
        sc.mount("nsr-t", scratch, "tmpfs", sc.MS_NOSUID, "size=1m,mode=0700")
        with open("/proc/self/mountinfo") as f:
            line = next(ln for ln in f if f" {scratch} " in ln)
        sc.make_propagation(scratch, "shared")
        with open("/proc/self/mountinfo") as f:
            shared = next(ln for ln in f if f" {scratch} " in ln)
        try:
            sc.umount(os.path.join(scratch, "nope"))
        except SyscallError as exc:
            missing = exc.errno_name
        os.mkdir(os.path.join(scratch, "old"))
        sc.make_propagation(scratch, "private")
        sc.pivot_root(scratch, os.path.join(scratch, "old"))
        os.chdir("/")
        sc.umount("/old", sc.MNT_DETACH)
        return line, shared, missing, sorted(os.listdir("/"))

    try:
        line, shared, missing, root = process.fork_call(child)
    finally:
        os.rmdir(scratch)
    assert "size=1024k" in line and "mode=700" in line and "nosuid" in line
    assert "shared:" in shared
    assert missing == "ENOENT"
    assert root == ["old"]  # after pivot_root the tmpfs is / and holds only old/


# --- processes ----------------------------------------------------------------------------------

def test_spawn_pid_namespace_and_before_hook():
    assert process.spawn(os.getpid, sc.CLONE_NEWPID) == 1
    seen = []
    got = process.spawn(lambda: (os.getpid(), ns_inode("self", "uts")), sc.CLONE_NEWUTS,
                        before=seen.append)
    assert seen == [got[0]] and got[1] != ns_inode("self", "uts")


def test_spawn_reports_unshare_failure_and_respects_a_failed_before(tmp_path):
    # unshare fails: its error comes back (not a BrokenPipeError from the handshake)
    with pytest.raises(SyscallError) as info:
        process.spawn(lambda: 1, sc.CLONE_NEWUTS | 0x1, before=lambda pid: None)
    assert info.value.errno_name == "EINVAL" and info.value.call == "unshare(CLONE_NEWUTS|0x1)"
    # before() fails in the parent: the child must not go on to run fn
    marker = tmp_path / "ran"

    def before(pid: int) -> None:
        raise NsrError("cannot write the uid_map")
    with pytest.raises(NsrError, match="cannot write the uid_map"):
        process.spawn(lambda: marker.touch(), sc.CLONE_NEWUTS, before=before)
    assert not marker.exists()


def test_call_in_and_exec_in_a_holder():
    holder = process.spawn_holder(sc.CLONE_NEWUTS, setup=lambda: sc.sethostname("nsr-held"))
    try:
        assert process.call_in(holder.pid, ["uts"], socket.gethostname) == "nsr-held"
        done = process.exec_in(holder.pid, ["uts"], ["hostname"])
        assert (done.returncode, done.stdout.strip()) == (0, "nsr-held")
        inside = process.call_in(holder.pid, ["uts"], lambda: ns_link("self", "uts"))
        assert inside == ns_link(holder.pid, "uts") != ns_link("self", "uts")
    finally:
        holder.stop()
    assert not holder.alive()


def test_wait_for_times_out():
    with pytest.raises(NsrError, match="timed out waiting for nothing"):
        process.wait_for(lambda: False, 0.05, "nothing")


# --- namespace identity ---------------------------------------------------------------------

def test_ns_inode_matches_readlink_and_lsns():
    holder = process.spawn_holder(sc.CLONE_NEWUTS | sc.CLONE_NEWIPC)
    try:
        for t in ("uts", "ipc", "net"):
            out = subprocess.run(["readlink", f"/proc/{holder.pid}/ns/{t}"], capture_output=True,
                                 text=True, check=True).stdout.strip()
            assert out == ns_link(holder.pid, t) == f"{t}:[{ns_inode(holder.pid, t)}]"
            lsns = subprocess.run(["lsns", "-n", "-o", "NS", "-t", t, "-p", str(holder.pid)],
                                  capture_output=True, text=True, check=True).stdout
            assert int(lsns.strip()) == ns_inode(holder.pid, t)
        assert ns_inode(holder.pid, "uts") != ns_inode("self", "uts")
        assert ns_inode(holder.pid, "net") == ns_inode("self", "net")
        # setns by path (enter) in a child lands in the holder's namespace
        path = f"/proc/{holder.pid}/ns/uts"
        assert process.fork_call(lambda: (enter(path, "uts"), ns_link("self", "uts"))[1]) == \
            ns_link(holder.pid, "uts")
    finally:
        holder.stop()


@pytest.mark.userspace
def test_type_names_and_errors():
    assert [t.name for t in parse_types("mnt,uts,mount,network")] == ["uts", "net", "mnt"]
    assert list(NS_TYPES) == ["user", "cgroup", "ipc", "uts", "net", "pid", "mnt", "time"]
    assert [t.name for t in NS_TYPES.values() if not t.in_document] == ["cgroup", "time"]
    for bad in ("bogus", "", " , "):
        with pytest.raises(InvalidInput):
            parse_types(bad)
    with pytest.raises(SyscallError) as info:
        ns_inode(999999999, "uts")
    assert info.value.errno_name == "ENOENT"
    assert sc.flag_names(sc.CLONE_NEWUTS | sc.CLONE_NEWPID) == "CLONE_NEWUTS|CLONE_NEWPID"
    assert sc.flag_names(0) == "0"


# --- parsing and names ----------------------------------------------------------------------

@pytest.mark.userspace
def test_idmap_parse():
    assert idmap.parse_map("0 1000 1") == [idmap.IdMap(0, 1000, 1)]
    maps = idmap.parse_map("0:1000:1,1:100000:65536")
    assert [m.line() for m in maps] == ["0 1000 1", "1 100000 65536"]
    assert idmap.parse_map("0 0 4294967294\n") == [idmap.IdMap(0, 0, 4294967294)]
    for bad in ("0 1000", "a b c", "0 1000 0", "", "0 -1 1", "0 4294967295 1", "1 2 3 4"):
        with pytest.raises(InvalidInput):
            idmap.parse_map(bad)


def test_idmap_read_map_of_self():
    assert idmap.read_map("self", "uid")[0] == idmap.IdMap(0, 0, 4294967295)


def _many(n: int, start: int = 0) -> str:
    """``n`` one-id ranges, each mapping ``start + i`` to itself."""
    return ",".join(f"{start + i}:{start + i}:1" for i in range(n))


#: (spec, words of the one line that refuses it) -- one per rule of the kernel's map_write
MAP_REFUSED = [
    ("0:1000:10,5:2000:10", "ranges 0:1000:10 and 5:2000:10 overlap inside (ids 5-9)"),
    ("0:1000:10,20:1009:5", "ranges 0:1000:10 and 20:1009:5 overlap outside (id 1009)"),
    ("0:1000:0", "0:1000:0 has count 0"),
    ("4294967290:0:6", "4294967290:0:6 runs past 4294967294 inside"),
    ("0:4294967290:6", "0:4294967290:6 runs past 4294967294 outside"),
    (_many(341), "has 341 ranges; the kernel takes at most 340"),
    (_many(200, 4_000_000_000), "bytes as written; the kernel takes one write of at most"),
]
#: the edges of those rules, which the kernel takes
MAP_ACCEPTED = ["0:1000:10,10:1010:10", "0:0:4294967295", "4294967290:0:5", "0:4294967290:5",
                _many(340), "5:2000:10,0:1000:5"]


@pytest.mark.userspace
@pytest.mark.parametrize("spec,words", MAP_REFUSED, ids=[w.split(";")[0][:40] for _, w in MAP_REFUSED])
def test_idmap_rules_refuse_each_with_one_line(spec, words):
    with pytest.raises(InvalidInput) as err:
        idmap.parse_map(spec, "--uid-map")
    text = str(err.value)
    assert text.startswith("--uid-map ") and words in text and "hint:" in text, text
    assert "\n" not in text
    # the same rule holds for maps built in code: checked again before anything is written
    if not spec.endswith(":0"):
        maps = [idmap.IdMap(*map(int, part.split(":"))) for part in spec.split(",")]
        with pytest.raises(InvalidInput, match="uid map"):
            idmap.write_uid_map(os.getpid(), maps)


@pytest.mark.userspace
@pytest.mark.parametrize("spec", MAP_ACCEPTED, ids=lambda s: s[:30])
def test_idmap_rules_accept_their_edges(spec):
    assert idmap.parse_map(spec) == [idmap.IdMap(*map(int, p.split(":"))) for p in spec.split(",")]


def _kernel_takes(text: str) -> bool:
    """Whether the kernel takes ``text`` as the uid_map of a new user namespace."""
    proc = subprocess.Popen(["unshare", "--user", "sleep", "30"])
    try:
        process.wait_for(lambda: ns_inode(proc.pid, "user") != ns_inode("self", "user"), 5,
                         "unshare --user to start")
        fd = os.open(f"/proc/{proc.pid}/uid_map", os.O_WRONLY)
        try:
            os.write(fd, text.encode())
            return True
        except OSError:
            return False
        finally:
            os.close(fd)
    finally:
        proc.kill()
        proc.wait()


@pytest.mark.parametrize("spec", [s for s, _ in MAP_REFUSED] + MAP_ACCEPTED, ids=lambda s: s[:30])
def test_idmap_rules_are_the_kernels(spec):
    """What check_maps refuses the kernel refuses, and what it takes the kernel takes
    (written as root to a new user namespace's uid_map, without our code)."""
    maps = [idmap.IdMap(*map(int, part.split(":"))) for part in spec.split(",")]
    try:
        idmap.check_maps(maps)
        ours = True
    except InvalidInput:
        ours = False
    assert _kernel_takes(idmap.map_text(maps)) == ours


@pytest.mark.userspace
@pytest.mark.parametrize("fn,value", [
    (names.check_name, ""), (names.check_name, ".."), (names.check_name, "a/b"),
    (names.check_name, "a b"), (names.check_name, "-x"), (names.check_name, "x" * 65),
    (names.check_ifname, "nsr-0123456789ab"), (names.check_hostname, "x" * 65),
    (names.check_hostname, ""), (names.check_hostname, "a b"), (names.check_id, "x"),
    (names.check_id, "-1"), (names.check_id, "4294967295"), (names.check_cidr, "10.0.0.1"),
    (names.check_cidr, "300.0.0.1/24")])
def test_names_reject(fn, value):
    with pytest.raises(InvalidInput) as info:
        fn(value)
    assert "\n" not in str(info.value) and "(hint: " in str(info.value)
    assert info.value.exit_code == 2


@pytest.mark.userspace
def test_names_accept():
    assert names.check_ifname("nsr-0123456789a") == "nsr-0123456789a"  # 15 bytes
    assert names.check_hostname("x" * 64) == "x" * 64
    assert names.check_id(" 1000 ") == 1000 and names.check_id(4294967294) == 4294967294
    assert str(names.check_cidr("10.200.0.1/24")) == "10.200.0.1/24"
    assert names.prefixed("a", "b") == "nsr-a-b" and names.is_ours("nsr-a-b")
    with pytest.raises(InvalidInput):
        names.prefixed("x" * 20)
    assert len(names.scope_id()) == 4


# --- errors ----------------------------------------------------------------------------------

ERRORS = [
    SyscallError("setns(3, CLONE_NEWUTS)", 22),
    SyscallError("unshare(CLONE_NEWNET)", 1, hint="custom"),
    CommandError(["ip", "netns", "add", "nsr-x"], 1, "Cannot create namespace file: File exists\n"),
    ToolMissing("nsenter", "util-linux"),
    InvalidInput("hostname 'x' is 65 bytes", hint="use 1 to 64 bytes"),
    NotRoot("mount-demo"), Conflict("nsr-a exists", hint="remove it"), NotFound("no env nsr-a"),
    NsrError("plain"),
]


@pytest.mark.userspace
@pytest.mark.parametrize("exc", ERRORS, ids=lambda e: type(e).__name__)
def test_errors_pickle_round_trip(exc):
    back = pickle.loads(pickle.dumps(exc))
    assert type(back) is type(exc) and str(back) == str(exc) and back.args == exc.args
    assert back.__dict__ == exc.__dict__ and back.exit_code == exc.exit_code
    assert "\n" not in str(exc)


@pytest.mark.userspace
def test_error_texts():
    assert str(ERRORS[0]) == ("setns(3, CLONE_NEWUTS): EINVAL (hint: the kernel rejected the "
                              "arguments (is the feature enabled? see `invoke doctor`))")
    assert ERRORS[0].errno == 22 and ERRORS[1].hint == "custom"
    assert str(ERRORS[2]) == ("`ip netns add nsr-x` exited 1: Cannot create namespace file: File "
                              "exists (hint: it exists already: pick another name or remove it first)")
    assert str(ERRORS[3]) == ("`nsenter` is not installed (hint: apt-get install util-linux, "
                              "or use --backend native)") and ERRORS[3].exit_code == 127
    assert str(ERRORS[5]) == "mount-demo needs root (hint: run it with sudo, or as root)"
    # ENOSPC: a namespace limit from unshare, a full filesystem from a file's write
    assert "max_*_namespaces" in str(SyscallError("unshare(CLONE_NEWNET)", errno.ENOSPC))
    assert "its filesystem is full" in str(SyscallError("write('/run/x.json')", errno.ENOSPC))


def test_errors_cross_a_fork():
    def fail():
        sc.setns(9999, sc.CLONE_NEWUTS)
    with pytest.raises(SyscallError) as info:
        process.fork_call(fail)
    assert info.value.errno_name == "EBADF" and info.value.call == "setns(9999, CLONE_NEWUTS)"

    def crash():
        raise ValueError("not an NsrError")
    with pytest.raises(NsrError, match="ValueError: not an NsrError"):
        process.fork_call(crash)
    with pytest.raises(SyscallError):
        process.spawn(fail, sc.CLONE_NEWUTS | sc.CLONE_NEWPID)  # through the extra PID fork


# --- Runner ----------------------------------------------------------------------------------

def test_runner_undo_is_lifo_and_continues_past_failures():
    order = []

    def boom():
        order.append("boom")
        raise NsrError("undo failed")

    run = Runner(backend="native", out=io.StringIO())
    run.run(Step("a", native=lambda: order.append("a"),
                 undo=Step("undo a", native=lambda: order.append("undo a"))))
    run.defer(Step("undo b", native=boom))
    run.run(Step("c", native=lambda: order.append("c"),
                 undo=Step("undo c", native=lambda: order.append("undo c"))))
    errors = run.undo()
    assert order == ["a", "c", "undo c", "boom", "undo a"]
    assert [str(e) for e in errors] == ["undo failed"] and run.undo_stack == []


def test_runner_undoes_on_exception_and_keeps_on_success():
    order = []
    with pytest.raises(NsrError):
        with Runner(backend="native", keep=True, out=io.StringIO()) as run:
            run.defer(Step("undo 1", native=lambda: order.append(1)))
            run.run(Step("fails", native=lambda: (_ for _ in ()).throw(NsrError("x"))))
    assert order == [1]
    with Runner(backend="native", keep=True, out=io.StringIO()) as run:
        run.defer(Step("undo 2", native=lambda: order.append(2)))
    assert order == [1]  # kept for the user


@pytest.mark.userspace
def test_explain_prints_and_changes_nothing():
    order = []
    out = io.StringIO()
    with Runner(backend="native", explain=True, out=out) as run:
        value = run.run(Step("make it", argv=["touch", "/tmp/nsr-x"],
                             native=lambda: order.append("ran"),
                             undo=Step("remove it", argv=["rm", "/tmp/nsr-x"],
                                       native=lambda: order.append("undone")),
                             placeholder=Placeholder("$X")))
        assert value == "$X" and isinstance(value, Placeholder)
    assert order == [] and not os.path.exists("/tmp/nsr-x")
    text = out.getvalue()
    assert "[1] make it\n      $ touch /tmp/nsr-x" in text
    assert "[undo] remove it\n      $ rm /tmp/nsr-x" in text


@pytest.mark.userspace
def test_backend_choice():
    with pytest.raises(InvalidInput, match="unknown backend 'bogus'"):
        Runner(backend="bogus")
    step = Step("x", argv=["nsr-no-such-tool"], native=lambda: "native")
    assert Runner(backend="auto").run(step) == "native"  # tool missing: auto falls back
    with pytest.raises(ToolMissing, match="nsr-no-such-tool"):
        Runner(backend="shell").run(step)
    assert Runner(backend="shell").run(Step("echo", argv=["echo", "hi"], native=lambda: "no")) == "hi\n"


def test_shell_holder_failure_quotes_unshare_stderr():
    """recipes.common.holder.spawn_background keeps unshare's stderr off the terminal, but a failed
    start still quotes it (run as an unprivileged user, where unshare is refused: the Runner
    is told the run is not rootless, so no user namespace comes first)."""
    code = ("import io\nfrom nsutil.backend import Runner\nfrom nsutil.errors import NsrError\n"
            "from recipes.common.holder import start_holder\n"
            "try:\n    with Runner(backend='shell', out=io.StringIO(), rootless=False) as run:\n"
            "        start_holder(run, 'uts')\n"
            "except NsrError as exc:\n    print(exc)\n")
    proc = _run_python_unprivileged(code)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    assert proc.stdout.startswith("`unshare --uts -- sleep infinity` exited 1: unshare: ")
    assert "Operation not permitted (hint: run as root)" in proc.stdout


def test_eperm_hint_names_apparmor_restriction(monkeypatch, tmp_path):
    """Ubuntu 23.10+ restricts unprivileged user namespaces with AppArmor; this Debian host
    has no such sysctl, so the sysctl file is faked here (the only fake in this file)."""
    import builtins
    import errno as _errno
    from nsutil import errors
    fake = tmp_path / "restrict"
    fake.write_text("1\n")
    real_open = builtins.open
    monkeypatch.setattr(builtins, "open", lambda path, *a, **k: real_open(
        fake if path == "/proc/sys/kernel/apparmor_restrict_unprivileged_userns" else path, *a, **k))
    monkeypatch.setattr(errors.os, "geteuid", lambda: 1000)
    assert "AppArmor" in str(errors.SyscallError("unshare(CLONE_NEWUSER)", _errno.EPERM))
    monkeypatch.setattr(errors.os, "geteuid", lambda: 0)   # root with every capability
    text = str(errors.SyscallError("unshare(CLONE_NEWUSER)", _errno.EPERM))
    assert "run as root" not in text and "(hint: root is refused too: " in text


def test_which_finds_programs_as_the_shell_does(tmp_path, monkeypatch):
    """nsutil.programs.which (not shutil's: loading shutil cost every command line 1.6 ms):
    the first executable file on $PATH; not a directory, not a file without x; a name with
    a '/' as it is."""
    from nsutil.programs import which
    first, second = tmp_path / "first", tmp_path / "second"
    for d in (first, second):
        d.mkdir()
    (first / "tool").write_text("#!/bin/sh\n")                  # not executable
    (first / "dir-tool").mkdir()
    for d in (first, second):
        (d / "both").write_text("#!/bin/sh\n")
        (d / "both").chmod(0o755)
    (second / "tool").write_text("#!/bin/sh\n")
    (second / "tool").chmod(0o755)
    monkeypatch.setenv("PATH", f"{first}:{second}")
    assert which("tool") == str(second / "tool")
    assert which("both") == str(first / "both")
    assert which("dir-tool") is None and which("nsr-none") is None
    assert which(str(second / "tool")) == str(second / "tool")
    assert which(str(first / "tool")) is None

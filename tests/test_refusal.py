"""A container that is not privileged: every task refuses in one line that names the layer.

No mocks: a real seccomp filter (tests/seccompfilter.py through libseccomp: Docker's default
profile as far as namespaces go; tests/seccomp_exec.py loads it and execs the CLI), a real
dropped capability (setpriv takes CAP_SYS_ADMIN out of the bounding and inheritable sets, so
root's exec gets it in no set; or capset and the bounding set in a forked child) and a real
user namespace (unshare --user --map-root-user: uid 0 that is not the host's root).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import subprocess
import sys

import pytest

import helpers
import leakcheck
import seccompfilter
from nsutil import errors, process
from nsutil import syscalls as sc

HERE = os.path.dirname(os.path.abspath(__file__))

#: Docker's default: a filter, and no CAP_SYS_ADMIN
SECCOMP = [sys.executable, os.path.join(HERE, "seccomp_exec.py"), "--"]
SECCOMP_BUT_UNSHARE = [sys.executable, os.path.join(HERE, "seccomp_exec.py"), "--allow-unshare",
                       "--"]
NO_SYS_ADMIN = ["setpriv", "--bounding-set", "-sys_admin", "--inh-caps", "-sys_admin", "--"]
MAPPED_ROOT = ["unshare", "--user", "--map-root-user", "--"]

#: every task that needs root, with the arguments it needs to get that far
TASKS = [["pid-demo"], ["uts-demo"], ["user-demo"], ["ipc-demo"], ["mount-demo"], ["api-demo"],
         ["net-demo"], ["cgroupns-demo"], ["time-demo"], ["cgroup-demo"], ["cow-demo"], ["tour"],
         ["net-veth"], ["net-topo"], ["env-create", "nsr-refused"], ["env-ls"],
         ["env-exec", "nsr-refused", "--", "true"], ["container-run", "--", "true"],
         ["rootfs-busybox", "/tmp/nsr-refused-rootfs"], ["cleanup", "--dry-run"]]

SECCOMP_FIX = "--security-opt seccomp=unconfined"


@pytest.fixture(autouse=True)
def _root_with_seccomp():
    if os.geteuid() != 0:
        pytest.skip("the layers refuse root here; unprivileged users get `run as root`")
    if ctypes.util.find_library("seccomp") is None:
        pytest.skip("needs libseccomp (apt-get install libseccomp2)")


#: a sandbox for one task: its /run (the state, /run/netns), /tmp, /etc/netns and cgroup tree
#: are fresh tmpfs, its links and queues in namespaces of its own; after the task, what is
#: in them (and any nsr link or message queue) is written to fd $LEFT_FD. Aside: util-linux's
#: /run/mount (where `mount` keeps its utab) and the /run/netns directory itself, which
#: `ip netns add` makes and keeps, as nsrecipes does (what is in it is listed). Other runs
#: on this shared host then cannot be mistaken for what a refused task left, nor hide it.
SANDBOX_SCRIPT = """
for d in /run /tmp /etc/netns /sys/fs/cgroup; do
    if [ -d "$d" ]; then mount -t tmpfs nsr-sandbox "$d"; fi
done
"$@"; rc=$?
{ find /run /tmp /etc/netns /sys/fs/cgroup -mindepth 1 -path /run/mount -prune -o \
    ! -path /run/netns -print 2>/dev/null
  ip -o link show | grep -o ' nsr[^:@]*'; ipcs -q | grep '^0x'; } >/proc/self/fd/$LEFT_FD
exit $rc
"""


def _sandboxed(args: list[str], prefix: list[str],
               backend: str) -> tuple[subprocess.CompletedProcess, list[str]]:
    """Run ``invoke ARGS`` under ``prefix`` in the sandbox: the process, and what it left
    there (processes of this session it left are compared by the caller)."""
    hidden = helpers.checkout_under("/run", "/tmp", "/etc/netns")
    if hidden:
        pytest.fail(f"the checkout is under {hidden}, which the sandbox replaces with a fresh "
                    "tmpfs: clone the project somewhere else (e.g. /opt or your home)")
    r, w = os.pipe()
    try:
        argv = ["unshare", "--mount", "--net", "--ipc", "--propagation", "private", "--",
                "sh", "-c", SANDBOX_SCRIPT, "sh", *prefix, helpers.INVOKE, *args]
        proc = subprocess.run(argv, cwd=helpers.ROOT, capture_output=True, text=True,
                              timeout=600, pass_fds=(w,),
                              env={**os.environ, "NSR_BACKEND": backend, "LEFT_FD": str(w)})
    finally:
        os.close(w)
        with os.fdopen(r) as f:
            left = f.read().splitlines()
    return proc, left


def _refused(args: list[str], prefix: list[str], backend: str) -> str:
    """Run the task under ``prefix`` in the sandbox: it must print nothing, fail with one
    line on stderr and leave nothing; that line is returned."""
    before = leakcheck.processes()
    proc, left = _sandboxed(args, prefix, backend)
    line = helpers.one_line_error(proc)
    assert proc.stdout == "", (args, proc.stdout)
    assert line.startswith("nsrecipes: "), line
    assert left == [] and leakcheck.processes() <= before, (args, left)
    return line


@pytest.mark.userspace
def test_docker_default_refuses_every_task_naming_both_layers(backend):
    """A filter and no CAP_SYS_ADMIN: both layers and the one fix that opens both, for every
    task that needs root. Marked userspace: every task refuses in the same preflight
    (require_root) before any step; what the kernel answers there is checked in the VM by
    the tests below (about 40 CLI starts would take the VM some 8 minutes)."""
    for args in TASKS:
        line = _refused(args, SECCOMP + NO_SYS_ADMIN, backend)
        assert "are refused by seccomp (Seccomp: 2, a filter answers unshare, setns, mount, " \
               "umount2, clone with namespace flags: EPERM; clone3: ENOSYS) and capabilities " \
               "(no CAP_SYS_ADMIN, not even in the bounding set)" in line, line
        assert line.endswith("(hint: start the container with --privileged, or --cap-add "
                             "SYS_ADMIN --security-opt seccomp=unconfined)"), line


@pytest.mark.userspace
def test_each_layer_alone_is_named_with_its_own_fix(backend):
    """The filter alone, the filter that lets unshare through (mount still refused), and the
    capability alone, through the CLI: each names only the layer that refused. Marked
    userspace: the same refusals are made in a forked child below (the VM runs those)."""
    line = _refused(["pid-demo"], SECCOMP, backend)
    assert line == ("nsrecipes: pid-demo: namespaces are refused by seccomp (Seccomp: 2, a "
                    "filter answers unshare, setns, mount, umount2, clone with namespace flags: "
                    f"EPERM; clone3: ENOSYS) (hint: start the container with {SECCOMP_FIX}, or "
                    "--privileged)"), line
    line = _refused(["mount-demo"], SECCOMP_BUT_UNSHARE, backend)
    assert "refused by seccomp (Seccomp: 2, a filter answers setns, mount, umount2," in line
    assert "capabilities" not in line and SECCOMP_FIX in line
    line = _refused(["pid-demo"], NO_SYS_ADMIN, backend)
    assert line == ("nsrecipes: pid-demo: namespaces are refused by capabilities (no "
                    "CAP_SYS_ADMIN, not even in the bounding set) (hint: start the container "
                    "with --cap-add SYS_ADMIN, or --privileged)"), line


def _drop_effective(cap: int) -> None:
    """capset(2): take ``cap`` out of this process's effective set only (permitted and
    bounding keep it: a process may raise it again)."""
    libc = ctypes.CDLL(None, use_errno=True)
    header = (ctypes.c_uint32 * 2)(0x20080522, 0)            # _LINUX_CAPABILITY_VERSION_3
    data = (ctypes.c_uint32 * 6)()            # {effective, permitted, inheritable} x 2 words
    assert libc.capget(header, data) == 0, ctypes.get_errno()
    data[0 + 3 * (cap // 32)] &= ~(1 << cap % 32)
    assert libc.capset(header, data) == 0, ctypes.get_errno()


def test_a_dropped_effective_capability_is_told_apart():
    """CAP_SYS_ADMIN still permitted and in the bounding set, only not effective (what a
    program that lowers its own privileges does): that, and not a container, is named."""
    def inside() -> str:
        _drop_effective(21)                                  # CAP_SYS_ADMIN
        try:
            errors.require_root("pid-demo")
        except errors.Refused as exc:
            return str(exc)
        return "not refused"

    text = process.fork_call(inside, "capability test")
    assert text == ("pid-demo: namespaces are refused by capabilities (CAP_SYS_ADMIN is not "
                    "effective, though in the bounding set) (hint: run it with CAP_SYS_ADMIN "
                    "effective: it is still in the bounding set, so this process or its "
                    "starter dropped it (setpriv, capsh, a program lowering its privileges))"), text


def test_root_of_a_user_namespace_is_seen_as_such(backend):
    """uid 0 mapped from the host's root, as LXD or rootless podman give: pid-demo works
    (its namespaces are the user namespace's own), net-demo fails at /run/netns, a mount of
    the host's, and the hint says whose root this is. Nothing is left (in the sandbox)."""
    ok, left = _sandboxed(["pid-demo"], MAPPED_ROOT, backend)
    assert ok.returncode == 0 and left == [], (ok.stderr, left)
    failed, left = _sandboxed(["net-demo"], MAPPED_ROOT, backend)
    line = helpers.one_line_error(failed)
    assert "EPERM" in line or "Operation not permitted" in line, line
    assert "(hint: uid 0 here is root of a user namespace, not the host's (user:[" in line, line
    assert "uid_map 0 0 1: uid 0 here is uid 0 one level up)" in line, line
    assert "run as root" not in line
    assert left == [], left


def _refusal_after(setup) -> str:
    """What require_root("pid-demo") raises in a forked child after ``setup``."""
    def child() -> str:
        setup()
        try:
            errors.require_root("pid-demo")
        except errors.Refused as exc:
            return str(exc)
        return "not refused"
    return process.fork_call(child, "refusal test")


def test_each_layer_is_named_in_a_child():
    """The same refusals as the CLI's, in a forked child: the filter, the filter that lets
    unshare through, the capability, and both (Docker's default)."""
    assert _refusal_after(lambda: seccompfilter.load("docker")) == (
        "pid-demo: namespaces are refused by seccomp (Seccomp: 2, a filter answers unshare, "
        "setns, mount, umount2, clone with namespace flags: EPERM; clone3: ENOSYS) (hint: "
        f"start the container with {SECCOMP_FIX}, or --privileged)")
    text = _refusal_after(lambda: seccompfilter.load("allow-unshare"))
    assert "refused by seccomp (Seccomp: 2, a filter answers setns, mount, umount2," in text
    assert _refusal_after(lambda: seccompfilter.drop_caps(21)) == (
        "pid-demo: namespaces are refused by capabilities (no CAP_SYS_ADMIN, not even in the "
        "bounding set) (hint: start the container with --cap-add SYS_ADMIN, or --privileged)")
    both = _refusal_after(lambda: (seccompfilter.load("docker"), seccompfilter.drop_caps(21)))
    assert "and capabilities (no CAP_SYS_ADMIN" in both and both.endswith(
        "(hint: start the container with --privileged, or --cap-add SYS_ADMIN --security-opt "
        "seccomp=unconfined)"), both
    assert _refusal_after(lambda: seccompfilter.load("only-clone3")) == "not refused"


def test_a_syscall_error_under_a_filter_names_it():
    """The library path, without the CLI: a SyscallError's hint is the diagnosis too."""
    def child() -> str:
        seccompfilter.load("docker")
        try:
            sc.unshare(sc.CLONE_NEWUTS)
        except errors.SyscallError as exc:
            return str(exc)
        return "made"
    text = process.fork_call(child, "syscall error test")
    assert text.startswith("unshare(CLONE_NEWUTS): EPERM (hint: refused by seccomp "
                           "(Seccomp: 2, a filter answers unshare,"), text
    assert text.endswith(f"{SECCOMP_FIX}, or --privileged)"), text

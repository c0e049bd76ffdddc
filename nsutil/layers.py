"""Which layer lets this process make namespaces, and which refuses.

Between a process and a new namespace stand, in the order the kernel asks them:

1. **seccomp** -- a filter (``Seccomp: 2`` in /proc/self/status) sees the system call and
   its arguments before the kernel does, and may answer for it: Docker's default profile
   answers unshare, setns, mount, umount2 and clone with a namespace flag with EPERM, and
   clone3 with ENOSYS (glibc then falls back to clone, so fork still works);
2. **capabilities** -- the kernel wants CAP_SYS_ADMIN (effective) for every namespace but
   a user namespace, and for mount; a container started without ``--privileged`` has
   neither it nor, in its bounding set, a way to get it back;
3. **the user namespace** -- uid 0 in a user namespace (an LXD or rootless-podman
   container) holds its capabilities over what that namespace owns only, not over the host;
4. an **LSM** (AppArmor, SELinux) may still refuse, after all of the above.

The facts are read from /proc; the attempts are made in a forked child, so that whatever
the kernel allows, this process stays where it is. The child only makes system calls, so
the attempt needs none of nsrecipes' process machinery (and :mod:`nsutil.errors` can ask
this module without an import circle). Which calls a filter refuses is seen for real, with
arguments the kernel itself rejects before any permission check (``unshare`` with an unknown
flag: EINVAL, ``setns`` on fd -1: EBADF, ``mount`` on an empty path: ENOENT, ...): an answer
other than the kernel's own came from the filter, and nothing was made either way.
"""
from __future__ import annotations

import ctypes
import errno
import os
import signal
from dataclasses import dataclass
from typing import Callable

from . import caps

#: the inode numbers the kernel gives its initial namespaces (include/linux/proc_ns.h)
INITIAL_INODES = {"user": 0xEFFFFFFD, "pid": 0xEFFFFFFC, "uts": 0xEFFFFFFE,
                  "ipc": 0xEFFFFFFF, "cgroup": 0xEFFFFFFB, "time": 0xEFFFFFFA}
#: what a uid_map of the initial user namespace reads: every id is itself
IDENTITY_MAP = [(0, 0, 4294967295)]

#: the clone flags of the document's namespaces and cgroup's (linux/sched.h): mnt, uts,
#: ipc, pid, net, cgroup -- every namespace a recipe run as root makes
ROOT_NAMESPACES = 0x00020000 | 0x04000000 | 0x08000000 | 0x20000000 | 0x40000000 | 0x02000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWTIME = 0x00000080
CLONE_FS = 0x00000200
ALL_NAMESPACES = ROOT_NAMESPACES | CLONE_NEWUSER | CLONE_NEWTIME

SECCOMP_MODES = {0: "no filter", 1: "strict mode", 2: "a filter"}

#: what the container runtime's options are for each layer
FIX_SECCOMP = "start the container with --security-opt seccomp=unconfined, or --privileged"
FIX_CAPS = "start the container with --cap-add SYS_ADMIN, or --privileged"
FIX_BOTH = ("start the container with --privileged, or --cap-add SYS_ADMIN --security-opt "
            "seccomp=unconfined")
FIX_DROPPED = ("run it with CAP_SYS_ADMIN effective: it is still in the bounding set, so this "
               "process or its starter dropped it (setpriv, capsh, a program lowering its "
               "privileges)")
FIX_USERNS = ("run it on the host, or in a privileged container (LXD: security.privileged="
              "true; podman: as the host's root)")
FIX_LSM = ("see the LSM's log (dmesg, audit.log); for a container's AppArmor profile: "
           "--security-opt apparmor=unconfined")

_SYS_CLONE = {"x86_64": 56, "aarch64": 220, "riscv64": 220, "ppc64le": 120, "s390x": 120,
              "i686": 120, "armv7l": 120}
_SYS_CLONE3 = 435          # the same number on every architecture (Linux 5.3+)


# --- facts, from /proc --------------------------------------------------------------------

def status_field(key: str, pid: int | str = "self") -> str | None:
    """The value of ``key:`` in /proc/PID/status (None where the kernel has no such line)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                name, _, value = line.partition(":")
                if name == key:
                    return value.strip()
    except OSError:
        return None
    return None


def seccomp_mode() -> int:
    """0 (no filter), 1 (strict) or 2 (a filter): the ``Seccomp:`` line of /proc/self/status."""
    value = status_field("Seccomp")
    return int(value) if value and value.isdigit() else 0


def seccomp_filters() -> int:
    """How many filters are stacked on this process (``Seccomp_filters:``, Linux 5.9+)."""
    value = status_field("Seccomp_filters")
    return int(value) if value and value.isdigit() else 0


def has_cap(name: str, which: str = "CapEff") -> bool:
    """True if capability ``name`` (``cap_sys_admin``) is in set ``which`` of this process."""
    return bool(caps.read_caps().get(which, 0) >> caps.CAP_NAMES.index(name) & 1)


def ns_inode(kind: str) -> int | None:
    """The inode of this process's namespace of ``kind`` (None if /proc has no such link)."""
    try:
        return os.stat(f"/proc/self/ns/{kind}").st_ino
    except OSError:
        return None


def in_initial(kind: str) -> bool | None:
    """True if this process is in the kernel's initial namespace of ``kind`` (user, pid,
    uts, ipc, cgroup, time: the ones with a fixed inode); None if it cannot be told."""
    inode = ns_inode(kind)
    return None if inode is None else inode == INITIAL_INODES[kind]


@dataclass
class UserNamespace:
    """This process's user namespace: its inode and uid_map."""

    inode: int | None
    uid_map: list[tuple[int, int, int]]

    @property
    def initial(self) -> bool:
        """The kernel's own (the host's); else a container's, LXD's or podman's."""
        if self.inode is not None:
            return self.inode == INITIAL_INODES["user"]
        return self.uid_map == IDENTITY_MAP

    def outside(self, uid: int) -> int | None:
        """The uid one level up that ``uid`` here is (None: unmapped)."""
        for inside, out, count in self.uid_map:
            if inside <= uid < inside + count:
                return out + uid - inside
        return None

    def describe(self) -> str:
        """``the initial user namespace`` or ``a user namespace (uid 0 is uid 100000 one
        level up; 65536 ids mapped)``."""
        text = ", ".join(f"{a} {b} {c}" for a, b, c in self.uid_map) or "empty"
        if self.initial:
            return f"the initial user namespace (uid_map {text})"
        return (f"a user namespace, not the host's (user:[{self.inode}], uid_map {text}: "
                f"uid {os.geteuid()} here is uid {self.outside(os.geteuid())} one level up)")


def user_namespace() -> UserNamespace:
    """This process's user namespace (/proc/self/ns/user, /proc/self/uid_map)."""
    maps = []
    try:
        with open("/proc/self/uid_map") as f:
            for line in f:
                a, b, c = (int(x) for x in line.split())
                maps.append((a, b, c))
    except OSError:
        pass
    return UserNamespace(ns_inode("user"), maps)


def proc_sys_readonly() -> bool:
    """True if /proc/sys is mounted read-only (as Docker and Kubernetes mount it)."""
    try:
        return bool(os.statvfs("/proc/sys").f_flag & os.ST_RDONLY)
    except OSError:
        return False


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read().strip().rstrip("\x00")
    except OSError:
        return None


def lsms() -> list[str] | None:
    """The active LSMs in the order the kernel asks them (/sys/kernel/security/lsm); None
    where securityfs is not mounted (containers, this kind of VM)."""
    text = _read("/sys/kernel/security/lsm")
    return None if text is None else [x for x in text.split(",") if x]


def apparmor_label() -> str | None:
    """This process's AppArmor label (``unconfined``, ``docker-default (enforce)``), or None
    without AppArmor (/proc/self/attr/apparmor/current, else /proc/self/attr/current)."""
    for path in ("/proc/self/attr/apparmor/current", "/proc/self/attr/current"):
        text = _read(path)
        if text:
            return text
    return None


# --- attempts, in a child ------------------------------------------------------------------

_LIBC = ctypes.CDLL(None, use_errno=True)
_LIBC.syscall.restype = ctypes.c_long


def in_child(fn: Callable[[], int]) -> int | str:
    """Run ``fn`` in a forked child and return what it returned (an errno, 0 for success),
    or ``killed by SIGSYS`` if the child died of a signal (a filter that kills). The child
    runs with Ctrl-C blocked and leaves by ``_exit``: it never unwinds into our code."""
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        pid = os.fork()
    except OSError:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)
        raise
    if pid == 0:
        code = 255
        try:
            code = fn()
        finally:
            os._exit(code)
    signal.pthread_sigmask(signal.SIG_SETMASK, old)
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status):
        return f"killed by {signal.Signals(os.WTERMSIG(status)).name}"
    return os.WEXITSTATUS(status)


def _errno_of(ret: int) -> int:
    return ctypes.get_errno() if ret == -1 else 0


def _clone_with_namespace_flags() -> int:
    ret = _LIBC.syscall(_SYS_CLONE[os.uname().machine], ctypes.c_ulong(ALL_NAMESPACES | CLONE_FS),
                        None, None, None, None)
    if ret == 0:                 # cannot happen (CLONE_NEWNS with CLONE_FS is EINVAL): leave
        os._exit(0)
    return _errno_of(ret)


#: call -> (how it is made, the errno the kernel itself answers those arguments with)
PROBE_CALLS: dict[str, tuple[Callable[[], int], int]] = {
    "unshare": (lambda: _errno_of(_LIBC.unshare(ALL_NAMESPACES | 0x1)), errno.EINVAL),
    "setns": (lambda: _errno_of(_LIBC.setns(-1, ROOT_NAMESPACES)), errno.EBADF),
    "mount": (lambda: _errno_of(_LIBC.mount(None, b"", None, ctypes.c_ulong(0), None)),
              errno.ENOENT),
    "umount2": (lambda: _errno_of(_LIBC.umount2(b"", 0x40000000)), errno.EINVAL),
    "clone": (_clone_with_namespace_flags, errno.EINVAL),
    "clone3": (lambda: _errno_of(_LIBC.syscall(_SYS_CLONE3, None, ctypes.c_size_t(0))),
               errno.EINVAL),
}


def errno_name(value: int | str) -> str:
    """``EPERM`` for 1; a string (``killed by SIGSYS``) as it is."""
    return errno.errorcode.get(value, str(value)) if isinstance(value, int) else value


def filtered_calls() -> dict[str, str]:
    """The calls a seccomp filter answers instead of the kernel: name -> its answer
    (``EPERM``, ``ENOSYS``, ``killed by SIGSYS``). Each call is made once, in a child of
    its own, with arguments the kernel rejects before any permission check; empty without a
    filter (nothing is tried then)."""
    if seccomp_mode() != 2:
        return {}
    out = {}
    for name, (call, kernels) in PROBE_CALLS.items():
        if name == "clone" and os.uname().machine not in _SYS_CLONE:
            continue
        answer = in_child(call)
        if answer != kernels:
            out[name] = errno_name(answer)
    return out


def blocks_namespaces(refused: dict[str, str]) -> bool:
    """True if a filter that answers ``refused`` (:func:`filtered_calls`) keeps namespaces
    from being made: any call but clone3 alone (glibc falls back to clone for it)."""
    return bool(set(refused) - {"clone3"})


def try_unshare(flags: int = ROOT_NAMESPACES) -> int | str:
    """unshare(``flags``) for real, in a child: 0 if the kernel made them, else the errno."""
    return in_child(lambda: _errno_of(_LIBC.unshare(flags)))


def try_each(flags: list[int]) -> list[int | str]:
    """unshare(f) for each of ``flags`` in turn, all in one child (a fork costs much more
    than an unshare, in an emulated VM a second or so): the errno of each, 0 where the
    kernel made it. Put CLONE_NEWUSER last: in a user namespace of its own the child would
    hold every capability over the namespaces it makes next."""
    r, w = os.pipe()

    def child() -> int:
        os.close(r)
        for f in flags:
            os.write(w, bytes([_errno_of(_LIBC.unshare(f)) & 0xFF]))
        return 0

    try:
        status = in_child(child)
    finally:
        os.close(w)
    with os.fdopen(r, "rb") as f:
        got: list[int | str] = list(f.read())
    return got + [status if isinstance(status, str) else "no answer"] * (len(flags) - len(got))


# --- the diagnosis ---------------------------------------------------------------------------

@dataclass
class Refusal:
    """The layers that refuse namespaces here: why each does, and each one's fix."""

    why: dict[str, str]
    fixes: dict[str, str]

    @property
    def layers(self) -> list[str]:
        """The refusing layers, in the order the kernel asks them."""
        return list(self.why)

    @property
    def fix(self) -> str:
        """What to do, in one sentence (one option opens both seccomp and capabilities)."""
        fixes = list(self.fixes.values())
        if fixes[:2] == [FIX_SECCOMP, FIX_CAPS]:
            fixes[:2] = [FIX_BOTH]
        return "; ".join(fixes)

    def without(self, layer: str) -> "Refusal | None":
        """The refusal for a call ``layer`` does not judge (capabilities: a user namespace
        needs none), or None if no other layer refuses."""
        why = {k: v for k, v in self.why.items() if k != layer}
        return Refusal(why, {k: v for k, v in self.fixes.items() if k != layer}) if why else None

    def __str__(self) -> str:
        return "refused by " + " and ".join(f"{layer} ({why})" for layer, why in self.why.items())


def _filter_words(refused: dict[str, str]) -> str:
    by_answer: dict[str, list[str]] = {}
    for name, answer in refused.items():
        shown = "clone with namespace flags" if name == "clone" else name
        by_answer.setdefault(answer, []).append(shown)
    return "; ".join(f"{', '.join(names)}: {answer}" for answer, names in by_answer.items())


def _caps_words() -> tuple[str, str]:
    """Why CAP_SYS_ADMIN is missing, and the fix."""
    if has_cap("cap_sys_admin", "CapBnd"):
        return "CAP_SYS_ADMIN is not effective, though in the bounding set", FIX_DROPPED
    return "no CAP_SYS_ADMIN, not even in the bounding set", FIX_CAPS


def diagnose(attempt: int | str | None = None,
             refused: dict[str, str] | None = None) -> Refusal | None:
    """Which layer refuses this process the namespaces a recipe run as root makes; None if
    none does. ``attempt`` is the errno of an unshare already tried, ``refused`` what
    :func:`filtered_calls` found (else each is tried here, in children). Where every fact is
    clean (no filter, CAP_SYS_ADMIN effective, the host's user namespace) nothing is
    forked: nothing of those layers can refuse."""
    userns = user_namespace()
    sys_admin = has_cap("cap_sys_admin")
    if seccomp_mode() == 0 and sys_admin and userns.initial:
        return None
    if attempt is None:
        attempt = try_unshare()
    if refused is None:
        refused = filtered_calls()
    if attempt not in (errno.EPERM, errno.EACCES) and not blocks_namespaces(refused):
        return None     # made (or refused for another reason, a limit): no layer refuses
    why: dict[str, str] = {}
    fixes: dict[str, str] = {}
    if blocks_namespaces(refused):
        why["seccomp"] = f"Seccomp: 2, a filter answers {_filter_words(refused)}"
        fixes["seccomp"] = FIX_SECCOMP
    if not sys_admin:
        why["capabilities"], fixes["capabilities"] = _caps_words()
    if not userns.initial:
        why["the user namespace"] = f"uid {os.geteuid()} here is root of {userns.describe()}"
        fixes["the user namespace"] = FIX_USERNS
    if not why:
        why["an LSM"] = (f"unshare: {errno_name(attempt)} with CAP_SYS_ADMIN and no filter; "
                         f"LSMs: {','.join(lsms() or []) or 'unknown'}")
        fixes["an LSM"] = FIX_LSM
    return Refusal(why, fixes)


def user_namespace_hint() -> str | None:
    """For uid 0 in a user namespace: a hint that says so (None in the initial one)."""
    userns = user_namespace()
    if userns.initial:
        return None
    return (f"uid {os.geteuid()} here is root of {userns.describe()}: the kernel refuses it "
            f"what needs the host's root; {FIX_USERNS}")

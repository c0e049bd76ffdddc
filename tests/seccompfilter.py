"""A seccomp filter like Docker's default profile, as far as namespaces go, loaded through
libseccomp with ctypes (what the pyseccomp package does; Debian's python3-seccomp is built
for /usr/bin/python3 only, and the tests also load the filter into a forked child of the
venv's Python, where starting a new interpreter would cost a VM under emulation seconds).

The filter refuses unshare, setns, mount, umount2 and pivot_root with EPERM, clone with any
namespace flag with EPERM, and clone3 with ENOSYS (so that glibc falls back to clone and
fork still works), as Docker's default profile does for a container without CAP_SYS_ADMIN;
every other call is allowed. A loaded filter stays for the process and all it starts.

:func:`drop_caps` is the other half of a container started without ``--privileged``: the
capabilities it lacks, gone from the bounding set and from every set of the process.
"""
from __future__ import annotations

import ctypes
import errno

#: clone(2) flags of the eight namespace types (linux/sched.h)
NAMESPACE_FLAGS = (0x00000080, 0x00020000, 0x02000000, 0x04000000, 0x08000000, 0x10000000,
                   0x20000000, 0x40000000)
ACT_ALLOW = 0x7FFF0000
CMP_MASKED_EQ = 7
#: which filter: Docker's (default), one that lets unshare through, one that answers clone3 only
KINDS = ("docker", "allow-unshare", "only-clone3")


class ArgCmp(ctypes.Structure):
    """struct scmp_arg_cmp: (arg & datum_a) == datum_b for SCMP_CMP_MASKED_EQ."""

    _fields_ = [("arg", ctypes.c_uint), ("op", ctypes.c_int), ("datum_a", ctypes.c_uint64),
                ("datum_b", ctypes.c_uint64)]


def _act_errno(err: int) -> int:
    return 0x00050000 | (err & 0xFFFF)


def load(kind: str = "docker") -> None:
    """Load the filter ``kind`` into this process (libseccomp sets no_new_privs first)."""
    lib = ctypes.CDLL("libseccomp.so.2", use_errno=True)
    lib.seccomp_init.restype = ctypes.c_void_p
    lib.seccomp_init.argtypes = [ctypes.c_uint32]
    lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
    lib.seccomp_rule_add_array.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int,
                                           ctypes.c_uint, ctypes.POINTER(ArgCmp)]
    lib.seccomp_load.argtypes = [ctypes.c_void_p]
    lib.seccomp_release.argtypes = [ctypes.c_void_p]
    ctx = lib.seccomp_init(ACT_ALLOW)

    def rule(action: int, name: str, *cmps: ArgCmp) -> None:
        nr = lib.seccomp_syscall_resolve_name(name.encode())
        array = (ArgCmp * len(cmps))(*cmps) if cmps else None
        if lib.seccomp_rule_add_array(ctx, action, nr, len(cmps), array) != 0:
            raise OSError(f"seccomp_rule_add {name} failed")

    if kind != "only-clone3":
        for name in ["setns", "mount", "umount2", "pivot_root"] + (
                [] if kind == "allow-unshare" else ["unshare"]):
            rule(_act_errno(errno.EPERM), name)
        for flag in NAMESPACE_FLAGS:
            rule(_act_errno(errno.EPERM), "clone", ArgCmp(0, CMP_MASKED_EQ, flag, flag))
    rule(_act_errno(errno.ENOSYS), "clone3")
    try:
        if lib.seccomp_load(ctx) != 0:
            raise OSError("seccomp_load failed")
    finally:
        lib.seccomp_release(ctx)


PR_CAPBSET_DROP = 24
CAPABILITY_VERSION_3 = 0x20080522


def drop_caps(*caps: int) -> None:
    """Take ``caps`` (numbers: 21 is CAP_SYS_ADMIN) out of this process's bounding,
    effective, permitted and inheritable sets: for good, as in a container without them."""
    libc = ctypes.CDLL(None, use_errno=True)
    header = (ctypes.c_uint32 * 2)(CAPABILITY_VERSION_3, 0)
    data = (ctypes.c_uint32 * 6)()            # {effective, permitted, inheritable} x 2 words
    if libc.capget(header, data) != 0:
        raise OSError(ctypes.get_errno(), "capget")
    for cap in caps:
        if libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")
        for field in range(3):
            data[field + 3 * (cap // 32)] &= ~(1 << cap % 32)
    if libc.capset(header, data) != 0:
        raise OSError(ctypes.get_errno(), "capset")

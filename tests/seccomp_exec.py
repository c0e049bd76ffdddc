#!/usr/bin/python3
"""Run a command under a seccomp filter like Docker's default profile, as far as namespaces go.

    /usr/bin/python3 tests/seccomp_exec.py [--allow-unshare|--only-clone3] -- COMMAND [ARG...]

The filter refuses unshare, setns, mount, umount2 and pivot_root with EPERM, clone with any
namespace flag with EPERM, and clone3 with ENOSYS (so that glibc falls back to clone and
fork still works), as Docker's default profile does for a container without CAP_SYS_ADMIN;
every other system call is allowed. ``--allow-unshare`` leaves unshare alone (a filter that
refuses only mount, setns and clone); ``--only-clone3`` refuses clone3 alone (a filter that
blocks nothing nsrecipes needs: glibc falls back to clone). The filter is loaded into this process and kept
across the exec (the kernel never removes a seccomp filter), so COMMAND and all its
children run under it.

Debian's python3-seccomp (libseccomp's binding) is built for the system Python only: run
this file with /usr/bin/python3, not the venv's interpreter.
"""
from __future__ import annotations

import errno
import os
import sys

import seccomp

#: clone(2) flags of the eight namespace types (linux/sched.h)
NAMESPACE_FLAGS = (0x00000080, 0x00020000, 0x02000000, 0x04000000, 0x08000000, 0x10000000,
                   0x20000000, 0x40000000)


def load_filter(allow_unshare: bool, only_clone3: bool) -> None:
    """Load the filter into this process (libseccomp sets no_new_privs first)."""
    f = seccomp.SyscallFilter(defaction=seccomp.ALLOW)
    refused = [] if only_clone3 else ["setns", "mount", "umount2", "pivot_root"] + (
        [] if allow_unshare else ["unshare"])
    for name in refused:
        f.add_rule(seccomp.ERRNO(errno.EPERM), name)
    for flag in () if only_clone3 else NAMESPACE_FLAGS:
        f.add_rule(seccomp.ERRNO(errno.EPERM), "clone", seccomp.Arg(0, seccomp.MASKED_EQ, flag, flag))
    f.add_rule(seccomp.ERRNO(errno.ENOSYS), "clone3")
    f.load()


def main(argv: list[str]) -> None:
    options = argv[:argv.index("--")]
    command = argv[argv.index("--") + 1:]
    load_filter("--allow-unshare" in options, "--only-clone3" in options)
    os.execvp(command[0], command)


if __name__ == "__main__":
    main(sys.argv[1:])

#!/usr/bin/env python3
"""Run a command under a seccomp filter like Docker's default profile (tests/seccompfilter.py).

    python3 tests/seccomp_exec.py [--allow-unshare|--only-clone3] -- COMMAND [ARG...]

``--allow-unshare`` leaves unshare alone (a filter that refuses only mount, setns and
clone); ``--only-clone3`` answers clone3 alone (a filter that blocks nothing nsrecipes needs:
glibc falls back to clone). The filter is loaded into this process and kept across the exec
(the kernel never removes a seccomp filter), so COMMAND and all its children run under it.
"""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import seccompfilter  # noqa: E402


def main(argv: list[str]) -> None:
    options = argv[:argv.index("--")]
    command = argv[argv.index("--") + 1:]
    kind = next((o[2:] for o in options if o[2:] in seccompfilter.KINDS), "docker")
    seccompfilter.load(kind)
    os.execvp(command[0], command)


if __name__ == "__main__":
    main(sys.argv[1:])

"""Environments without root: ids beyond the user's own, as rootless podman maps them.

The kernel lets a user write a uid_map of one line with their own uid only. More ids need
CAP_SETUID in the parent user namespace, which the setuid-root helpers ``newuidmap`` and
``newgidmap`` (Debian's ``uidmap`` package) have: they write a map whose ranges lie in the
user's ranges in ``/etc/subuid`` and ``/etc/subgid`` (lines ``NAME:START:COUNT``, NAME a user
name or uid), or map the user's own id. No system call does that for a user: both backends
run the helpers.
"""
from __future__ import annotations

import os

from nsutil import idmap
from nsutil import programs
from nsutil.errors import NsrError

#: which file holds the user's ranges, and which helper writes the map
FILES = {"uid": "/etc/subuid", "gid": "/etc/subgid"}
HELPERS = {"uid": "newuidmap", "gid": "newgidmap"}


def _names(uid: int) -> set[str]:
    """How /etc/subuid may name the user: the uid, or the user name."""
    import pwd
    try:
        return {str(uid), pwd.getpwuid(uid).pw_name}
    except KeyError:
        return {str(uid)}


def user_name(uid: int) -> str:
    """The user's name (the uid when it has none), as ``usermod`` takes it."""
    return max(_names(uid), key=lambda n: not n.isdigit())


def ranges(which: str, uid: int) -> list[tuple[int, int]]:
    """The (start, count) ranges of user ``uid`` in /etc/subuid (``which="uid"``) or
    /etc/subgid; [] when the file is missing or names none."""
    names = _names(uid)
    found = []
    try:
        with open(FILES[which]) as f:
            lines = f.read().splitlines()
    except OSError:
        return []
    for line in lines:
        parts = line.strip().split(":")
        if len(parts) == 3 and parts[0] in names and parts[1].isdigit() and parts[2].isdigit():
            found.append((int(parts[1]), int(parts[2])))
    return found


def _covered(m: idmap.IdMap, own: int, mine: list[tuple[int, int]]) -> bool:
    if m.outside == own and m.count == 1:
        return True
    return any(start <= m.outside and m.outside + m.count <= start + count
               for start, count in mine)


def refusal(which: str, maps: list[idmap.IdMap], own: int, uid: int) -> NsrError | None:
    """Why ``newuidmap``/``newgidmap`` cannot write ``maps`` for user ``uid`` (whose own id
    of this kind is ``own``): the helper is missing, /etc/sub{which} has no range for the
    user, or a range lies outside theirs. None when it can."""
    spec = ",".join(m.spec() for m in maps)
    mine = ranges(which, uid)
    name = user_name(uid)
    if not mine:
        return NsrError(f"--{which}-map {spec}: ids beyond your own {which} {own} need a range "
                        f"of {name}'s in {FILES[which]}, and there is none",
                        hint=f"sudo usermod --add-sub{which}s 100000-165535 {name} (and "
                             f"--add-sub{'gid' if which == 'uid' else 'uid'}s), then map "
                             f"e.g. 0:{own}:1,1:100000:65536; or run as root")
    outside = [m.spec() for m in maps if not _covered(m, own, mine)]
    if outside:
        have = ", ".join(f"{s}-{s + c - 1}" for s, c in mine)
        which_ones = "it" if len(outside) == len(maps) else ", ".join(outside)
        return NsrError(f"--{which}-map {spec}: {which_ones} lies outside your own "
                        f"{which} {own} and your {FILES[which]} ranges ({have})",
                        hint="map only ids of those ranges, or run as root")
    if programs.which(HELPERS[which]) is None:
        return NsrError(f"--{which}-map {spec}: ids beyond your own {which} need "
                        f"{HELPERS[which]}, which is not installed",
                        hint="sudo apt-get install uidmap")
    return None


def helper_argv(which: str, pid: int | str, maps: list[idmap.IdMap]) -> list[str]:
    """``newuidmap PID INSIDE OUTSIDE COUNT ...`` (or newgidmap)."""
    return [HELPERS[which], str(pid)] + [str(v) for m in maps
                                         for v in (m.inside, m.outside, m.count)]


def run_helper(argv: list[str]) -> None:
    """Run newuidmap/newgidmap; its complaint becomes one line (:class:`CommandError`)."""
    import subprocess
    from nsutil.errors import CommandError
    done = subprocess.run(argv, capture_output=True, text=True, env=dict(os.environ))
    if done.returncode:
        raise CommandError(argv, done.returncode, done.stderr)

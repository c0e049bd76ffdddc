"""Without root: whether a run is rootless, where its records live, and whether the kernel
lets this user make a user namespace at all.

A run is *rootless* when nsrecipes starts with an effective uid other than 0 (or inside a
user namespace it made itself for such a user, marked by ``NSR_ROOTLESS_UID``). It is
decided once, like the backend (:func:`decide`), and carried by the Runner; the recipes do
not ask it at every step.

Rootless, every other namespace is owned by a user namespace made first, the user mapped
to root inside (``unshare --user --map-root-user``), as bubblewrap, podman and ``unshare -r``
do. The user cannot write /run, so records live under ``$XDG_RUNTIME_DIR/nsrecipes``, or
``/tmp/nsrecipes-UID`` (made 0700, refused when another user owns it) where
``XDG_RUNTIME_DIR`` is unset.

Kernels and distributions can refuse unprivileged user namespaces; :func:`userns_refusal`
names the setting and the fix in one line:

- Ubuntu 23.10+: ``kernel.apparmor_restrict_unprivileged_userns=1`` (AppArmor);
- any kernel: ``user.max_user_namespaces=0``;
- Debian before 11 (a Debian patch): ``kernel.unprivileged_userns_clone=0``.
"""
from __future__ import annotations

import os
import stat
from functools import lru_cache

from . import syscalls
from .errors import NsrError, SyscallError

#: set in a process nsrecipes re-executed inside a user namespace of its own: the uid outside
ROOTLESS_ENV = "NSR_ROOTLESS_UID"

#: the sysctls that refuse user namespaces, their file, the value that refuses, and the fix
SYSCTLS: tuple[tuple[str, str, str, str], ...] = (
    ("kernel.apparmor_restrict_unprivileged_userns",
     "/proc/sys/kernel/apparmor_restrict_unprivileged_userns", "1",
     "sudo sysctl -w kernel.apparmor_restrict_unprivileged_userns=0 (or an AppArmor profile "
     "that allows userns for python3), or run as root"),
    ("user.max_user_namespaces", "/proc/sys/user/max_user_namespaces", "0",
     "sudo sysctl -w user.max_user_namespaces=15000, or run as root"),
    ("kernel.unprivileged_userns_clone", "/proc/sys/kernel/unprivileged_userns_clone", "0",
     "sudo sysctl -w kernel.unprivileged_userns_clone=1, or run as root"),
)


class UsernsRefused(NsrError):
    """Without root, the kernel refuses this user a user namespace (a sysctl says so)."""

    def __init__(self, what: str, setting: str, fix: str):
        self.setting = setting
        super().__init__(f"{what}: the kernel refuses user namespaces to uid {outside_uid()} "
                         f"({setting})", hint=fix)


def outside_uid() -> int:
    """The uid this user has outside every user namespace nsrecipes made (the real user)."""
    value = os.environ.get(ROOTLESS_ENV, "")
    return int(value) if value.isdigit() else os.geteuid()


def outside_gid() -> int:
    """The gid that goes with :func:`outside_uid` (``NSR_ROOTLESS_GID``, else the egid)."""
    value = os.environ.get("NSR_ROOTLESS_GID", "")
    return int(value) if value.isdigit() else os.getegid()


def decide() -> bool:
    """Whether this run is rootless: started by a uid other than 0, or re-executed by
    nsrecipes inside a user namespace of its own for such a user."""
    return os.geteuid() != 0 or os.environ.get(ROOTLESS_ENV, "").isdigit()


def runtime_dir() -> str:
    """The rootless state directory's path: ``$XDG_RUNTIME_DIR/nsrecipes`` when that is a
    directory the user owns, else ``/tmp/nsrecipes-UID`` (not created here)."""
    uid = outside_uid()
    xdg = os.environ.get("XDG_RUNTIME_DIR", "")
    if xdg and os.path.isabs(xdg):
        try:
            st = os.stat(xdg)
        except OSError:
            st = None
        if st is not None and stat.S_ISDIR(st.st_mode) and st.st_uid == os.geteuid():
            return os.path.join(xdg, "nsrecipes")
    return f"/tmp/nsrecipes-{uid}"


def check_owned(path: str) -> None:
    """Refuse a rootless state directory that another user owns or others can write (a
    ``/tmp/nsrecipes-UID`` made by someone else first would let them read or plant records)."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise SyscallError.from_oserror(f"stat({path!r})", exc) from None
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o022:
        raise NsrError(f"{path} is not a directory of uid {os.geteuid()}'s own "
                       f"(owner uid {st.st_uid}, mode {stat.S_IMODE(st.st_mode):o})",
                       hint="set XDG_RUNTIME_DIR to a directory of your own, or NSR_STATE_DIR")


def read_setting(path: str) -> str | None:
    """A /proc/sys (or other one-line) file's value, stripped; None where it cannot be read."""
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def refusing_sysctl() -> tuple[str, str] | None:
    """The sysctl that refuses unprivileged user namespaces here, as (``name=value``, fix);
    None when none of them does."""
    for name, path, refuses, fix in SYSCTLS:
        if read_setting(path) == refuses:
            return f"{name}={refuses}", fix
    return None


@lru_cache(maxsize=1)
def userns_allowed() -> bool:
    """Whether this process may make a user namespace: tried in a forked child, so nothing
    here changes."""
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            syscalls.unshare(syscalls.CLONE_NEWUSER)
        except (OSError, NsrError):
            code = 1
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status) == 0


def userns_refusal(what: str) -> UsernsRefused | None:
    """The error to raise when this user cannot make a user namespace (naming the sysctl
    that refuses it, or the kernel's own limit when none does); None when it can."""
    if userns_allowed():
        return None
    found = refusing_sysctl()
    if found is None:
        found = ("user namespaces refused (no known sysctl says why: a seccomp filter or LSM?)",
                 "see `invoke doctor`, or run as root")
    return UsernsRefused(what, *found)


def require_userns(what: str) -> None:
    """Rootless: raise :class:`UsernsRefused` before anything is made when the kernel refuses
    this user a user namespace."""
    refusal = userns_refusal(what)
    if refusal is not None:
        raise refusal


def require_namespaces(what: str) -> None:
    """Before anything is made: as root, :func:`errors.require_root` (a layer that refuses
    namespaces is named); rootless, :func:`require_userns`. For the tasks that work both ways."""
    from .errors import require_root
    if decide():
        require_userns(what)
    else:
        require_root(what)


#: what ``unshare`` is given first without root: a user namespace, the user mapped to root
UNSHARE_OPTIONS = ("--user", "--map-root-user")
#: what ``nsenter`` is given first to join a rootless holder: its user namespace, keeping the
#: uid and gid the holder's map gives this user (0 inside) instead of switching to them
NSENTER_OPTIONS = ("--user", "--preserve-credentials")


def become_root_in_userns() -> None:
    """In this (single-threaded, usually a freshly forked) process: make a user namespace and
    map this user to root in it, as ``unshare --user --map-root-user`` does: unshare(2)
    CLONE_NEWUSER, then ``deny`` to setgroups and ``0 UID 1`` / ``0 GID 1`` as the maps.
    Every namespace made afterwards is owned by it."""
    from . import idmap
    uid, gid = os.geteuid(), os.getegid()
    syscalls.unshare(syscalls.CLONE_NEWUSER)
    idmap.write_uid_map("self", [idmap.IdMap(0, uid, 1)])
    idmap.deny_setgroups("self")
    idmap.write_gid_map("self", [idmap.IdMap(0, gid, 1)])


def owner_line(uid: int | None = None) -> str:
    """The line a rootless run prints first: which outside uid is "root" here."""
    uid = outside_uid() if uid is None else uid
    try:
        import pwd
        name = f" ({pwd.getpwuid(uid).pw_name})"
    except KeyError:
        name = ""
    return (f"without root: a user namespace comes first; root inside it is uid {uid}{name} "
            f"outside, and every other namespace belongs to it")

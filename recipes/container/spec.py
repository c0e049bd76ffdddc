"""What a container is asked to be: every option of ``container-run``, validated into a
:class:`Spec` before anything is made (each bad value is one line naming the option).

The options runc, bubblewrap and ``docker run`` users reach for: limits (``--pids max`` is
no limit), ``--timeout`` (as ``nsjail -t``), ``--volume SRC:DST[:ro]`` (recursive binds),
``--tmpfs DST[:size=..,mode=..,ro]``, ``--read-only``, ``--hostname``/``--domainname``,
``--env KEY=VAL``, ``--workdir DIR`` and ``--user UID[:GID]``.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Callable, Sequence

from nsutil.errors import CommandNotFound, InvalidInput, NotFound, NsrError
from nsutil.limits import Limits, parse_number, parse_pids, parse_tmpfs_size
from nsutil.names import (PREFIX, check_domainname, check_hostname, check_id,
                          check_name, scope_id)

from recipes.common.userns import IdPlan
from recipes.container import rootfs as rootfs_recipe

PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
#: the processes a container is made of before its command starts any: PID 1 and the command
MIN_PIDS = 2
#: --timeout: at least 10 ms, at most a week
TIMEOUT_RANGE = (0.01, 604800)
#: container paths that nsrecipes mounts itself: no volume or tmpfs may cover them
RESERVED = ("/", "/proc", "/dev")
_ENV_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class CommandNotExecutable(NsrError):
    """The command exists in the rootfs but cannot be executed (exit status 126)."""

    exit_code = 126


class ContainerTimeout(NsrError):
    """The container ran past ``--timeout`` and was killed (exit status 137, as ``nsjail -t``)."""

    exit_code = 137


class ContainerOOM(NsrError):
    """The kernel's OOM killer killed the container's command (exit status 137, as Docker)."""

    exit_code = 137


@dataclass
class Volume:
    """``--volume SRC:DST[:ro]``: a recursive bind of a host path (read-only: every submount)."""

    source: str
    target: str
    readonly: bool = False


@dataclass
class Tmpfs:
    """``--tmpfs DST[:size=..,mode=..,ro]``: an empty tmpfs inside the container."""

    target: str
    size: str | None = None
    mode: str = "1777"
    readonly: bool = False

    def options(self) -> str:
        """The tmpfs's mount data (``mode=1777,size=64m``)."""
        return f"mode={self.mode}" + (f",size={self.size}" if self.size else "")


@dataclass
class User:
    """``--user UID[:GID]``: who the command runs as (gid from the rootfs's /etc/passwd when
    only a uid is given and it is listed there, else the same number as the uid)."""

    uid: int
    gid: int | None = None
    home: str = "/"


@dataclass
class Spec:
    """What to run and how; build it with :func:`make_spec` (which validates everything)."""

    argv: list[str]
    rootfs: str | None
    limits: Limits = field(default_factory=Limits)
    hostname: str | None = None
    net: bool = False
    rm: bool = True
    name: str = ""
    command_path: str | None = None   #: argv[0] resolved inside the rootfs
    domainname: str | None = None
    timeout: float | None = None      #: seconds
    volumes: list[Volume] = field(default_factory=list)
    tmpfs: list[Tmpfs] = field(default_factory=list)
    read_only: bool = False
    env: dict[str, str] = field(default_factory=dict)   #: --env, over the defaults
    workdir: str | None = None
    user: User | None = None
    #: --image: the overlay's lower directories (top first) and the directory the mount runs
    #: in (relative short links), instead of ``rootfs`` as the one lower
    lowers: list[str] | None = None
    lowers_cwd: str | None = None
    #: how the lowers reach the kernel: "paths", "short links" or "fsconfig lowerdir+"
    lowers_via: str = "paths"
    #: --image: the image's id (its config's digest) and the name it was asked by
    image_id: str | None = None
    image_name: str | None = None
    #: without root: the maps of the container's user namespace (None: as root, no userns)
    ids: IdPlan | None = None

    @property
    def path(self) -> str:
        """The command's PATH (``--env PATH=...`` or the default)."""
        return self.env.get("PATH", PATH)

    def mounts(self) -> list[Volume | Tmpfs]:
        """Volumes and tmpfs mounts, parents before what is mounted inside them."""
        return sorted([*self.volumes, *self.tmpfs], key=lambda m: m.target.count("/"))

    def environ(self) -> dict[str, str]:
        """The command's environment: PATH, HOME, HOSTNAME, TERM, container, then --env."""
        home = self.user.home if self.user else "/root"
        return {"PATH": PATH, "HOME": home, "HOSTNAME": self.hostname or self.name,
                "TERM": os.environ.get("TERM", "xterm"), "container": "nsrecipes", **self.env}


# --- one parser per option ------------------------------------------------------------------

def parse_container_pids(text: str | int | None) -> int | None:
    """``--pids N`` (at least :data:`MIN_PIDS`) or ``max`` (no limit); None: not given."""
    if text in (None, ""):
        return None
    value = parse_pids(text, allow_max=True)
    if value is not None and value < MIN_PIDS:
        raise InvalidInput(f"--pids {value} is too small: the container itself needs {MIN_PIDS} "
                           "processes (its PID 1 and the command)",
                           hint=f"write --pids {MIN_PIDS} or more (one more for each process the "
                                "command starts), or --pids max for no limit")
    return value


def parse_timeout(text: str | float | None) -> float | None:
    """``--timeout SECONDS`` (0.01 .. one week); None: no timeout."""
    if text in (None, ""):
        return None
    low, high = TIMEOUT_RANGE
    return float(parse_number(text, "--timeout", kind=float, minimum=low, maximum=high,
                              example="10 or 0.5"))


def check_target(path: str, what: str) -> str:
    """A mount target inside the container: absolute, normalised, not / /proc /dev."""
    if not path.startswith("/"):
        raise InvalidInput(f"{what} target {path!r} is not an absolute path",
                           hint="write the path the container sees, e.g. /data")
    target = os.path.normpath(path).replace("//", "/")
    if target in RESERVED or target.startswith("/proc/"):
        raise InvalidInput(f"{what} target {target} would cover the container's own {target}",
                           hint="pick another directory, e.g. /data")
    return target


def parse_volume(text: str) -> Volume:
    """``SRC:DST[:ro|rw]``; SRC must exist on the host."""
    parts = text.split(":")
    if len(parts) not in (2, 3) or not all(parts[:2]):
        raise InvalidInput(f"--volume {text!r} is not SRC:DST[:ro]",
                           hint="e.g. --volume /srv/data:/data:ro "
                                "(a path with ':' cannot be given)")
    mode = parts[2] if len(parts) == 3 else "rw"
    if mode not in ("ro", "rw"):
        raise InvalidInput(f"--volume {text!r} has the unknown option {mode!r}",
                           hint="write :ro for read-only, :rw or nothing for read-write")
    source = os.path.abspath(parts[0])
    if not os.path.exists(source):
        raise NotFound(f"--volume source {source} does not exist",
                       hint="a volume binds an existing host file or directory: create it first")
    return Volume(source, check_target(parts[1], "--volume"), mode == "ro")


def parse_tmpfs(text: str) -> Tmpfs:
    """``DST[:size=SIZE,mode=OCTAL,ro]``."""
    target, _, opts = text.partition(":")
    mount = Tmpfs(check_target(target, "--tmpfs"))
    for opt in filter(None, opts.split(",")):
        key, _, value = opt.partition("=")
        if key == "size" and value:
            mount.size = parse_tmpfs_size(value, f"--tmpfs {mount.target} size")
        elif key == "mode" and re.fullmatch(r"[0-7]{3,4}", value):
            mount.mode = value
        elif opt in ("ro", "rw"):
            mount.readonly = opt == "ro"
        else:
            raise InvalidInput(f"--tmpfs {text!r}: option {opt!r} is not known",
                               hint="write size=SIZE (e.g. 64m or 50%), mode=OCTAL (e.g. 1777) "
                                    "or ro, separated by ','")
    return mount


def parse_env(items: Sequence[str]) -> dict[str, str]:
    """``KEY=VALUE`` items, in order (a later KEY wins)."""
    env: dict[str, str] = {}
    for item in items:
        key, eq, value = item.partition("=")
        if not eq or not _ENV_KEY.fullmatch(key) or "\0" in value:
            raise InvalidInput(f"--env {item!r} is not KEY=VALUE",
                               hint="KEY is letters, digits and '_', not starting with a digit; "
                                    "e.g. --env LANG=C.UTF-8")
        env[key] = value
    return env


def parse_workdir(text: str | None) -> str | None:
    """``--workdir DIR``: an absolute path inside the container (made if missing, as docker)."""
    if text in (None, ""):
        return None
    if not text.startswith("/") or "\0" in text:
        raise InvalidInput(f"--workdir {text!r} is not an absolute path",
                           hint="write the directory as the container sees it, e.g. /srv")
    return os.path.normpath(text).replace("//", "/")


def parse_user(text: str | int | None) -> User | None:
    """``--user UID[:GID]``, numbers only (names would need the rootfs's /etc/passwd)."""
    if text in (None, ""):
        return None
    uid, sep, gid = str(text).partition(":")
    if sep and not gid:
        raise InvalidInput(f"--user {text!r} has an empty gid",
                           hint="write UID or UID:GID, e.g. 1000:1000")
    return User(int(check_id(uid, what="--user uid")),
                int(check_id(gid, what="--user gid")) if sep else None)


def _check_unique(mounts: list[Volume | Tmpfs]) -> None:
    seen: set[str] = set()
    for m in mounts:
        if m.target in seen:
            raise InvalidInput(f"two mounts on {m.target}",
                               hint="give each --volume/--tmpfs its own target")
        seen.add(m.target)


def _check_name(name: str | None) -> str:
    name = name or f"{PREFIX}-c-{scope_id()}"
    if not name.startswith(f"{PREFIX}-c-"):
        raise InvalidInput(f"container name {name!r} must start with {PREFIX}-c-",
                           hint=f"e.g. {PREFIX}-c-web")
    return check_name(name, what="container name", max_bytes=40)


def make_spec(argv: Sequence[str], rootfs: str | None = None, memory: str | int | None = None,
              pids: str | int | None = None, cpus: str | float | None = None,
              hostname: str | None = None, net: bool = False, rm: bool = True,
              name: str | None = None, *, domainname: str | None = None,
              timeout: str | float | None = None, volumes: Sequence[str] = (),
              tmpfs: Sequence[str] = (), read_only: bool = False, env: Sequence[str] = (),
              workdir: str | None = None, user: str | int | None = None) -> Spec:
    """Validate everything a user gave (nothing is created here)."""
    argv = [str(a) for a in argv]
    if not argv or not argv[0]:
        raise InvalidInput("no command given", hint="write the command after --, e.g. -- sh -c 'echo hi'")
    limits = Limits.parse(memory, None, cpus)
    limits.pids = parse_container_pids(pids)
    if hostname is not None:
        check_hostname(hostname)
    spec = Spec(argv, None, limits, hostname, net, rm, _check_name(name),
                domainname=check_domainname(domainname) if domainname is not None else None,
                timeout=parse_timeout(timeout), volumes=[parse_volume(v) for v in volumes],
                tmpfs=[parse_tmpfs(t) for t in tmpfs], read_only=read_only, env=parse_env(env),
                workdir=parse_workdir(workdir), user=parse_user(user))
    _check_unique(spec.mounts())
    if rootfs is not None:
        path = rootfs_recipe.check_rootfs(rootfs)
        for ch in ",:":
            if ch in path:
                raise InvalidInput(f"rootfs path {path!r} contains {ch!r}",
                                   hint="overlayfs options cannot carry it: use another path")
        settle(spec, path)
    return spec


# --- what depends on the rootfs ----------------------------------------------------------------

Resolver = Callable[[str], "str | None"]


def settle(spec: Spec, rootfs: str, resolve: Resolver | None = None) -> None:
    """Fill in what depends on the rootfs: the command's path inside it (or raise
    :class:`CommandNotFound`, exit status 127) and the user's gid and home. ``resolve``
    finds a container path's host file (default: inside ``rootfs``; an image's layers)."""
    spec.rootfs = rootfs
    spec.command_path = find_command(rootfs, spec.argv[0], spec.path, resolve)
    if spec.user is not None:
        gid, home = passwd_entry(rootfs, spec.user.uid, resolve) or (spec.user.uid, "/")
        spec.user.gid = spec.user.gid if spec.user.gid is not None else gid
        spec.user.home = home


def passwd_entry(rootfs: str, uid: int, resolve: Resolver | None = None) -> tuple[int, str] | None:
    """(gid, home) of ``uid`` in the rootfs's /etc/passwd, None if it is not listed."""
    path = (resolve or (lambda p: rootfs_recipe.resolve_in(rootfs, p)))("/etc/passwd")
    if path is None or not os.path.isfile(path):
        return None
    try:
        with open(path, errors="replace") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    for line in lines:
        fields = line.split(":")
        if len(fields) >= 6 and fields[2] == str(uid) and fields[3].isdigit():
            return int(fields[3]), fields[5] or "/"
    return None


def find_command(rootfs: str, command: str, path: str = PATH,
                 resolve: Resolver | None = None) -> str:
    """The path inside ``rootfs`` that ``command`` resolves to (as execvp would with ``path``),
    else raise :class:`CommandNotFound` (exit status 127)."""
    resolve = resolve or (lambda p: rootfs_recipe.resolve_in(rootfs, p))
    if "/" in command:
        candidates = [command if command.startswith("/") else "/" + command]
    else:
        candidates = [f"{d}/{command}" for d in path.split(":") if d]
    for c in candidates:
        host = resolve(c)
        if host is not None and os.path.isfile(host):
            if not os.access(host, os.X_OK):
                raise CommandNotExecutable(f"{c} in the rootfs {rootfs} is not executable",
                                           hint="chmod +x it, or run it through sh")
            return c
    raise CommandNotFound(f"command {command!r} not found in the rootfs {rootfs}",
                          hint=f"searched {path if '/' not in command else command}; "
                               "the container sees only its own root filesystem")

"""A small root filesystem for containers: one static busybox and its applet links.

Docker images are root filesystems; the smallest useful one is a statically linked busybox
(Debian's ``busybox-static`` package, or the host's busybox if it is static) in ``/bin``, a
link per applet (``/bin/sh -> /bin/busybox``), empty ``/proc``, ``/dev``, ``/sys``, ``/tmp``,
and an ``/etc/passwd``. ``container-run`` without ``--rootfs`` builds one once and caches it
under ``/var/cache/nsrecipes`` (``$NSR_CACHE_DIR``; it is only ever a lower layer, so an
overlayfs there is fine); ``rootfs-busybox DIR`` builds one where you say.

Shell forms: ``mkdir -p``, ``cp``, ``chroot DIR /bin/busybox --install -s /bin`` (busybox makes
its own links; inside the chroot it falls back to argv[0] as the link target). Native forms do
the same with os.makedirs/shutil.copy2/os.symlink.
"""
from __future__ import annotations

import os
import struct
import subprocess
from typing import Any

from nsutil import rootless, state
from nsutil.backend import Runner, Step
from nsutil.errors import Conflict, InvalidInput, NotFound, NsrError, SyscallError, ToolMissing
from nsutil.programs import which

DEFAULT_CACHE_DIR = "/var/cache/nsrecipes"


def cache_dir() -> str:
    """Where the cached rootfs lives: ``$NSR_CACHE_DIR``, else /var/cache/nsrecipes -- without
    root ``$XDG_CACHE_HOME/nsrecipes`` (default ~/.cache/nsrecipes). Read at each call, so a
    script or test may point it elsewhere."""
    if os.environ.get("NSR_CACHE_DIR"):
        return os.environ["NSR_CACHE_DIR"]
    if not rootless.decide():
        return DEFAULT_CACHE_DIR
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "nsrecipes")
DIRS = ("bin", "sbin", "usr/bin", "usr/sbin", "proc", "dev", "sys", "tmp", "etc", "root", "run",
        "var/tmp")
ETC = {
    "etc/passwd": "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n",
    "etc/group": "root:x:0:\nnogroup:x:65534:\n",
    "etc/hostname": "nsr-container\n",
    "etc/hosts": "127.0.0.1 localhost\n::1 localhost\n",
}


def is_static(path: str) -> bool:
    """True if ``path`` is an ELF executable without a program interpreter (PT_INTERP)."""
    try:
        with open(path, "rb") as f:
            head = f.read(64)
            if head[:4] != b"\x7fELF" or head[4] != 2:      # ELF64 only
                return False
            endian = "<" if head[5] == 1 else ">"
            phoff, = struct.unpack(endian + "Q", head[32:40])
            phentsize, phnum = struct.unpack(endian + "HH", head[54:58])
            f.seek(phoff)
            table = f.read(phentsize * phnum)
    except OSError:
        return False
    for i in range(phnum):
        p_type, = struct.unpack(endian + "I", table[i * phentsize:i * phentsize + 4])
        if p_type == 3:  # PT_INTERP: dynamically linked
            return False
    return True


def find_busybox() -> str:
    """A statically linked busybox on this host (busybox-static's /bin/busybox first)."""
    candidates = ["/bin/busybox", "/usr/bin/busybox", which("busybox") or ""]
    for c in candidates:
        if c and os.path.isfile(c) and is_static(c):
            return os.path.realpath(c)
    if any(c and os.path.isfile(c) for c in candidates):
        raise NsrError("the host's busybox is dynamically linked",
                       hint="apt-get install busybox-static")
    raise ToolMissing("busybox", "busybox-static")


def applets(busybox: str) -> list[str]:
    """The applet names ``busybox --list`` prints."""
    out = subprocess.run([busybox, "--list"], capture_output=True, text=True, check=False)
    return [a for a in out.stdout.split() if a and "/" not in a and a != "busybox"]


def _digest(path: str) -> str:
    import hashlib     # here: 2 ms of loading OpenSSL, paid only when the digest is not known
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:12]


def _identity(path: str) -> dict[str, Any]:
    """What changes when the file at ``path`` is replaced or rewritten: its device, inode,
    size and change times (as make and git judge a file unchanged)."""
    st = os.stat(path)
    return {"path": os.path.realpath(path), "dev": st.st_dev, "ino": st.st_ino,
            "size": st.st_size, "mtime_ns": st.st_mtime_ns, "ctime_ns": st.st_ctime_ns}


def _remembered_digest(cache: str, identity: dict[str, Any]) -> str | None:
    """The digest a ``rootfs-busybox-DIGEST.source`` record in ``cache`` gives for a busybox
    of this ``identity``, if any."""
    try:
        names = os.listdir(cache)
    except OSError:
        return None
    for name in names:
        if name.startswith("rootfs-busybox-") and name.endswith(".source"):
            try:
                if state.read_json(os.path.join(cache, name)) == identity:
                    return name[len("rootfs-busybox-"):-len(".source")]
            except (OSError, ValueError):
                continue
    return None


def _remember_digest(cache: str, digest: str, identity: dict[str, Any]) -> None:
    """Write the record ``rootfs-busybox-DIGEST.source``; not at all where the cache is not
    ours to write."""
    try:
        state.atomic_write_json(os.path.join(cache, f"rootfs-busybox-{digest}.source"), identity)
    except SyscallError:
        pass


def default_path(busybox: str | None = None) -> str:
    """Where the cached rootfs for this busybox lives (keyed by the binary's hash). The hash
    of the 2 MB binary took 2-3 ms of every container-run, so it is remembered beside the
    cached rootfs (``rootfs-busybox-DIGEST.source``: which file, by device, inode, size and
    times) and taken from there while the binary is unchanged."""
    busybox = busybox or find_busybox()
    cache = cache_dir()
    identity = _identity(busybox)
    digest = _remembered_digest(cache, identity)
    if digest is None:
        digest = _digest(busybox)
        if os.path.isdir(cache):
            _remember_digest(cache, digest, identity)
    return os.path.join(cache, f"rootfs-busybox-{digest}")


def _check_dest(dest: str) -> str:
    dest = os.path.abspath(dest)
    if os.path.exists(dest) and (not os.path.isdir(dest) or os.listdir(dest)):
        raise Conflict(f"{dest} exists and is not an empty directory",
                       hint="give a new or empty directory")
    parent = os.path.dirname(dest)
    if not os.path.isdir(parent):
        raise NotFound(f"{parent} does not exist", hint="create the parent directory first")
    return dest


def _install_links(dest: str, busybox: str) -> None:
    for name in applets(busybox):
        link = os.path.join(dest, "bin", name)
        if not os.path.lexists(link):
            os.symlink("/bin/busybox", link)


def _write_etc(dest: str) -> None:
    for rel, text in ETC.items():
        with open(os.path.join(dest, rel), "w") as f:
            f.write(text)


def build(run: Runner, dest: str, busybox: str | None = None, check: bool = True) -> str:
    """Steps: build a busybox root filesystem in ``dest`` (new or empty); returns its path."""
    dest = _check_dest(dest) if check else os.path.abspath(dest)
    busybox = busybox or find_busybox()
    dirs = [os.path.join(dest, d) for d in DIRS]
    run.run(Step(f"make the directory tree of the root filesystem in {dest}",
                 argv=["mkdir", "-p"] + dirs,
                 native=lambda: [os.makedirs(d, exist_ok=True) for d in dirs] and None))
    target = os.path.join(dest, "bin", "busybox")
    import shutil    # here, as building is rare: loading it costs 1.6 ms of every command line
    run.run(Step(f"copy the static busybox ({busybox}) in",
                 argv=["cp", busybox, target], native=lambda: shutil.copy2(busybox, target) and None))
    run.run(Step("link every applet to /bin/busybox (sh, ls, ps, mount, ...)",
                 argv=(["unshare", *rootless.UNSHARE_OPTIONS, "--root", dest] if run.rootless
                       else ["chroot", dest]) + ["/bin/busybox", "--install", "-s", "/bin"],
                 native=lambda: _install_links(dest, busybox)))
    run.run(Step("write /etc/passwd, /etc/group, /etc/hostname, /etc/hosts",
                 display=f"printf 'root:x:0:0:root:/root:/bin/sh\\n...' > {dest}/etc/passwd ...",
                 native=lambda: _write_etc(dest)))
    if not run.explain:
        os.chmod(os.path.join(dest, "tmp"), 0o1777)
    return dest


def ensure_default(run: Runner) -> str:
    """The cached busybox rootfs, built (atomically: a temporary directory renamed into place)
    the first time it is needed."""
    busybox = find_busybox()
    final = default_path(busybox)
    if os.path.isfile(os.path.join(final, "bin", "busybox")):
        return final
    if run.explain:
        return build(run, final, busybox, check=False)
    import shutil    # here, as building is rare: loading it costs 1.6 ms of every command line
    os.makedirs(cache_dir(), mode=0o755, exist_ok=True)
    tmp = f"{final}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    os.mkdir(tmp, 0o755)
    try:
        build(run, tmp, busybox)
        try:
            os.rename(tmp, final)
        except OSError:
            if not os.path.isfile(os.path.join(final, "bin", "busybox")):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def _walk(rootfs: str, path: str, hops: int = 40) -> tuple[str, list[str]] | None:
    """Follow ``path`` from ``rootfs`` as a process chrooted there would (symlinks stay
    inside): (the host path of the deepest part that exists, the parts after it that do
    not); None for a symlink loop."""
    parts = [p for p in path.split("/") if p]
    current = rootfs
    while parts:
        part = parts.pop(0)
        if part == "..":
            current = os.path.dirname(current) if current != rootfs else rootfs
            continue
        if part == ".":
            continue
        candidate = os.path.join(current, part)
        if os.path.islink(candidate):
            if hops == 0:
                return None
            hops -= 1
            target = os.readlink(candidate)
            if target.startswith("/"):
                current = rootfs
            parts = [p for p in target.split("/") if p] + parts
            continue
        if not os.path.lexists(candidate):
            return current, [part] + [p for p in parts if p not in (".", "..")]
        current = candidate
    return current, []


def resolve_in(rootfs: str, path: str, hops: int = 40) -> str | None:
    """Resolve ``path`` as a process chrooted at ``rootfs`` would (symlinks stay inside);
    the host path of the file, or None if it does not exist there."""
    found = _walk(rootfs, path, hops)
    return found[0] if found is not None and not found[1] else None


def join_in(rootfs: str, path: str) -> str:
    """The host path that ``path`` inside ``rootfs`` names, symlinks resolved inside it (as
    runc's securejoin does): a missing tail is appended as is, so creating it cannot land
    outside ``rootfs`` (an absolute symlink in an image points into the image, never at
    the host's own directories)."""
    found = _walk(rootfs, path)
    if found is None:
        raise InvalidInput(f"{path} in {rootfs} is a symlink loop",
                           hint="fix the link in the rootfs")
    return os.path.join(found[0], *found[1])


def check_rootfs(rootfs: str) -> str:
    """A usable rootfs: an existing directory other than the host's /; raises otherwise.
    Nothing inside is required but the command (``find_command`` of recipes.container.spec
    checks it): mountpoints it lacks (/proc, /dev) go into the container's overlay."""
    if not rootfs:
        raise InvalidInput("the rootfs path is empty", hint="give a directory, or leave --rootfs out")
    path = os.path.abspath(rootfs)
    if not os.path.lexists(path):
        raise NotFound(f"rootfs {path} does not exist",
                       hint="build one with `invoke rootfs-busybox DIR`, or leave --rootfs out")
    if not os.path.isdir(path):
        raise InvalidInput(f"rootfs {path} is not a directory",
                           hint="give the directory of an unpacked root filesystem, "
                                "e.g. one built with `invoke rootfs-busybox DIR`")
    if os.path.realpath(path) == "/":
        raise InvalidInput("the host's / cannot be a container rootfs",
                           hint="build one with `invoke rootfs-busybox DIR`")
    return path

"""Copy-on-write with overlayfs (document: opening line, "通过写时复制机制（copy-on-write）
实现高效的文件操作").

The document's third principle, written out: an overlay mount stacks read-only *lower*
directories (the image layers; the first listed is the top one) under one writable *upper*
directory, and shows the union at *merged*. Reading finds the topmost copy of a file;
the first write to a lower file copies it up into upper ("copy-up") and changes the copy
there, so the lower layer never changes; deleting a lower file leaves a *whiteout* in upper
(a character device 0/0 of the same name) that hides it. Two containers can share the same
lower layers: each pays only for what it wrote.

The demo works in ``$TMPDIR`` (default /tmp). Where that filesystem cannot hold an upper
(an overlayfs, as /tmp is in Docker and on many CI runners; see :mod:`recipes.common.upperfs`),
each container's directory gets a tmpfs of its own for upper and work, as bubblewrap's
``--tmp-overlay`` does; the image layers stay where they are (a lower on overlayfs is fine).

Shell forms: ``mount -t overlay overlay -o lowerdir=L1:L2,upperdir=U,workdir=W MERGED``,
``mount -t tmpfs`` (only where needed), ``umount``, ``rm``, ``du -s -B1``; native: mount(2),
umount2(2), os.unlink, an inode walk.
"""
from __future__ import annotations

import os
import stat
from typing import Callable, Sequence

from nsutil import fsmount, mountinfo
from nsutil import syscalls as sc
from nsutil.backend import Runner, Step
from nsutil import shell as nshell
from nsutil.errors import CommandError, InvalidInput, NsrError, SyscallError
from nsutil.names import PREFIX, scope_id

from recipes.common import upperfs
from recipes.common import userns
from recipes.common.leftover import Leftover

SECTION = "写时复制 (copy-on-write): overlayfs"
TMP = "/tmp"


def scratch_dir() -> str:
    """Where the demo makes its directories: ``$TMPDIR``, else /tmp."""
    return os.path.abspath(os.environ.get("TMPDIR") or TMP)


# --- helpers shared with recipes.container -------------------------------------------------------


def mounts_at_or_below(path: str, fstype: str | None = None) -> list[str]:
    """Mount points (in our mount namespace) at or below ``path`` (of ``fstype`` if given)."""
    path = path.rstrip("/")
    if not mountinfo.mentions(path):     # the usual case, without parsing the table
        return []
    return [m.mount_point for m in mountinfo.read()
            if (fstype is None or m.fstype == fstype)
            and (m.mount_point == path or m.mount_point.startswith(path + "/"))]


def remove_tree(path: str) -> None:
    """Detach any mount below ``path`` (deepest first), then delete it without crossing into
    another filesystem (like ``rm -rf --one-file-system``): every directory is checked first,
    so one on another filesystem leaves everything in place; then the tree goes bottom-up,
    each link removed as a link, never followed."""
    for point in sorted(mounts_at_or_below(path), key=len, reverse=True):
        try:
            sc.umount(point, sc.MNT_DETACH)
        except SyscallError:
            pass
    try:
        top = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISDIR(top.st_mode):
        _removed(os.unlink, path)
        return
    # one walk: each entry is listed before what is below it, so the list read backwards
    # removes children before their directory
    entries: list[tuple[Callable[[str], None], str]] = []
    for root, dirs, files in os.walk(path):
        entries += [(os.unlink, os.path.join(root, name)) for name in files]
        for name in dirs:      # a link to a directory is listed here too: removed as a link
            below = os.path.join(root, name)
            st = os.lstat(below)
            if stat.S_ISLNK(st.st_mode):
                entries.append((os.unlink, below))
            elif st.st_dev != top.st_dev:
                raise NsrError(f"{below} is on another filesystem",
                               hint="unmount it first; nothing was deleted")
            else:
                entries.append((os.rmdir, below))
    for remove, entry in reversed(entries):
        _removed(remove, entry)
    _removed(os.rmdir, path)


def _removed(remove: Callable[[str], None], path: str) -> None:
    try:
        remove(path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise SyscallError.from_oserror(f"{remove.__name__}({path!r})", exc) from None


def disk_usage(*paths: str) -> int:
    """Bytes of disk ``paths`` use together, as ``du -s -c -B1`` counts them (allocated
    blocks of every file, directory and link; a hard-linked inode once)."""
    seen: set[tuple[int, int]] = set()
    total = 0
    for p in paths:
        for root, dirs, files in os.walk(p):
            entries = ([root] if root == p else []) + [os.path.join(root, n) for n in dirs + files]
            for e in entries:
                st = os.lstat(e)
                if (st.st_dev, st.st_ino) not in seen:
                    seen.add((st.st_dev, st.st_ino))
                    total += st.st_blocks * 512
    return total


def du_step(run: Runner, *paths: str, title: str | None = None) -> int:
    """Step: the disk used by ``paths`` together (``du -s -c -B1 ...``, total line)."""
    def parse(text: str) -> int:
        lines = [ln for ln in text.splitlines() if ln.strip()]
        return int(lines[-1].split()[0]) if lines else 0

    value = run.run(Step(title or f"disk used by {' '.join(paths)}",
                         argv=["du", "-s", "-c", "-B1", *paths], native=lambda: disk_usage(*paths), parse=parse,
                         placeholder=0))
    return int(value) if not run.explain else 0


# --- steps ------------------------------------------------------------------------------------

def check_overlay_path(path: str) -> str:
    """A directory usable in overlay options (no ',' ':' or whitespace); absolute."""
    path = os.path.abspath(path)
    if any(c in path for c in ",:") or any(c.isspace() for c in path):
        raise InvalidInput(f"path {path!r} contains ',', ':' or whitespace",
                           hint="overlayfs options cannot carry them: use another path")
    return path


def make_dir(run: Runner, path: str, undo: bool = True) -> str:
    """Step: make a directory we own (``mkdir``); undo: remove it and everything below."""
    def native() -> None:
        try:
            os.mkdir(path, 0o755)
        except OSError as exc:
            raise SyscallError.from_oserror(f"mkdir({path!r})", exc) from None
    run.run(Step(f"make {path}", argv=["mkdir", path], native=native,
                 undo=Step(f"remove {path}", argv=["rm", "-rf", "--one-file-system", path],
                           native=lambda: remove_tree(path)) if undo else None))
    return path


def mount_overlay(run: Runner, lowers: Sequence[str], upper: str, work: str, merged: str,
                  undo: bool = True, cwd: str | None = None, via: str = "paths") -> None:
    """Step: ``mount -t overlay overlay -o lowerdir=L1:L2,upperdir=U,workdir=W MERGED``
    (``lowers[0]`` is the top layer); undo (when asked): unmount it. With ``cwd`` the
    lowers are relative to it and the mount runs there (``cd CWD && mount ...``: short
    lowers keep a long list within the options' page). ``via`` says how the lowers reach
    the kernel (:mod:`recipes.images.lowers`): ``paths``, ``short links``, or ``fsconfig
    lowerdir+`` (native only: one ``fsconfig`` call per lower, :mod:`nsutil.fsmount`)."""
    for p in list(lowers) + [upper, work, merged]:
        check_overlay_path(p)
    if not lowers:
        raise InvalidInput("an overlay needs at least one lower directory", hint="give the image layer")
    opts = f"lowerdir={':'.join(lowers)},upperdir={upper},workdir={work}"
    if run.rootless:
        require_userxattr("an overlay without root")
        opts += ",userxattr"
    undo_step = unmount_step(merged) if undo else None

    def why() -> str:
        on = sorted({upperfs.fs_of(p).describe() for p in lowers})
        deep = ("; a lower on an overlayfs that is itself stacked on one is over the kernel's "
                "depth limit of 2" if any(d.startswith("overlay ") for d in on) else "")
        return (f"upper {upper} is on {upperfs.fs_of(upper).describe()}, lowers on "
                f"{', '.join(on)}{deep}; the kernel's reason is in `dmesg | tail`")

    def native() -> None:
        back = os.open(".", os.O_PATH | os.O_CLOEXEC) if cwd else -1
        try:
            if cwd:
                os.chdir(cwd)
            sc.mount("overlay", merged, "overlay", 0, opts)
        except SyscallError as exc:
            raise SyscallError(exc.call, exc.errno, why()) from None
        finally:
            if back >= 0:
                os.fchdir(back)
                os.close(back)

    def shell(argv: list[str]) -> None:
        back = os.open(".", os.O_PATH | os.O_CLOEXEC) if cwd else -1
        try:
            if cwd:
                os.chdir(cwd)
            nshell.run(argv)
        except CommandError as exc:
            raise CommandError(exc.argv, exc.returncode, exc.stderr, hint=why()) from None
        finally:
            if back >= 0:
                os.fchdir(back)
                os.close(back)

    if not run.explain:
        _check_upper(upper)
    if via == fsmount.VIA:
        _mount_overlay_fsconfig(run, lowers, upper, work, merged, undo_step, why)
        return
    how = (", as short links: their paths would not fit mount(2)'s one-page options"
           if via == "short links" else "")
    argv = ["mount", "-t", "overlay", "overlay", "-o", opts, merged]
    run.run(Step(f"mount an overlay on {merged} ({len(lowers)} lower layer(s){how}, writes go "
                 f"to {upper})", argv=argv, display=f"cd {cwd} && {' '.join(argv)}" if cwd else None,
                 native=native, shell=shell, undo=undo_step))


def _mount_overlay_fsconfig(run: Runner, lowers: Sequence[str], upper: str, work: str,
                            merged: str, undo_step: Step | None, why: Callable[[], str]) -> None:
    """Step (native only): the same overlay through the new mount API, each lower appended
    with ``fsconfig(fd, FSCONFIG_SET_STRING, "lowerdir+", PATH)`` (Linux 6.8+)."""
    def native() -> None:
        try:
            fsmount.mount_overlay(lowers, upper, work, merged, userxattr=bool(run.rootless))
        except SyscallError as exc:
            raise SyscallError(exc.call, exc.errno, f"{exc.hint}; {why()}" if exc.hint
                               else why()) from None

    shown = [f"fsconfig lowerdir+={p}" for p in lowers]
    if len(shown) > 3:
        shown = shown[:2] + [f"... ({len(lowers) - 3} more)", shown[-1]]
    display = "; ".join(["fsopen overlay", *shown, f"fsconfig upperdir={upper}",
                         f"fsconfig workdir={work}", *(["fsconfig userxattr"] if run.rootless else []),
                         "fsconfig create", f"fsmount; move_mount {merged}"])
    run.run(Step(f"mount an overlay on {merged} ({len(lowers)} lower layer(s) appended one by "
                 f"one with fsconfig lowerdir+: their paths would not fit mount(2)'s one-page "
                 f"options, writes go to {upper})", display=display, native=native,
                 undo=undo_step))


#: the first kernel whose overlayfs mounts in a user namespace (``userxattr``: its own
#: metadata in ``user.overlay.*`` xattrs, since ``trusted.*`` needs CAP_SYS_ADMIN on the host)
USERXATTR_KERNEL = (5, 11)


def require_userxattr(what: str, release: str | None = None) -> None:
    """Without root: refuse, in one line, a kernel older than 5.11, whose overlayfs cannot be
    mounted in a user namespace."""
    release = release or os.uname().release
    numbers = [int(x) for x in release.split("-")[0].split(".")[:2] if x.isdigit()]
    if len(numbers) == 2 and tuple(numbers) < USERXATTR_KERNEL:
        raise NsrError(f"{what}: overlayfs mounts in a user namespace (option userxattr) from "
                       f"Linux 5.11 on; this kernel is {release}",
                       hint="run it as root (sudo), or on a Linux 5.11+ kernel")


def _check_upper(upper: str) -> None:
    """Refuse, in one line, an upper the kernel would refuse with a bare EINVAL."""
    fs = upperfs.fs_of(upper)
    problem = fs.upper_problem()
    if problem is not None:
        raise NsrError(f"upper {upper} is on {fs.describe()}: {problem}",
                       errno_name="EINVAL", hint="mount a tmpfs for upper and work "
                       "(recipes.common.upperfs.mount_upper_tmpfs), or " + upperfs.FIX)


def unmount_step(merged: str) -> Step:
    """Step: unmount ``merged`` (``umount``)."""
    return Step(f"unmount {merged}", argv=["umount", merged], native=lambda: sc.umount(merged))


def write_file(run: Runner, path: str, text: str, append: bool = False) -> None:
    """Step: write ``text`` into ``path`` (shown as ``echo TEXT > PATH``)."""
    def native() -> None:
        with open(path, "a" if append else "w") as f:
            f.write(text)
    shown = text.rstrip("\n").replace("'", "'\\''")
    run.run(Step(f"write {path}", display=f"echo '{shown}' {'>>' if append else '>'} {path}",
                 native=native))


def delete_file(run: Runner, path: str) -> None:
    """Step: delete ``path`` (``rm``)."""
    run.run(Step(f"delete {path}", argv=["rm", path], native=lambda: os.unlink(path)))


def copy_tree(run: Runner, sources: Sequence[str], dest: str) -> None:
    """Step: copy directories into ``dest`` (``cp -a SRC/. DEST``), lowest layer first."""
    def native() -> None:
        import shutil     # here: loading it (and the compressors it checks for) costs 1.6 ms
        for src in sources:
            shutil.copytree(src, dest, symlinks=True, dirs_exist_ok=True)
    run.run(Step(f"copy {' + '.join(sources)} into {dest} (a full copy, no sharing)",
                 argv=["cp", "-a", *[f"{s}/." for s in sources], dest], native=native))


def is_whiteout(path: str) -> bool:
    """True if ``path`` is an overlayfs whiteout: a character device with device number 0/0."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return False
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == 0


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read()
    except FileNotFoundError:
        return None


def _fill(path: str, size: int) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        left = size
        while left > 0:
            chunk = os.urandom(min(left, 1 << 20))
            f.write(chunk)
            left -= len(chunk)


def make_image(run: Runner, base: str, lower: str, app: str, size_mb: int) -> None:
    """Steps: two image layers: ``base`` (an OS-like tree with a big file) and ``app`` on top
    (its own /etc/os-release shadows the one below)."""
    files = {f"{lower}/etc/os-release": "NAME=base-layer\n", f"{lower}/etc/hostname": "base\n",
             f"{lower}/etc/motd": "welcome from the base layer\n",
             f"{app}/etc/os-release": "NAME=app-layer\n", f"{app}/app/hello.txt": "hello\n"}

    def native() -> None:
        for path, text in files.items():
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "w") as f:
                f.write(text)
        _fill(f"{lower}/usr/lib/blob.bin", size_mb << 20)

    run.run(Step(f"fill the layers: {lower} (etc/*, usr/lib/blob.bin of {size_mb} MiB), "
                 f"{app} (etc/os-release, app/hello.txt)",
                 display=f"mkdir -p {lower}/etc {lower}/usr/lib {app}/etc {app}/app; "
                         f"echo NAME=base-layer > {lower}/etc/os-release; ...; "
                         f"head -c {size_mb}M /dev/urandom > {lower}/usr/lib/blob.bin",
                 native=native))


# --- the demo ---------------------------------------------------------------------------------

def demo(run: Runner, size_mb: int = 8) -> dict:
    """Overlay semantics and the disk saved by sharing lower layers; returns what was seen.
    Without root, all of it runs in a process that made a user namespace and a mount
    namespace first, and the overlays are mounted with ``userxattr`` (Linux 5.11+)."""
    if not isinstance(size_mb, int) or not 1 <= size_mb <= 1024:
        raise InvalidInput(f"layer size {size_mb!r} MiB is out of range", hint="use 1 to 1024")
    if run.rootless:
        require_userxattr("cow-demo without root")
        run.say_owner()        # here, before the fork: the child's steps would say it again
    return userns.in_user_and_mount_ns(run, lambda: _demo(run, size_mb), "cow-demo")


def _demo(run: Runner, size_mb: int) -> dict:
    scratch = scratch_dir()
    base = check_overlay_path(os.path.join(scratch, f"{PREFIX}-cow-{scope_id()}"))
    fs = upperfs.plan_upper(scratch)          # nothing is made if it cannot be done
    upperfs.check_lower(scratch, "the scratch directory (the image layers go there)")
    run.heading(f"{SECTION}: two image layers, two containers sharing them")
    make_dir(run, base)
    lower, app = f"{base}/lower-base", f"{base}/lower-app"
    for d in (lower, app):
        make_dir(run, d, undo=False)
    make_image(run, base, lower, app, size_mb)
    merged = {}
    for c in ("c1", "c2"):
        make_dir(run, f"{base}/{c}", undo=False)
        on_tmpfs = upperfs.mount_upper_tmpfs(run, f"{base}/{c}", fs)
        for sub in ("upper", "work", "merged"):
            make_dir(run, f"{base}/{c}/{sub}", undo=False)
        mount_overlay(run, [app, lower], f"{base}/{c}/upper", f"{base}/{c}/work", f"{base}/{c}/merged")
        merged[c] = f"{base}/{c}/merged"
    m1, up1 = merged["c1"], f"{base}/c1/upper"

    run.heading(f"{SECTION}: reading finds the top layer's copy")
    os_release = None if run.explain else _read(f"{m1}/etc/os-release")
    run.say(f"   {m1}/etc/os-release: {os_release!r} (lower-app is above lower-base)")

    run.heading(f"{SECTION}: a write copies the file up; the lower layer is unchanged")
    write_file(run, f"{m1}/etc/hostname", "container-1\n")
    write_file(run, f"{m1}/new.txt", "made in container 1\n")
    seen = {} if run.explain else {
        "merged": _read(f"{m1}/etc/hostname"), "upper": _read(f"{up1}/etc/hostname"),
        "lower": _read(f"{lower}/etc/hostname"), "new_in_upper": _read(f"{up1}/new.txt"),
        "new_in_lower": os.path.exists(f"{lower}/new.txt")}
    run.say(f"   merged: {seen.get('merged')!r}  upper: {seen.get('upper')!r}  "
            f"lower: {seen.get('lower')!r}")

    run.heading(f"{SECTION}: a delete leaves a whiteout in upper")
    delete_file(run, f"{m1}/etc/motd")
    wh = {} if run.explain else {
        "merged_has": os.path.exists(f"{m1}/etc/motd"), "whiteout": is_whiteout(f"{up1}/etc/motd"),
        "lower_has": os.path.exists(f"{lower}/etc/motd")}
    if not run.explain:
        st = os.lstat(f"{up1}/etc/motd")
        wh["mode"] = stat.filemode(st.st_mode)
        wh["rdev"] = f"{os.major(st.st_rdev)}/{os.minor(st.st_rdev)}"
        run.say(f"   merged/etc/motd exists: {wh['merged_has']}; upper/etc/motd is "
                f"{wh['mode']} {wh['rdev']} (whiteout: {wh['whiteout']}); lower still has it: "
                f"{wh['lower_has']}")
    c2 = merged["c2"]
    c2_view = None if run.explain else _read(f"{c2}/etc/motd")
    run.say(f"   container 2 still reads /etc/motd: {c2_view!r}")
    write_file(run, f"{c2}/new.txt", "made in container 2\n")

    run.heading(f"{SECTION}: disk used -- two containers sharing the layers vs two copies")
    shared = du_step(run, lower, app, f"{base}/c1/upper", f"{base}/c2/upper",
                     title="disk used by the shared layers and both uppers")
    uppers = du_step(run, f"{base}/c1/upper", f"{base}/c2/upper", title="disk used by both uppers")
    for c in ("copy1", "copy2"):
        make_dir(run, f"{base}/{c}", undo=False)
        copy_tree(run, [lower, app], f"{base}/{c}")
    copies = du_step(run, f"{base}/copy1", f"{base}/copy2", title="disk used by two full copies")
    if not run.explain:
        run.say(f"   shared layers + 2 uppers: {shared / 2**20:.1f} MiB (uppers alone "
                f"{uppers / 2**10:.0f} KiB); two copies: {copies / 2**20:.1f} MiB "
                f"({copies / max(shared, 1):.2f}x)")
        run.say(f"   measured: allocated blocks (du -B1) of the layers and copies on "
                f"{fs.describe()}" + (", and of the uppers on their tmpfs (memory pages, "
                                      "not disk)" if on_tmpfs else ""))
    run.undo()
    return {"top_lower": os_release, "write": seen, "delete": wh, "other_container": c2_view,
            "disk": {"shared": shared, "uppers": uppers, "copies": copies}, "base": base,
            "size_mb": size_mb, "uppers_on_tmpfs": on_tmpfs}


# --- leftovers --------------------------------------------------------------------------------

def leftovers() -> list[Leftover]:
    """Overlay and tmpfs mounts and directories of earlier demos (``nsr-cow-*`` in /tmp and
    in ``$TMPDIR``)."""
    found: list[Leftover] = []
    scratches = sorted({TMP, scratch_dir()})
    roots = tuple(os.path.join(d, f"{PREFIX}-cow-") for d in scratches)
    points = [m.mount_point for m in mountinfo.read()]
    for point in sorted((p for p in points if p.startswith(roots)), key=len, reverse=True):
        found.append(Leftover("mount", point, lambda p=point: _detach(p)))
    for scratch in scratches:
        for name in sorted(os.listdir(scratch)) if os.path.isdir(scratch) else []:
            path = os.path.join(scratch, name)
            if name.startswith(f"{PREFIX}-cow-") and os.path.isdir(path):
                found.append(Leftover("dir", path, lambda p=path: remove_tree(p)))
    return found


def _detach(point: str) -> None:
    try:
        sc.umount(point, sc.MNT_DETACH)
    except SyscallError as exc:
        if exc.errno not in (22, 2):   # EINVAL / ENOENT: not mounted any more
            raise

"""Where an overlay upper can live: the kernel's rule, and a tmpfs where it says no.

overlayfs (fs/overlayfs/super.c and params.c, 5.x to 6.x) refuses an upper/work pair when

* the upper's dentries have ``d_real`` -- only overlayfs sets it, so an upper on an overlayfs
  fails with "filesystem on '...' not supported as upperdir" (EINVAL). That is /tmp in
  Docker, on many CI runners and in virtme's guests;
* the upper's mount is read-only ("upper fs is r/o, try multi-lower layers mount");
* the upper is on a *remote* filesystem (its dentries revalidate: NFS, CIFS, 9p, FUSE,
  Ceph, ...) that lacks d_type, RENAME_WHITEOUT or ``trusted.overlay.*`` xattrs ("upper fs
  missing required features"); on a local filesystem the same gaps are only warnings;
* any layer is on a filesystem with case-insensitive names (``d_hash``/``d_compare``:
  vfat, exfat, hfsplus, ...): "filesystem on '...' not supported", as a lower too;
* upper and work are not on the same mount, or the stack gets deeper than 2.

A lower on overlayfs is fine. So where the scratch directory cannot hold an upper,
nsrecipes does what bubblewrap's ``--tmp-overlay`` does: it mounts a tmpfs on a directory
it made and puts upper and work there (a visible step, ``mount -t tmpfs ...``, undone by
``umount``). Where even that is impossible (a read-only directory, no tmpfs, a layer on a
case-insensitive filesystem) it says so in one line before anything is made.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

from nsutil import mountinfo
from nsutil import syscalls as sc
from nsutil.backend import Runner, Step
from nsutil.errors import NsrError
from nsutil.names import PREFIX

#: remote filesystems: overlayfs demands d_type, RENAME_WHITEOUT and trusted.* xattrs of
#: them as an upper, which these do not all give (fuse.* and fuseblk count as fuse)
REMOTE = ("nfs", "nfs4", "cifs", "smb3", "smbfs", "9p", "ceph", "fuse", "fuseblk", "virtiofs",
          "glusterfs", "afs", "lustre")
#: case-insensitive names (d_hash/d_compare): refused as any layer
CASE_INSENSITIVE = ("vfat", "msdos", "exfat", "hfsplus", "hfs")
FIX = ("point TMPDIR (and NSR_STATE_DIR) at a writable local filesystem such as ext4, xfs, "
       "btrfs or a tmpfs, e.g. TMPDIR=/dev/shm")
TMPFS_SOURCE = f"{PREFIX}-upper"


@dataclass(frozen=True)
class Fs:
    """The filesystem a directory is on (the nearest existing ancestor when it does not
    exist yet), as overlayfs sees it."""

    path: str          #: the directory asked about
    mountpoint: str    #: where that filesystem is mounted
    fstype: str        #: as /proc/self/mountinfo names it (overlay, tmpfs, ext4, ...)
    readonly: bool     #: the mount is read-only (statvfs ST_RDONLY)

    def describe(self) -> str:
        """``overlay at /tmp (read-only)``."""
        return f"{self.fstype} at {self.mountpoint}" + (" (read-only)" if self.readonly else "")

    def _remote(self) -> bool:
        return self.fstype in REMOTE or self.fstype.startswith("fuse.")

    def lower_problem(self) -> str | None:
        """Why overlayfs refuses a lower layer here, or None."""
        if self.fstype in CASE_INSENSITIVE:
            return f"{self.fstype} has case-insensitive names, which overlayfs refuses as any layer"
        return None

    def upper_problem(self) -> str | None:
        """Why overlayfs refuses an upper/work pair here, or None."""
        if self.readonly:
            return "it is read-only"
        if self.fstype == "overlay":
            return "overlayfs is \"not supported as upperdir\""
        if self._remote():
            return (f"{self.fstype} is a network/FUSE filesystem without the xattrs and "
                    "whiteouts an upper needs")
        return self.lower_problem()


def fs_of(path: str) -> Fs:
    """The filesystem ``path`` is (or, not existing yet, would be) on."""
    path = os.path.abspath(path)
    existing = path
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    mount = mountinfo.of_path(existing)       # one line of the table, by the mount's ID
    if mount is not None:
        readonly = bool(os.statvfs(existing).f_flag & os.ST_RDONLY)
        return Fs(path, mount.mount_point, mount.fstype, readonly)
    real = os.path.realpath(existing)
    best, fstype = "/", "unknown"
    for m in mountinfo.read():
        point = m.mount_point
        inside = point == "/" or real == point or real.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= len(best):   # the longest, and of those the last (top)
            best, fstype = point, m.fstype
    readonly = bool(os.statvfs(existing).f_flag & os.ST_RDONLY)
    return Fs(path, best, fstype, readonly)


def tmpfs_available() -> bool:
    """tmpfs is registered (/proc/filesystems): it always is, unless CONFIG_TMPFS is off."""
    try:
        with open("/proc/filesystems") as f:
            return any(line.split()[-1:] == ["tmpfs"] for line in f)
    except OSError:
        return False


def plan_upper(scratch: str) -> Fs:
    """The filesystem uppers under ``scratch`` would be on; raises (one line, before anything
    is made) where neither it nor a tmpfs mounted in it can hold them."""
    fs = fs_of(scratch)
    problem = fs.upper_problem()
    if problem is None:
        return fs
    if fs.readonly:
        raise NsrError(f"{scratch} is on {fs.describe()}: no overlay upper, and no directory "
                       "to mount a tmpfs on, can be made there", errno_name="EROFS", hint=FIX)
    if not tmpfs_available():
        raise NsrError(f"{scratch} is on {fs.describe()} ({problem}) and this kernel has no "
                       "tmpfs to put the upper on", hint=FIX)
    return fs


def check_lower(path: str, what: str = "lower layer") -> None:
    """Raise (before anything is made) if overlayfs would refuse ``path`` as a lower layer."""
    fs = fs_of(path)
    problem = fs.lower_problem()
    if problem is not None:
        raise NsrError(f"{what} {path} is on {fs.describe()}: {problem}",
                       hint="copy it onto ext4, xfs, btrfs or a tmpfs, or " + FIX)


def needs_tmpfs(fs: Fs) -> bool:
    """True where uppers cannot live on ``fs`` itself and go on a tmpfs of their own."""
    return fs.upper_problem() is not None


def mount_upper_tmpfs(run: Runner, path: str, fs: Fs, undo: bool = True,
                      mode: str = "0755") -> bool:
    """Step, only where ``fs`` cannot hold an overlay upper: mount a tmpfs on ``path`` (a
    directory we made, empty) so the upper and work directories made in it can be
    (bubblewrap's ``--tmp-overlay``); undo: unmount it. True if it mounted one."""
    if not needs_tmpfs(fs):
        return False
    opts = f"mode={mode}"
    run.run(Step(f"mount a tmpfs on {path} for upper and work: {fs.path} is on "
                 f"{fs.describe()}, which cannot hold an overlay upper ({fs.upper_problem()})",
                 argv=["mount", "-t", "tmpfs", "-o", opts, TMPFS_SOURCE, path],
                 native=lambda: sc.mount(TMPFS_SOURCE, path, "tmpfs", 0, opts),
                 undo=Step(f"unmount the tmpfs on {path}", argv=["umount", path],
                           native=lambda: sc.umount(path)) if undo else None))
    return True

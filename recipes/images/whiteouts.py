"""OCI whiteouts as overlayfs whiteouts, and whether the store's filesystem can hold them.

A layer's tar says "deleted" with names: ``.wh.NAME`` hides NAME of the layers below,
``.wh..wh..opq`` in a directory hides everything below it in the layers beneath (the
directory was replaced). overlayfs says the same with inodes: a character device 0/0 named
NAME is a whiteout, and the xattr ``trusted.overlay.opaque=y`` on a directory makes it
opaque (``user.overlay.opaque`` where the overlay is mounted with ``userxattr``, as a user
without root must). containerd and moby do this conversion in Go
(``OverlayConvertWhiteout``); here it is :func:`make_whiteout` and :func:`make_opaque`.

An overlayfs (a Docker container's /, /var in the VM and on many CI runners) holds neither:
a 0/0 device made on it is itself taken as a whiteout (it vanishes), and ``trusted.overlay.*``
names are its own. :func:`probe` tries both in the store once and says so in one line.
"""
from __future__ import annotations

import errno
import os
import stat

from nsutil import rootless
from nsutil.errors import NsrError, SyscallError

from recipes.common import upperfs

WHITEOUT_PREFIX = ".wh."
OPAQUE = ".wh..wh..opq"
#: ``.wh..wh.*`` names other than the opaque marker are AUFS bookkeeping: skipped
META_PREFIX = ".wh..wh."
PROBE_MARK = ".whiteouts-ok"


def opaque_xattr() -> str:
    """The opaque xattr overlayfs reads here: trusted.* as root, user.* without root."""
    return "user.overlay.opaque" if rootless.decide() else "trusted.overlay.opaque"


def make_whiteout(path: str) -> None:
    """Make ``path`` an overlayfs whiteout: a character device 0/0 (``mknod PATH c 0 0``;
    allowed without root since Linux 5.8)."""
    try:
        os.mknod(path, stat.S_IFCHR | 0o000, os.makedev(0, 0))
    except OSError as exc:
        raise SyscallError.from_oserror(f"mknod({path!r}, c 0 0) for a whiteout", exc) from None


class OpaqueRefused(NsrError):
    """A layer has an opaque directory and the store's filesystem cannot mark one."""


def make_opaque(directory: str, xattr: str | None = None) -> None:
    """Make ``directory`` opaque (``setfattr -n trusted.overlay.opaque -v y DIR``). Where
    the filesystem has no ``user.*`` xattrs (without root on a tmpfs before Linux 6.6):
    :class:`OpaqueRefused`, one line with the fix."""
    name = xattr or opaque_xattr()
    try:
        os.setxattr(directory, name, b"y", follow_symlinks=False)
    except OSError as exc:
        if exc.errno == errno.EOPNOTSUPP and name.startswith("user."):
            fs = upperfs.fs_of(directory)
            raise OpaqueRefused(
                f"the image has an opaque directory (.wh..wh..opq), and the image store on "
                f"{fs.describe()} cannot mark it: setxattr {name}",
                errno_name="EOPNOTSUPP",
                hint="without root the mark is a user.* xattr, which a tmpfs keeps only since "
                     "Linux 6.6: set NSR_STORE_DIR (or XDG_DATA_HOME) to a directory on ext4, "
                     "xfs or btrfs; nothing was imported") from None
        raise SyscallError.from_oserror(f"setxattr({directory!r}, {name})", exc) from None


def is_whiteout(path: str) -> bool:
    """True if ``path`` is a 0/0 character device (an overlayfs whiteout)."""
    try:
        st = os.lstat(path)
    except OSError:
        return False
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == 0


def is_opaque(directory: str) -> bool:
    """True if ``directory`` carries the opaque xattr (either name)."""
    for name in ("trusted.overlay.opaque", "user.overlay.opaque"):
        try:
            if os.getxattr(directory, name, follow_symlinks=False) == b"y":
                return True
        except OSError:
            pass
    return False


def probe(store_root: str, tmp: str) -> None:
    """Check once (a mark file remembers it) that the store's filesystem keeps a whiteout
    device and the opaque xattr; one line with the fix where it cannot."""
    if os.path.exists(os.path.join(store_root, PROBE_MARK)):
        return
    fs = upperfs.fs_of(store_root)
    where = f"the image store {store_root} is on {fs.describe()}"
    fix = ("set NSR_STORE_DIR to a directory on a real filesystem (ext4, xfs, btrfs) or a "
           "tmpfs, e.g. NSR_STORE_DIR=/dev/shm/nsrecipes")
    test = os.path.join(tmp, "probe")
    os.mkdir(test, 0o700)
    device = os.path.join(test, "gone")
    try:
        make_whiteout(device)
    except SyscallError as exc:
        raise NsrError(f"{where}, which refuses whiteout devices (mknod c 0 0)",
                       errno_name=exc.errno_name, hint=fix) from None
    if not is_whiteout(device):
        raise NsrError(f"{where}: a whiteout device made there vanishes (overlayfs takes it "
                       "as its own whiteout), so image layers cannot live there",
                       errno_name=errno.errorcode[errno.ENOENT], hint=fix)
    try:
        make_opaque(test)
    except OpaqueRefused:
        pass     # no user.* xattrs (a tmpfs before Linux 6.6): images without an opaque
        #          directory still work; one with it is refused when a layer has one
    except SyscallError as exc:
        raise NsrError(f"{where}, which refuses the xattr {opaque_xattr()}",
                       errno_name=exc.errno_name, hint=fix) from None
    else:
        if not is_opaque(test):
            raise NsrError(f"{where}: the xattr {opaque_xattr()} does not read back there",
                           hint=fix)
    with open(os.path.join(store_root, PROBE_MARK), "w") as f:
        f.write(f"{fs.describe()}\n")

"""Unpack one layer's tar into its own directory, safely, whiteouts as overlayfs's.

A layer is a tar stream, and a tar written by someone else may try to write outside the
directory it is unpacked in. Every entry is checked before it is written:

* an absolute name or a ``..`` component: refused (the name must stay inside);
* a name whose parent path goes through a symlink (made by an earlier entry): refused,
  since writing there would follow the link out of the layer;
* a hardlink whose target leaves the layer, or goes through a symlink: refused;
* device nodes: made only as root (skipped without root, as rootless podman does);
* file capabilities (``security.capability``): kept as root; without root they are dropped
  (setting one needs CAP_SETFCAP: EPERM), and the import says which files lost theirs;
* ``trusted.*`` and ``security.*`` xattrs other than ``security.capability``: dropped (an
  image must not forge overlayfs's own ``trusted.overlay.*`` metadata).

Kept: owners (as root), modes (setuid too, set after the owner), mtimes (directories last,
deepest first, once nothing more is written in them), symlinks, hardlinks,
``security.capability`` and ``user.*`` xattrs. Whiteouts (``.wh.NAME``, ``.wh..wh..opq``)
become overlayfs's (:mod:`recipes.images.whiteouts`). Only this process writes the layer's
directory (it is below the store's ``tmp/``, 0700), so checking parents with ``lstat`` before
writing leaves no window for a link to appear.
"""
from __future__ import annotations

import errno
import os
import stat
import tarfile
from dataclasses import dataclass, field
from typing import BinaryIO

from nsutil.errors import SyscallError

from recipes.images import whiteouts
from recipes.images.blobs import BadImage, chunks

XATTR_PREFIX = "SCHILY.xattr."
KEPT_XATTRS = ("user.", "security.capability")
#: tarfile's read size on the stream (its default, 10 KiB, costs a call per 10 KiB)
BUFSIZE = 64 << 10


class HostileLayer(BadImage):
    """A layer entry that would write outside the layer's directory."""


@dataclass
class Unpacked:
    """What unpacking a layer made: bytes of file data, entries, and skipped devices."""

    size: int = 0
    entries: int = 0
    skipped_devices: list[str] = field(default_factory=list)
    dropped_xattrs: list[str] = field(default_factory=list)
    dropped_caps: list[str] = field(default_factory=list)


def split_name(name: str, what: str) -> list[str]:
    """A tar entry name as path components inside the layer; refuses names that leave it."""
    if name.startswith("/"):
        raise HostileLayer(f"{what}: entry {name!r} has an absolute name",
                           hint="a layer's names are relative to its root; the tar is not a "
                                "layer or was made to escape: nothing was imported")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise HostileLayer(f"{what}: entry {name!r} leaves the layer's directory (..)",
                           hint="the tar was made to write outside: nothing was imported")
    return parts


def ensure_parent(root: str, parts: list[str], name: str, what: str,
                  known: set[str] | None = None) -> str:
    """The directory the entry goes in (made 0755 where missing, as tar does); refused if a
    component is a symlink or not a directory. ``known``: directories checked already (this
    layer's own: a later entry that replaces one takes it out, see :func:`forget`)."""
    path = root
    for part in parts[:-1]:
        path = os.path.join(path, part)
        if known is not None and path in known:
            continue
        if known is not None:
            known.add(path)
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            os.mkdir(path, 0o755)
            continue
        if stat.S_ISLNK(st.st_mode):
            raise HostileLayer(f"{what}: entry {name!r} goes through the symlink "
                               f"{os.path.relpath(path, root)!r}",
                               hint="writing there would follow the link out of the layer: "
                                    "nothing was imported")
        if not stat.S_ISDIR(st.st_mode):
            raise BadImage(f"{what}: entry {name!r} is below {os.path.relpath(path, root)!r}, "
                           "which is not a directory", hint="the layer is damaged")
    return path


def forget(known: set[str], path: str) -> None:
    """``path`` (and, if it was a directory, everything below it) is no longer a checked
    directory."""
    if path not in known:
        return
    known.discard(path)
    below = path + "/"
    for p in [p for p in known if p.startswith(below)]:
        known.discard(p)


def clear(path: str, keep_dir: bool) -> None:
    """Remove what is at ``path`` before an entry replaces it (a directory stays when the
    new entry is a directory too: tar updates its metadata)."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(st.st_mode):
        if keep_dir:
            return
        from recipes.images.store import remove_tree
        remove_tree(path)
    else:
        os.unlink(path)


def xattrs_of(member: tarfile.TarInfo) -> dict[str, bytes]:
    """The member's kept xattrs (PAX ``SCHILY.xattr.NAME``)."""
    out = {}
    for key, value in member.pax_headers.items():
        if key.startswith(XATTR_PREFIX):
            name = key[len(XATTR_PREFIX):]
            if name.startswith(KEPT_XATTRS[0]) or name == KEPT_XATTRS[1]:
                out[name] = value.encode("utf-8", "surrogateescape")
    return out


def apply_metadata(path: str, member: tarfile.TarInfo, as_root: bool,
                   result: Unpacked, owned_by_root: bool = False) -> None:
    """Owner (as root), mode, xattrs, mtime, in that order (chown clears setuid bits and
    file capabilities, so it goes first). Notes in ``result`` the ``user.*`` xattrs the
    filesystem could not keep (EOPNOTSUPP: e.g. a tmpfs before Linux 6.6) and, without
    root, the file capabilities left out. ``owned_by_root``: the entry was just made by
    uid 0 and gid 0, so an owner of 0:0 needs no chown."""
    dropped = result.dropped_xattrs
    if as_root and not (owned_by_root and member.uid == 0 and member.gid == 0):
        os.chown(path, member.uid, member.gid, follow_symlinks=False)
    if not member.issym():
        os.chmod(path, stat.S_IMODE(member.mode))
        for name, value in xattrs_of(member).items():
            if name == KEPT_XATTRS[1] and not as_root:
                result.dropped_caps.append(member.name)
                continue
            try:
                os.setxattr(path, name, value, follow_symlinks=False)
            except OSError as exc:
                if exc.errno == errno.EOPNOTSUPP and name.startswith("user."):
                    dropped.append(f"{member.name}: {name}")
                    continue
                raise SyscallError.from_oserror(f"setxattr({path!r}, {name})", exc) from None
    os.utime(path, (member.mtime, member.mtime), follow_symlinks=False)


class LayerUnpacker:
    """Unpacks the tar entries of one layer into ``root`` (an empty directory)."""

    def __init__(self, root: str, what: str, as_root: bool | None = None,
                 opaque_xattr: str | None = None):
        self.root, self.what = root, what
        self.as_root = os.geteuid() == 0 if as_root is None else as_root
        self.opaque_xattr = opaque_xattr or whiteouts.opaque_xattr()
        self.dirs: list[tuple[str, tarfile.TarInfo]] = []
        self.known: set[str] = set()
        #: every path this layer's entries made: anything else cannot exist yet (the
        #: directory started empty and only this process writes it), so needs no lstat
        self.made: set[str] = set()
        #: a file made now is 0:0 (no setgid directory above it while unpacking)
        self.owned_by_root = self.as_root and os.geteuid() == 0 and os.getegid() == 0
        self.result = Unpacked()

    def unpack(self, stream: BinaryIO) -> Unpacked:
        """Every entry of the tar ``stream`` (read once, front to back), then the directories'
        metadata."""
        try:
            with tarfile.open(fileobj=stream, mode="r|", bufsize=BUFSIZE) as tar:
                for member in tar:
                    self.entry(tar, member)
        except tarfile.TarError as exc:
            raise BadImage(f"{self.what} is not a valid tar: {exc}",
                           hint="the layer is damaged or truncated: nothing was imported") from None
        except EOFError:
            raise BadImage(f"{self.what} ends in the middle of a tar entry",
                           hint="the layer was cut short: nothing was imported") from None
        for path, member in sorted(self.dirs, key=lambda d: -d[0].count("/")):
            apply_metadata(path, member, self.as_root, self.result)
        return self.result

    def entry(self, tar: tarfile.TarFile, member: tarfile.TarInfo) -> None:
        """One tar entry: a whiteout, or a file, directory, link, fifo or device."""
        parts = split_name(member.name, self.what)
        self.result.entries += 1
        if not parts:                       # "./": the layer's root directory itself
            if member.isdir():
                self.dirs.append((self.root, member))
            return
        parent = ensure_parent(self.root, parts, member.name, self.what, self.known)
        base = parts[-1]
        if base.startswith(whiteouts.WHITEOUT_PREFIX):
            self.whiteout(parent, base)
            return
        path = os.path.join(parent, base)
        there = path in self.made or path in self.known
        if there:
            if not member.isdir():
                forget(self.known, path)
            clear(path, keep_dir=member.isdir())
        self.made.add(path)
        try:
            self.make(tar, member, path, there)
        except OSError as exc:
            raise SyscallError.from_oserror(f"unpack {member.name!r} of {self.what}", exc) from None

    def whiteout(self, parent: str, base: str) -> None:
        """``.wh..wh..opq``: the parent opaque; ``.wh.NAME``: NAME a 0/0 device."""
        if base == whiteouts.OPAQUE:
            whiteouts.make_opaque(parent, self.opaque_xattr)
        elif not base.startswith(whiteouts.META_PREFIX):
            hidden = os.path.join(parent, base[len(whiteouts.WHITEOUT_PREFIX):])
            if hidden in self.made or hidden in self.known:
                forget(self.known, hidden)
                clear(hidden, keep_dir=False)
            self.made.add(hidden)
            whiteouts.make_whiteout(hidden)

    def make(self, tar: tarfile.TarFile, member: tarfile.TarInfo, path: str,
             there: bool = True) -> None:
        """Create the entry at ``path`` and give it its metadata (directories: later).
        ``there``: a directory may be there already (an earlier entry made it)."""
        if member.isdir():
            if not there or not os.path.isdir(path):
                os.mkdir(path, 0o700)
            self.dirs.append((path, member))
            return
        if member.isreg():
            self.write_file(tar, member, path)
        elif member.issym():
            os.symlink(member.linkname, path)
        elif member.islnk():
            self.hardlink(member, path)
            return                           # shares the target's inode and metadata
        elif member.isfifo():
            os.mkfifo(path, 0o600)
        elif member.ischr() or member.isblk():
            if not self.as_root:
                self.result.skipped_devices.append(member.name)
                return
            kind = stat.S_IFCHR if member.ischr() else stat.S_IFBLK
            os.mknod(path, kind | 0o600, os.makedev(member.devmajor, member.devminor))
        else:
            raise BadImage(f"{self.what}: entry {member.name!r} has the unknown tar type "
                           f"{member.type!r}", hint="the layer is damaged")
        apply_metadata(path, member, self.as_root, self.result, self.owned_by_root)

    def write_file(self, tar: tarfile.TarFile, member: tarfile.TarInfo, path: str) -> None:
        """A regular file's data (O_EXCL|O_NOFOLLOW: never through a link)."""
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                     0o600)
        with os.fdopen(fd, "wb") as out:
            source = tar.extractfile(member)
            if source is not None:
                for data in chunks(source):
                    out.write(data)
        self.result.size += member.size

    def hardlink(self, member: tarfile.TarInfo, path: str) -> None:
        """A hardlink to an entry of this layer, never outside it nor through a symlink."""
        target_parts = split_name(member.linkname, self.what)
        if not target_parts:
            raise HostileLayer(f"{self.what}: hardlink {member.name!r} points at the layer's "
                               "root", hint="nothing was imported")
        parent = ensure_parent(self.root, target_parts, member.linkname, self.what)
        source = os.path.join(parent, target_parts[-1])
        try:
            st = os.lstat(source)
        except FileNotFoundError:
            raise BadImage(f"{self.what}: hardlink {member.name!r} points at "
                           f"{member.linkname!r}, which the layer does not have",
                           hint="the layer is damaged: nothing was imported") from None
        if stat.S_ISDIR(st.st_mode):
            raise HostileLayer(f"{self.what}: hardlink {member.name!r} points at a directory",
                               hint="nothing was imported")
        os.link(source, path, follow_symlinks=False)

"""Where an image comes from: a directory or a tar, read by the names inside it.

An OCI image layout (``oci-layout``, ``index.json``, ``blobs/sha256/HEX``) is the same
whether it is a directory or a tar of one (an oci-archive, or Docker 25's ``docker save``);
the old ``docker save`` form (``manifest.json``, ``HEX.json``, ``.../layer.tar``) is a tar.
:class:`Files` hides which, so each format's reader (:mod:`recipes.images.layout`,
:mod:`recipes.images.dockerarchive`) reads names, and :class:`Source` is what they give the
importer: a manifest and a way to open each blob.
"""
from __future__ import annotations

import json
import os
import tarfile
from dataclasses import dataclass, field
from typing import Any, BinaryIO, Callable

from recipes.images.blobs import BadImage, copy_verified, hex_of


class Files:
    """Files of an image by their names inside it (``index.json``, ``blobs/sha256/HEX``)."""

    what = ""

    def exists(self, name: str) -> bool:
        """True if the image has a file ``name``."""
        raise NotImplementedError

    def open(self, name: str) -> BinaryIO:
        """Open ``name`` for reading (a :class:`BadImage` if it is missing)."""
        raise NotImplementedError

    def size(self, name: str) -> int:
        """The size of ``name`` in bytes."""
        raise NotImplementedError

    def read_json(self, name: str) -> Any:
        """The JSON in ``name`` (a :class:`BadImage` if it is not JSON)."""
        with self.open(name) as f:
            data = f.read(16 << 20)
        try:
            return json.loads(data)
        except ValueError:
            raise BadImage(f"{name} in {self.what} is not JSON",
                           hint="the image is damaged") from None

    def close(self) -> None:
        """Release what is held open."""


class DirFiles(Files):
    """An image layout directory."""

    def __init__(self, root: str):
        self.root, self.what = root, root

    def _path(self, name: str) -> str:
        return os.path.join(self.root, *[p for p in name.split("/") if p not in ("", ".", "..")])

    def exists(self, name: str) -> bool:
        """True if ``name`` is a file of the directory."""
        return os.path.isfile(self._path(name))

    def open(self, name: str) -> BinaryIO:
        """Open ``name`` below the directory."""
        try:
            return open(self._path(name), "rb")
        except OSError:
            raise BadImage(f"{self.what} has no {name}", hint="the image layout is "
                           "incomplete (a blob is missing): nothing was imported") from None

    def size(self, name: str) -> int:
        """The file's size."""
        return os.path.getsize(self._path(name))


class TarFiles(Files):
    """A tar of an image (oci-archive, docker save); names as in the tar, ``./`` ignored."""

    def __init__(self, path: str, tar: tarfile.TarFile):
        self.what, self.tar = path, tar
        self.members = {m.name[2:] if m.name.startswith("./") else m.name: m
                        for m in tar.getmembers()}

    def exists(self, name: str) -> bool:
        """True if the tar has the entry ``name``."""
        return name in self.members

    def open(self, name: str) -> BinaryIO:
        """The entry's data (links inside the tar followed, as tar itself does)."""
        member = self.members.get(name)
        stream = self.tar.extractfile(member) if member is not None else None
        if stream is None:
            raise BadImage(f"{self.what} has no file {name}", hint="the archive is incomplete "
                           "(a blob is missing): nothing was imported")
        return stream   # type: ignore[return-value]

    def size(self, name: str) -> int:
        """The entry's size (of its target, for a link)."""
        member = self.members[name]
        if member.issym() or member.islnk():
            target = os.path.normpath(os.path.join(os.path.dirname(name), member.linkname)) \
                if member.issym() else member.linkname
            return self.size(target)
        return member.size

    def close(self) -> None:
        """Close the tar."""
        self.tar.close()


@dataclass
class Source:
    """An image to import: the format, the names it suggests, and how to read its parts.

    ``read_top(staging)`` verifies and returns (manifest, manifest digest or None, config
    bytes), copying each verified blob into ``staging``; ``blob_name`` maps a digest to its
    name in :attr:`files` (default ``blobs/sha256/HEX``)."""

    kind: str
    files: Files
    names: list[str]
    read_top: Callable[[str], tuple[dict, str | None, bytes]]
    blob_names: dict[str, str] = field(default_factory=dict)

    def blob_name(self, digest: str) -> str:
        """The name of the blob ``digest`` inside the image."""
        return self.blob_names.get(digest) or f"blobs/sha256/{hex_of(digest)}"

    def copy_blob(self, desc: dict, dest: str, what: str) -> None:
        """Copy the blob of ``desc`` to ``dest``, verified (digest and size)."""
        with self.files.open(self.blob_name(desc["digest"])) as stream:
            copy_verified(stream, desc["digest"], desc["size"], dest, what)


def open_files(path: str) -> Files:
    """A directory or a tar; anything else is one line."""
    if os.path.isdir(path):
        return DirFiles(path)
    if not os.path.exists(path):
        raise BadImage(f"{path} does not exist", hint="give an OCI image layout directory "
                       "(DIR or DIR:REF), an oci-archive or a docker save tar")
    try:
        tar = tarfile.open(path, "r:*")
    except (tarfile.TarError, OSError, EOFError):
        raise BadImage(f"{path} is not an image: neither a directory nor a tar",
                       hint="give an OCI image layout directory (DIR or DIR:REF), an "
                            "oci-archive or a docker save tar") from None
    return TarFiles(path, tar)

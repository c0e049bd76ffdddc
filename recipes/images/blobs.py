"""Blobs by digest, and the one verified way in: :func:`copy_verified`.

An OCI descriptor names a blob by its digest (``sha256:HEX``) and size. Whatever brings a
blob in -- an image layout on disk, a ``docker save`` tar, a registry's HTTP response --
hands :func:`copy_verified` a stream and the descriptor; the bytes go to a temporary file
while they are hashed and counted, and only a blob whose sha256 and size are those of the
descriptor is renamed to its final name. A short stream is "truncated", a long one "larger
than its descriptor says", a wrong hash a "digest mismatch": each one line.
"""
from __future__ import annotations

import hashlib
import os
import re
from typing import BinaryIO, Iterator

from nsutil.errors import InvalidInput, SyscallError

CHUNK = 1 << 20
_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")


class BadImage(InvalidInput):
    """An image that is not what it claims (digest, size, media type, format): one line."""

    exit_code = 1


def check_digest(digest: object, what: str) -> str:
    """``sha256:HEX`` (64 lower-case hex digits), else :class:`BadImage`."""
    if not isinstance(digest, str) or not _DIGEST.fullmatch(digest):
        raise BadImage(f"{what} has the digest {digest!r}, not sha256:<64 hex digits>",
                       hint="only sha256 digests are supported; is the image damaged?")
    return digest


def hex_of(digest: str) -> str:
    """The hex part of ``sha256:HEX``."""
    return digest.split(":", 1)[1]


def short(digest: str) -> str:
    """The first 12 hex digits, as ``docker images`` shows an id."""
    return hex_of(digest)[:12]


def sha256_bytes(data: bytes) -> str:
    """``sha256:HEX`` of ``data``."""
    return "sha256:" + hashlib.sha256(data).hexdigest()


def chunks(stream: BinaryIO, limit: int | None = None) -> Iterator[bytes]:
    """The stream's bytes in chunks of 1 MiB; with ``limit``, at most ``limit + 1`` bytes (one
    more than allowed is enough to know a blob is too large)."""
    left = None if limit is None else limit + 1
    while left is None or left > 0:
        data = stream.read(CHUNK if left is None else min(CHUNK, left))
        if not data:
            return
        if left is not None:
            left -= len(data)
        yield data


def copy_verified(stream: BinaryIO, digest: str, size: int, dest: str, what: str) -> None:
    """Copy ``stream`` to ``dest`` while checking it is the blob ``digest`` of ``size`` bytes
    (the descriptor's); ``dest`` appears only if it is. ``what`` names the blob in errors."""
    check_digest(digest, what)
    h = hashlib.sha256()
    count = 0
    tmp = dest + ".part"
    try:
        with open(tmp, "wb") as out:
            for data in chunks(stream, size):
                h.update(data)
                count += len(data)
                out.write(data)
    except OSError as exc:
        _drop(tmp)
        raise SyscallError.from_oserror(f"write({tmp!r})", exc) from None
    problem = None
    if count < size:
        problem = f"is truncated: {count} of {size} bytes"
    elif count > size:
        problem = f"is larger than its descriptor says ({size} bytes)"
    elif "sha256:" + h.hexdigest() != digest:
        problem = f"does not match its digest: sha256:{h.hexdigest()[:12]}... is not {short(digest)}..."
    if problem:
        _drop(tmp)
        raise BadImage(f"{what} {problem}", hint="the image is damaged or was changed after "
                                                 "it was written: nothing was imported")
    os.replace(tmp, dest)


def _drop(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass

"""Image names: ``NAME[:TAG]`` as Docker writes them, and finding an image by name or id.

``busybox`` is ``busybox:latest``; ``docker.io/library/busybox`` is shown as ``busybox``, as
``docker images`` does. An image is also found by its id (``sha256:HEX`` or at least 12 hex
digits of it).
"""
from __future__ import annotations

import re

from nsutil.errors import InvalidInput, NotFound

DEFAULT_TAG = "latest"
_NAME = re.compile(r"[a-z0-9]+(?:[._-]+[a-z0-9]+)*(?::[0-9]+)?(?:/[a-z0-9]+(?:[._-]+[a-z0-9]+)*)*")
_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
_HEX = re.compile(r"(?:sha256:)?([0-9a-f]{12,64})")


def split(ref: str) -> tuple[str, str]:
    """(name, tag) of ``NAME[:TAG]`` (a ':' after the last '/' starts the tag)."""
    slash = ref.rfind("/")
    colon = ref.rfind(":")
    if colon > slash:
        return ref[:colon], ref[colon + 1:]
    return ref, DEFAULT_TAG


def normalize(ref: str) -> str:
    """``NAME:TAG``, checked; ``docker.io/`` and ``library/`` dropped as Docker shows names."""
    name, tag = split(ref.strip())
    for prefix in ("docker.io/library/", "docker.io/", "index.docker.io/"):
        if name.startswith(prefix):
            name = name[len(prefix):]
            break
    if not _NAME.fullmatch(name) or len(name) > 255:
        raise InvalidInput(f"image name {ref!r} is not NAME[:TAG]",
                           hint="lower-case letters, digits, '.', '_', '-' and '/' parts, "
                                "e.g. nsr/busybox:1.36")
    if not _TAG.fullmatch(tag):
        raise InvalidInput(f"image tag {tag!r} of {ref!r} is not a tag",
                           hint="letters, digits, '_', '.', '-' (at most 128), e.g. v1")
    return f"{name}:{tag}"


def resolve(ref: str, refs: dict[str, str], ids: list[str]) -> tuple[str, str | None]:
    """(image id, the NAME:TAG it was found by or None) of ``ref``: a name or an id."""
    m = _HEX.fullmatch(ref)
    if m:
        found = [i for i in ids if i.split(":", 1)[1].startswith(m.group(1))]
        if len(found) == 1:
            return found[0], None
        if len(found) > 1:
            raise InvalidInput(f"image id {ref!r} is ambiguous ({len(found)} images)",
                               hint="give more digits")
    try:
        name = normalize(ref)
    except InvalidInput:
        name = None
    if name is not None and name in refs:
        return refs[name], name
    raise NotFound(f"no image {ref!r} in the store", hint="see `invoke image-ls`; import one "
                   "with `invoke image-import PATH --name NAME:TAG`")

"""An image's files as the overlay will show them, read from its layers without mounting.

Before a container starts, nsrecipes checks that its command exists and reads
``/etc/passwd`` and ``/etc/group`` (``--user NAME``, the config's ``User``). For an image
those live in layers: :func:`resolve` looks a path up as overlayfs does -- layers from the
top down, a whiteout (0/0 device) hides the name in the layers below, an opaque directory
hides everything below it -- and follows symlinks inside the image.
"""
from __future__ import annotations

import os
import stat

from recipes.images.whiteouts import is_opaque, is_whiteout


def _find(layers: list[str], parts: list[str]) -> str | None:
    """The host path of ``parts`` in the topmost layer that has it (None: absent/whited out)."""
    for layer in layers:
        stop = False
        path = layer
        for i, part in enumerate(parts):
            path = os.path.join(path, part)
            try:
                st = os.lstat(path)
            except (FileNotFoundError, NotADirectoryError):
                break
            if is_whiteout(path):
                return None
            if i == len(parts) - 1:
                return path
            if not stat.S_ISDIR(st.st_mode):
                return None       # a file here hides the directory of the layers below
            if is_opaque(path):
                stop = True
        if stop:
            return None
    return None


def resolve(layers: list[str], path: str, hops: int = 40) -> str | None:
    """The host path of the file ``path`` names in the image whose layer directories are
    ``layers`` (top first), symlinks followed inside the image; None if it is not there."""
    done: list[str] = []
    todo = [p for p in path.split("/") if p not in ("", ".")]
    while todo:
        part = todo.pop(0)
        if part == "..":
            if done:
                done.pop()
            continue
        found = _find(layers, done + [part])
        if found is None:
            return None
        if os.path.islink(found):
            hops -= 1
            if hops < 0:
                return None
            target = os.readlink(found)
            if target.startswith("/"):
                done = []
            todo = [p for p in target.split("/") if p not in ("", ".")] + todo
            continue
        done.append(part)
    return _find(layers, done) if done else (layers[0] if layers else None)

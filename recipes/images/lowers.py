"""An image's layers as overlayfs ``lowerdir``, past the mount options' page limit.

``mount(2)`` takes its options in one page (4096 bytes). The store's layer directories are
``STORE/layers/<64 hex>/diff``: about 40 of them fill the page. containers-storage's
answer is kept here: ``STORE/l/<26 characters>`` is a symlink to each layer's ``diff``, and
with the mount run in ``STORE`` the lowers are ``l/AAA...:l/BBB...`` (29 bytes each, ~130
layers; overlayfs takes at most 500 lowers anyway). The long, readable paths are used where
they fit; the short links only where they must.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

PAGE = 4096
#: room left in the page for upperdir=, workdir= and the other options
RESERVED = 700


@dataclass
class Lowers:
    """What ``mount -t overlay`` gets as lowerdir: paths (top first) and the directory to run
    the mount in (None: the paths are absolute)."""

    paths: list[str]
    cwd: str | None = None

    def option(self) -> str:
        """``lowerdir=A:B:C``."""
        return "lowerdir=" + ":".join(self.paths)


def fits(paths: list[str]) -> bool:
    """True if a lowerdir of ``paths`` leaves room for the rest of the options in a page."""
    return len("lowerdir=" + ":".join(paths)) <= PAGE - RESERVED


def choose(store_root: str, diffs: list[str], links: list[str]) -> Lowers:
    """The layer directories ``diffs`` (top first) as given where they fit, else their short
    links ``links`` (names in ``STORE/l``), absolute, else relative to the store."""
    if fits(diffs):
        return Lowers(diffs)
    absolute = [os.path.join(store_root, "l", link) for link in links]
    if fits(absolute):
        return Lowers(absolute)
    return Lowers([os.path.join("l", link) for link in links], cwd=store_root)

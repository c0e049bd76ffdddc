"""An image's layers as overlayfs ``lowerdir``, past the mount options' page limit.

``mount(2)`` takes its options in one page (4096 bytes). The store's layer directories are
``STORE/layers/<64 hex>/diff``: about 40 of them fill the page. Two ways past it, chosen
by a probe:

* ``fsconfig`` (Linux 6.8+, the native backend): the new mount API appends the lowers one
  call at a time (``lowerdir+``, :mod:`nsutil.fsmount`), so the long, readable paths stay;
* short links, containers-storage's answer (older kernels, and the shell backend, whose
  ``mount`` of util-linux 2.38 has no ``lowerdir+``): ``STORE/l/<26 characters>`` is a
  symlink to each layer's ``diff``, and with the mount run in ``STORE`` the lowers are
  ``l/AAA...:l/BBB...`` (29 bytes each, ~130 layers; overlayfs takes at most 500 lowers).

The long paths in one ``lowerdir=`` are used where they fit; the other ways only where they
must.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

from nsutil import fsmount

PAGE = 4096
#: room left in the page for upperdir=, workdir= and the other options
RESERVED = 700
#: how the lowers reach the kernel
PATHS, LINKS, FSCONFIG = "paths", "short links", fsmount.VIA


@dataclass
class Lowers:
    """What the overlay mount gets as its lower directories: paths (top first), the
    directory to run the mount in (None: the paths are absolute), and ``via``: ``paths``
    (one ``lowerdir=``), ``short links`` (the same, through ``STORE/l``) or ``fsconfig
    lowerdir+`` (one ``fsconfig`` call per layer)."""

    paths: list[str]
    cwd: str | None = None
    via: str = PATHS

    def option(self) -> str:
        """``lowerdir=A:B:C`` (or ``lowerdir+=A,lowerdir+=B,...`` as fsconfig gives them)."""
        if self.via == FSCONFIG:
            return ",".join(f"lowerdir+={p}" for p in self.paths)
        return "lowerdir=" + ":".join(self.paths)


def fits(paths: list[str]) -> bool:
    """True if a lowerdir of ``paths`` leaves room for the rest of the options in a page."""
    return len("lowerdir=" + ":".join(paths)) <= PAGE - RESERVED


def choose(store_root: str, diffs: list[str], links: list[str],
           lowerdir_plus: bool = False) -> Lowers:
    """The layer directories ``diffs`` (top first) as given where they fit; else, with
    ``lowerdir_plus`` (the kernel has it and the mount is native), the same paths through
    fsconfig; else their short links ``links`` (names in ``STORE/l``), absolute, else
    relative to the store."""
    if fits(diffs):
        return Lowers(diffs)
    if lowerdir_plus:
        return Lowers(diffs, via=FSCONFIG)
    absolute = [os.path.join(store_root, "l", link) for link in links]
    if fits(absolute):
        return Lowers(absolute, via=LINKS)
    return Lowers([os.path.join("l", link) for link in links], cwd=store_root, via=LINKS)

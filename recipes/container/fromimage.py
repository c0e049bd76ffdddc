"""``container-run --image NAME[:TAG]``: a container on an image's layers, with its config.

The container asks the image store (:mod:`recipes.images`) for two things only: the layer
directories, which become the overlay's lower directories (bottom layer last, as
``lowerdir=`` lists them), and the image's config, which applies as ``docker run`` applies it:

* the command is ``Entrypoint`` + ``Cmd``; a command given after ``--`` replaces ``Cmd``;
* ``Env`` comes first, ``--env`` over it; ``WorkingDir`` unless ``--workdir``;
* ``User`` unless ``--user``; names (``nobody``, ``nobody:nogroup``) are looked up in the
  image's own /etc/passwd and /etc/group, read from its layers before anything is mounted.
"""
from __future__ import annotations

from typing import Any, Sequence

from nsutil.errors import InvalidInput

from recipes import images
from recipes.container.spec import CommandNotExecutable, CommandNotFound, Spec, settle


def _lines(path: str | None) -> list[list[str]]:
    if path is None:
        return []
    try:
        with open(path, errors="replace") as f:
            return [line.split(":") for line in f.read().splitlines()]
    except OSError:
        return []


def resolve_user(img: images.RunImage, user: str) -> str:
    """``NAME|UID[:GROUP|GID]`` as ``UID[:GID]``, names from the image's /etc/passwd and
    /etc/group (a name alone takes the user's own group, as docker does)."""
    who, sep, group = user.partition(":")
    if who.isdigit() and (not sep or group.isdigit()):
        return user
    passwd = _lines(img.resolve("/etc/passwd"))
    uid, gid = who, None
    if not who.isdigit():
        found = [f for f in passwd if len(f) >= 4 and f[0] == who]
        if not found:
            raise InvalidInput(f"user {who!r} is not in the image {img.name}'s /etc/passwd",
                               hint="give a number (--user 1000[:1000]) or a user the image has")
        uid, gid = found[0][2], found[0][3]
    if sep and not group.isdigit():
        found = [f for f in _lines(img.resolve("/etc/group")) if len(f) >= 3 and f[0] == group]
        if not found:
            raise InvalidInput(f"group {group!r} is not in the image {img.name}'s /etc/group",
                               hint="give a number (--user UID:GID) or a group the image has")
        gid = found[0][2]
    elif sep:
        gid = group
    return f"{uid}:{gid}" if gid is not None else uid


def apply_config(img: images.RunImage, argv: Sequence[str],
                 options: dict[str, Any]) -> tuple[list[str], dict[str, Any]]:
    """The command and the options with the image's config applied (see the module doc)."""
    cfg = img.config
    entrypoint = list(cfg.get("Entrypoint") or [])
    command = entrypoint + (list(argv) if argv else list(cfg.get("Cmd") or []))
    if not command:
        raise InvalidInput(f"image {img.name} has no Entrypoint or Cmd, and no command was given",
                           hint="write the command after --, e.g. -- sh")
    options = dict(options)
    options["env"] = [e for e in cfg.get("Env") or [] if isinstance(e, str)] + list(options.get("env") or ())
    options["workdir"] = options.get("workdir") or cfg.get("WorkingDir") or None
    user = options.get("user") or cfg.get("User") or None
    options["user"] = resolve_user(img, str(user)) if user else None
    return command, options


def open_image(ref: str, rootfs: str | None, argv: Sequence[str], options: dict[str, Any],
               backend: str = "native") -> tuple[images.RunImage, list[str], dict[str, Any]]:
    """The image ``ref`` for a container (``--rootfs`` refused beside it), and the command
    and options with its config applied; ``backend`` decides how a long list of layers
    is mounted (:func:`recipes.images.for_container`)."""
    images.check_not_both(ref, rootfs)
    img = images.for_container(ref, backend=backend)
    command, options = apply_config(img, argv, options)
    return img, command, options


def settle_image(spec: Spec, img: images.RunImage) -> None:
    """The spec's lowers are the image's; the command and user are found in its layers."""
    spec.lowers, spec.lowers_cwd, spec.lowers_via = img.lowers.paths, img.lowers.cwd, img.lowers.via
    spec.image_id, spec.image_name = img.id, img.name
    try:
        settle(spec, img.layers[0], img.resolve)
    except (CommandNotFound, CommandNotExecutable) as exc:
        raise type(exc)(exc.what.replace(f"the rootfs {img.layers[0]}", f"the image {img.name}"),
                        hint=exc.hint) from None

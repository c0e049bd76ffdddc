"""``cow-demo --image NAME``: the document's copy-on-write on a real image's layers.

The same story as :func:`recipes.cow.demo`, told with an imported image instead of
hand-made directories: the image's layers bottom-up as the store keeps them (each unpacked
once), two containers' overlays on the same lower directories with an upper each, a file
read from a lower layer, a write copied up into the upper, a delete recorded as a whiteout
in the upper (the other container still sees the file), and the disk: the layers counted
once, each upper on its own. The overlay mount line is shown as the kernel gets it.
"""
from __future__ import annotations

import os
import stat

from nsutil.backend import Runner
from nsutil.names import PREFIX, scope_id

from recipes import cow
from recipes import images
from recipes.common import upperfs
from recipes.common import userns

SECTION = "写时复制 (copy-on-write) on an image: its layers are the lowers"
#: files a read and a delete are shown on, first found wins
CANDIDATES = ("etc/os-release", "etc/passwd", "etc/group", "etc/hostname", "etc/motd")


def _files_of_lowers(layers: list[str]) -> list[str]:
    """Regular files the image shows that come from a lower layer (candidates first)."""
    found = [p for p in CANDIDATES if _is_file(images.view.resolve(layers, p))]
    if len(found) < 2:
        for dirpath, _, names in os.walk(layers[-1]):
            for name in sorted(names):
                rel = os.path.relpath(os.path.join(dirpath, name), layers[-1])
                if rel not in found and _is_file(images.view.resolve(layers, rel)):
                    found.append(rel)
                if len(found) >= 2:
                    return found
    return found


def _is_file(path: str | None) -> bool:
    return path is not None and stat.S_ISREG(os.lstat(path).st_mode)


def _layer_of(layers: list[str], host: str | None) -> int:
    """1-based position, bottom-up, of the layer directory holding ``host``."""
    for i, layer in enumerate(layers):
        if host and host.startswith(layer + "/"):
            return len(layers) - i
    return 0


def _read(path: str) -> str | None:
    try:
        with open(path, errors="replace") as f:
            return f.read(200)
    except OSError:
        return None


def demo(run: Runner, image: str) -> dict:
    """Copy-on-write on the image ``image`` (see the module doc); returns what was seen.
    Without root, as :func:`recipes.cow.demo`: the overlays are mounted in a process that
    made a user namespace and a mount namespace first, with ``userxattr``. The image and
    its store are looked up before (inside, this user is root: the store is still its own)."""
    store = images.Store()
    img = images.for_container(image, store, backend=str(run.backend))
    if run.rootless:
        cow.require_userxattr("cow-demo --image without root")
        run.say_owner()        # here, before the fork: the child's steps would say it again
    return userns.in_user_and_mount_ns(run, lambda: _demo(run, image, img, store),
                                       "cow-demo --image")


def _demo(run: Runner, image: str, img: images.RunImage, store: images.Store) -> dict:
    scratch = cow.scratch_dir()
    base = cow.check_overlay_path(os.path.join(scratch, f"{PREFIX}-cow-{scope_id()}"))
    fs = upperfs.plan_upper(scratch)
    files = _files_of_lowers(img.layers)
    run.heading(f"{SECTION}: {image} ({images.short(img.id)}), {len(img.layers)} layer(s) bottom-up")
    for i, layer in enumerate(reversed(img.layers), 1):
        info = store.layer_info("sha256:" + os.path.basename(os.path.dirname(layer)))
        run.say(f"   layer {i}: {layer} ({images.describe_size(int(info.get('size', 0)))})")
    cow.make_dir(run, base)
    merged, uppers = {}, {}
    for c in ("c1", "c2"):
        cow.make_dir(run, f"{base}/{c}", undo=False)
        upperfs.mount_upper_tmpfs(run, f"{base}/{c}", fs)
        for sub in ("upper", "work", "merged"):
            cow.make_dir(run, f"{base}/{c}/{sub}", undo=False)
        cow.mount_overlay(run, img.lowers.paths, f"{base}/{c}/upper", f"{base}/{c}/work",
                          f"{base}/{c}/merged", cwd=img.lowers.cwd, via=img.lowers.via)
        merged[c], uppers[c] = f"{base}/{c}/merged", f"{base}/{c}/upper"
    line = (f"{'cd ' + img.lowers.cwd + ' && ' if img.lowers.cwd else ''}mount -t overlay overlay "
            f"-o {img.lowers.option()},upperdir={uppers['c1']},workdir={base}/c1/work"
            f"{',userxattr' if run.rootless else ''} {merged['c1']}")
    run.say(f"   the mount, as the kernel gets it (lowerdir: top layer first):\n   $ {line}")
    seen: dict = {"layers": len(img.layers), "mount": line}
    if len(files) < 2 or run.explain:
        run.undo()
        return seen
    read, gone = files[0], files[1]
    m1, up1 = merged["c1"], uppers["c1"]
    host = images.view.resolve(img.layers, read)

    run.heading(f"{SECTION}: a read finds the file in a lower layer")
    seen["read_layer"] = _layer_of(img.layers, host)
    run.say(f"   /{read} comes from layer {seen['read_layer']}: {host}")
    run.say(f"   upper has it: {os.path.lexists(f'{up1}/{read}')}")

    run.heading(f"{SECTION}: a write copies the file up; the layer is unchanged")
    cow.write_file(run, f"{m1}/{read}", "# written in container 1\n", append=True)
    seen["upper_copy"] = os.path.isfile(f"{up1}/{read}")
    seen["lower_unchanged"] = "written in container 1" not in (_read(host) or "")
    run.say(f"   {up1}/{read} now exists: {seen['upper_copy']}; the layer's copy is unchanged: "
            f"{seen['lower_unchanged']}")

    run.heading(f"{SECTION}: a delete is a whiteout in the upper")
    cow.delete_file(run, f"{m1}/{gone}")
    seen["whiteout"] = cow.is_whiteout(f"{up1}/{gone}")
    seen["other_sees"] = os.path.exists(f"{merged['c2']}/{gone}")
    st = os.lstat(f"{up1}/{gone}")
    run.say(f"   {up1}/{gone} is {stat.filemode(st.st_mode)} {os.major(st.st_rdev)}/"
            f"{os.minor(st.st_rdev)} (a whiteout: {seen['whiteout']}); container 2 still has "
            f"/{gone}: {seen['other_sees']}")

    run.heading(f"{SECTION}: two containers, one copy of the layers on disk")
    layers = cow.du_step(run, *img.layers, title="disk used by the image's layers (once)")
    both = cow.du_step(run, *uppers.values(), title="disk used by the two uppers")
    seen.update(layers_bytes=layers, uppers_bytes=both)
    run.say(f"   layers: {layers / 2**20:.1f} MiB, shared by both; uppers: {both / 2**10:.0f} KiB "
            f"together; two unshared copies would take {2 * layers / 2**20:.1f} MiB")
    run.undo()
    return seen

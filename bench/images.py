#!/usr/bin/env python3
"""Benchmark: images against umoci, runc and bwrap, in one run, every ratio printed.

The images are made with umoci (``umoci new``/``raw add-layer``/``tag``, each layer a GNU tar) from busybox and the files
of this machine's Python standard library (about 30 MB, split in ten parts):

* ``three``: busybox, then parts 1-5, then parts 6-9 (three layers);
* ``ten``: busybox, then each part on its own layer (ten layers); ``one``: the same files in
  one layer; ``other``: the busybox layer of ``three`` (the same blob) and a small layer.

Measured, each variant's runs interleaved with the others' (median of ``--runs``):

1. import and unpack ``three`` into an empty store (``recipes.images.import_image``, native
   backend: zlib; shell backend: ``gzip -dc``) against ``umoci unpack`` of the same layout
   (goal: <= 0.5x);
2. start-to-exit of ``true`` from ``three`` with the warm Python API
   (``recipes.container.run_container(image=...)``, native backend) against ``runc run`` on
   the bundle ``umoci unpack`` made of it (root read-only), beside ``bwrap`` on the same
   root and the CLI (``invoke container-run --image``, a new Python each time) (goal: API
   <= 0.5x runc); ``ten`` against ``one`` with the API (goal: within 1.2x);
3. disk (``du``): 20 containers of ``three`` that each wrote a file add only their
   directories (upper, work) and the store does not grow; importing ``other`` after
   ``three`` stores the shared busybox layer once (one new layer).

Everything is made under a directory of its own (the store through ``NSR_STORE_DIR``) and
removed afterwards, the containers too. The machine's load average is printed before and
after. Needs root, umoci and runc (bwrap is optional).

    .venv/bin/python bench/images.py --runs 7

``--big`` measures only what a 300 MB image costs: one made with umoci from parts of this
machine's /usr (BIG_LAYERS, busybox in the first layer), imported with each backend against
``umoci unpack`` (wall and CPU, children's included), imported again (layers known), and
the start of ``true`` from it with the warm API.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Callable

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from nsutil.backend import Runner  # noqa: E402
from recipes import container  # noqa: E402
from recipes import images  # noqa: E402
from recipes.container import ids, lifecycle  # noqa: E402
from recipes.container.rootfs import find_busybox  # noqa: E402
from recipes.images import decompress  # noqa: E402

#: the native backend's inflate: the isal package's, else zlib's
INFLATE = decompress.inflate_lib.__name__.split(".")[-1].replace("isal_zlib", "isal")

SOURCE = os.path.dirname(os.__file__)       # this Python's standard library
SOURCE_BYTES = 30 << 20
PARTS = 10
CONTAINERS = 20


def remove_trees(*paths: str) -> None:
    """Remove each of ``paths`` that exists (a store, an unpacked bundle)."""
    for path in paths:
        if os.path.lexists(path):
            images.remove_tree(path)


def check(argv: list[str], **kw) -> str:
    """Run a tool; its stdout (the bench stops with its stderr when it fails)."""
    done = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)
    if done.returncode != 0:
        raise SystemExit(f"bench: {' '.join(argv)} exited {done.returncode}: {done.stderr[-300:]!r}")
    return done.stdout


def du(*paths: str) -> int:
    """Bytes on disk under ``paths`` (``du -s -B1 -c``: hardlinks counted once)."""
    out = check(["du", "-s", "-c", "-B1", *paths])
    return int(out.splitlines()[-1].split()[0])


# --- the images -------------------------------------------------------------------------------

def make_parts(tree: str) -> list[str]:
    """``tree/p0``: busybox in /bin (sh and true linked); ``tree/p1..p9``: the standard
    library's files (up to SOURCE_BYTES) under /usr/pN/, the parts of about one size."""
    p0 = os.path.join(tree, "p0")
    os.makedirs(os.path.join(p0, "bin"))
    shutil.copy2(find_busybox(), os.path.join(p0, "bin", "busybox"))
    for applet in ("sh", "true"):
        os.symlink("busybox", os.path.join(p0, "bin", applet))
    files, total = [], 0
    for dirpath, dirnames, names in os.walk(SOURCE):
        dirnames[:] = sorted(d for d in dirnames if d not in ("__pycache__", "site-packages",
                                                               "dist-packages"))
        for name in sorted(names):
            path = os.path.join(dirpath, name)
            if os.path.isfile(path) and not os.path.islink(path) and total < SOURCE_BYTES:
                files.append(path)
                total += os.path.getsize(path)
    parts = [p0]
    for i in range(1, PARTS):
        parts.append(os.path.join(tree, f"p{i}"))
    filled = [0] * PARTS
    for path in files:                     # each file to the emptiest part so far
        i = min(range(1, PARTS), key=lambda k: filled[k])
        filled[i] += os.path.getsize(path)
        dest = os.path.join(parts[i], f"usr/p{i}", os.path.relpath(path, SOURCE))
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        shutil.copy2(path, dest)
    return parts


def merged(tree: str, name: str, parts: list[str]) -> str:
    """One directory with the files of ``parts`` (their paths do not overlap)."""
    dest = os.path.join(tree, name)
    os.mkdir(dest)
    for part in parts:
        check(["cp", "-a", f"{part}/.", dest])
    return dest


def make_images(work: str) -> str:
    """The layout with the tags three, ten, one, other (see the module doc); its path."""
    tree, layout = os.path.join(work, "tree"), os.path.join(work, "oci")
    parts = make_parts(tree)
    check(["umoci", "init", "--layout", layout])

    def insert(tag: str, src: str) -> None:
        # a layer of src's files (GNU tar), added as it is (umoci insert's layers of big
        # directories came out truncated with Debian's umoci 0.4.7)
        tar = os.path.join(work, "layer.tar")
        check(["tar", "-C", src, "--numeric-owner", "-cf", tar, "."])
        check(["umoci", "raw", "add-layer", "--image", f"{layout}:{tag}", tar])
        os.unlink(tar)

    check(["umoci", "new", "--image", f"{layout}:base"])
    check(["umoci", "config", "--image", f"{layout}:base", "--config.env", "PATH=/bin"])
    insert("base", parts[0])
    for tag in ("three", "ten", "other"):
        check(["umoci", "tag", "--image", f"{layout}:base", tag])
    insert("three", merged(tree, "g1", parts[1:6]))
    insert("three", merged(tree, "g2", parts[6:]))
    for part in parts[1:]:
        insert("ten", part)
    small = os.path.join(tree, "small")
    os.makedirs(os.path.join(small, "etc"))
    with open(os.path.join(small, "etc", "other"), "w") as f:
        f.write("another image on the same base\n")
    insert("other", small)
    check(["umoci", "new", "--image", f"{layout}:one"])
    check(["umoci", "config", "--image", f"{layout}:one", "--config.env", "PATH=/bin"])
    insert("one", merged(tree, "all", parts))
    return layout


# --- the measures -----------------------------------------------------------------------------

def interleaved(variants: dict[str, Callable[[], None]], runs: int,
                after: Callable[[], None] | None = None) -> dict[str, list[float]]:
    """Wall times of each variant, one of each per round (one untimed warm-up round);
    ``after`` runs untimed after every call (to undo what it made)."""
    times: dict[str, list[float]] = {name: [] for name in variants}
    for round_ in range(runs + 1):
        for name, fn in variants.items():
            t = time.perf_counter()
            fn()
            took = time.perf_counter() - t
            if after:
                after()
            if round_:
                times[name].append(took)
    return times


def median_ms(times: list[float]) -> float:
    return statistics.median(times) * 1000


def goal(ok: bool) -> str:
    return "goal met" if ok else "goal NOT met"


def bench_import(layout: str, work: str, runs: int) -> dict[str, float]:
    """Medians (s) of import+unpack of ``three`` into an empty store (native and shell
    backends), and of umoci unpack."""
    store_dir, bundle = os.path.join(work, "s-import"), os.path.join(work, "b-import")

    def ours(backend: str) -> Callable[[], None]:
        return lambda: images.import_image(f"{layout}:three", "nsr-bench/three",
                                           images.Store(store_dir), backend=backend)

    def umoci() -> None:
        check(["umoci", "unpack", "--image", f"{layout}:three", bundle])

    def clean() -> None:
        remove_trees(store_dir, bundle)

    t = interleaved({"native": ours("native"), "shell": ours("shell"), "umoci": umoci}, runs,
                    after=clean)
    return {k: statistics.median(v) for k, v in t.items()}


def runc_bundle(layout: str, work: str) -> str:
    """``umoci unpack`` of ``three``, its config set to run ``true``, root read-only."""
    bundle = os.path.join(work, "bundle")
    check(["umoci", "unpack", "--image", f"{layout}:three", bundle])
    path = os.path.join(bundle, "config.json")
    with open(path) as f:
        cfg = json.load(f)
    cfg["process"].update(terminal=False, args=["true"])
    cfg["root"] = {"path": "rootfs", "readonly": True}
    with open(path, "w") as f:
        json.dump(cfg, f)
    return bundle


def bench_start(bundle: str, work: str, runs: int) -> dict[str, list[float]]:
    """Start-to-exit of ``true``: API on three, ten, one; runc; bwrap; the CLI."""
    null = os.open(os.devnull, os.O_RDWR)

    def api(tag: str) -> Callable[[], None]:
        def go() -> None:
            with Runner(backend="native") as run:
                code = container.run_container(run, ["true"], image=f"nsr-bench/{tag}",
                                               stdin=null, stdout=null, stderr=null)
            if code != 0:
                raise SystemExit(f"bench: a container of {tag} exited {code}")
        return go

    state, counter = os.path.join(work, "runc-state"), iter(range(10**6))
    invoke = os.path.join(os.path.dirname(sys.executable), "invoke")   # this environment's
    variants = {"API three (3 layers)": api("three"), "API one (1 layer)": api("one"),
                "API ten (10 layers)": api("ten"),
                "runc run": lambda: check(["runc", "--root", state, "run", "--bundle", bundle,
                                           f"nsr-bench-{next(counter)}"]),
                "CLI container-run --image": lambda: check(
                    [invoke, "container-run", "--image", "nsr-bench/three", "--backend",
                     "native", "--", "true"], cwd=ROOT)}
    if shutil.which("bwrap"):
        variants["bwrap"] = lambda: check(
            ["bwrap", "--unshare-pid", "--unshare-uts", "--unshare-ipc", "--unshare-net",
             "--ro-bind", os.path.join(bundle, "rootfs"), "/", "--proc", "/proc",
             "--dev", "/dev", "--die-with-parent", "--", "/bin/true"])
    try:
        return interleaved(variants, runs)
    finally:
        os.close(null)


def bench_disk(store: images.Store, layout: str) -> tuple[bool, bool]:
    """20 containers of ``three``, each writing a file, kept (``rm=False``), then removed;
    then ``other`` imported. Prints the figures; returns whether each goal is met."""
    layers = [store.diff(d["diff_id"]) for d in images.find("nsr-bench/three", store)["layers"]]
    store_before, layers_bytes = du(store.root), du(*layers)
    names = [f"nsr-c-bench-d{i}" for i in range(CONTAINERS)]
    dirs = []
    try:
        for name in names:
            with Runner(backend="native") as run:
                container.run_container(run, ["sh", "-c", f"echo {name} > /written"],
                                        image="nsr-bench/three", name=name, rm=False,
                                        stdout=subprocess.DEVNULL)
            dirs.append(ids.resolve(name)["dir"])
        store_after = du(store.root)
        cdirs, uppers = du(*dirs), du(*(os.path.join(d, "upper") for d in dirs))
    finally:
        for name in names[:len(dirs) + 1]:
            try:
                rec = ids.resolve(name)
            except Exception:       # noqa: BLE001 -- not made: nothing to remove
                continue
            with Runner(backend="native") as run:
                lifecycle.remove(run, rec, force=True)
    one_ok = store_after == store_before and cdirs < layers_bytes // 10
    print(f"  {CONTAINERS} containers of three: store {store_before / 2**20:.1f} MiB before, "
          f"{store_after / 2**20:.1f} MiB with them; their directories {cdirs / 2**10:.0f} KiB "
          f"in all (uppers {uppers / 2**10:.0f} KiB); the layers {layers_bytes / 2**20:.1f} MiB "
          f"once ({CONTAINERS} copies: {CONTAINERS * layers_bytes / 2**20:.0f} MiB): {goal(one_ok)}")
    before = du(store.root)
    done = images.import_image(f"{layout}:other", "nsr-bench/other", store)
    grew = du(store.root) - before
    base = du(layers[0])
    two_ok = done.new_layers == 1 and grew < base
    print(f"  import of other (shares three's {base / 2**20:.1f} MiB base layer): "
          f"{done.new_layers} new layer(s), store grew {grew / 2**10:.0f} KiB: {goal(two_ok)}")
    return one_ok, two_ok


# --- --big: a 300 MB image made from parts of this machine's /usr ---------------------------

#: the big image's layers: (directories of /usr, relative to /); busybox goes in the first
BIG_LAYERS = [["usr/libexec", "usr/lib/python3"], ["usr/share/doc"],
              ["usr/share/vim", "usr/share/icons"]]


def make_big(work: str) -> str:
    """The layout ``big`` in WORK/big-oci: three gzip layers of /usr's parts (BIG_LAYERS),
    busybox in /bin of the first, added with ``umoci raw add-layer`` (GNU tar)."""
    layout, tree = os.path.join(work, "big-oci"), os.path.join(work, "big-tree")
    p0 = os.path.join(tree, "p0")
    os.makedirs(os.path.join(p0, "bin"))
    shutil.copy2(find_busybox(), os.path.join(p0, "bin", "busybox"))
    for applet in ("sh", "true"):
        os.symlink("busybox", os.path.join(p0, "bin", applet))
    check(["umoci", "init", "--layout", layout])
    check(["umoci", "new", "--image", f"{layout}:big"])
    check(["umoci", "config", "--image", f"{layout}:big", "--config.env", "PATH=/bin"])
    for i, dirs in enumerate(BIG_LAYERS):
        tar = os.path.join(work, "layer.tar")
        argv = ["tar", "--numeric-owner", "--ignore-failed-read", "-cf", tar]
        argv += (["-C", p0, "."] if i == 0 else []) + ["-C", "/", *[d for d in dirs
                                                                     if os.path.isdir("/" + d)]]
        done = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        if done.returncode not in (0, 1):        # 1: a file changed as it was read
            raise SystemExit(f"bench: {' '.join(argv)} exited {done.returncode}: {done.stderr[-300:]!r}")
        check(["umoci", "raw", "add-layer", "--image", f"{layout}:big", tar])
        os.unlink(tar)
    return layout


def cpu_of(fn: Callable[[], None]) -> float:
    """User + system CPU seconds of ``fn``, its children's included."""
    before = os.times()
    fn()
    after = os.times()
    return sum(after[:4]) - sum(before[:4])


def bench_big(work: str, runs: int) -> None:
    """What the 300 MB image costs: import (native and shell backends) against ``umoci
    unpack``, interleaved, wall and CPU; then the start of ``true`` from it (warm API)
    against the small ``three``."""
    layout = make_big(work)
    blobs = du(os.path.join(layout, "blobs"))
    store_dir, bundle = os.path.join(work, "s-big"), os.path.join(work, "b-big")
    cpu: dict[str, list[float]] = {"native": [], "shell": [], "umoci": []}

    def ours(backend: str) -> Callable[[], None]:
        return lambda: cpu[backend].append(cpu_of(lambda: images.import_image(
            f"{layout}:big", "nsr-bench/big", images.Store(store_dir), backend=backend)))

    def umoci() -> None:
        cpu["umoci"].append(cpu_of(lambda: check(["umoci", "unpack", "--image",
                                                  f"{layout}:big", bundle])))

    def clean() -> None:
        remove_trees(store_dir, bundle)

    t = interleaved({"native": ours("native"), "shell": ours("shell"), "umoci": umoci}, runs,
                    after=clean)
    med = {k: statistics.median(v) for k, v in t.items()}
    cpus = {k: statistics.median(v[1:]) for k, v in cpu.items()}
    print(f"big image (3 layers of /usr: {', '.join('+'.join(d) for d in BIG_LAYERS)}; "
          f"{blobs / 1e6:.0f} MB of gzip blobs), load average {load()}:")
    for k in ("native", "shell", "umoci"):
        label = {"native": f"image-import, native ({INFLATE})", "shell": "image-import, shell (gzip -dc)",
                 "umoci": "umoci unpack"}[k]
        print(f"  {label:32} {med[k]:6.2f} s wall, {cpus[k]:6.2f} s CPU "
              f"({med[k] / med['umoci']:.2f}x umoci's wall)")
    store = images.Store(store_dir)
    images.import_image(f"{layout}:big", "nsr-bench/big", store, backend="native")
    t0 = time.perf_counter()
    images.import_image(f"{layout}:big", "nsr-bench/big2", store, backend="native")
    again = time.perf_counter() - t0
    print(f"  the store then holds {du(store.path('layers')) / 1e6:.0f} MB of layers, "
          f"{du(store.path('blobs')) / 1e6:.0f} MB of blobs; a second import of it (layers "
          f"known: only verified) {again:.2f} s")
    os.environ["NSR_STORE_DIR"] = store_dir       # run_container's store
    null = os.open(os.devnull, os.O_RDWR)

    def api() -> None:
        with Runner(backend="native") as run:
            code = container.run_container(run, ["true"], image="nsr-bench/big",
                                           stdin=null, stdout=null, stderr=null)
        if code != 0:
            raise SystemExit(f"bench: a container of big exited {code}")
    try:
        starts = interleaved({"big": api}, runs)["big"]
    finally:
        os.close(null)
    q = statistics.quantiles(starts, n=4)
    print(f"  start-to-exit of `true` from it (warm API, native): {median_ms(starts):.1f} ms "
          f"median ({q[0] * 1000:.1f}-{q[2] * 1000:.1f}); load average {load()}")


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=7, help="timed runs of each variant (>= 5; default 7)")
    ap.add_argument("--big", action="store_true",
                    help="only the 300 MB image made from parts of this machine's /usr: its "
                         "import (both backends) against umoci unpack, and its start")
    args = ap.parse_args()
    if args.runs < 5:
        raise SystemExit("bench: --runs must be at least 5")
    if os.geteuid() != 0:
        raise SystemExit("bench: needs root")
    for tool in ("umoci", "runc"):
        if shutil.which(tool) is None:
            raise SystemExit(f"bench: {tool} is not installed (./bootstrap pytest installs it)")
    work = tempfile.mkdtemp(prefix="nsr-bench-img-", dir="/var/tmp")
    store_dir = os.path.join(work, "store")
    os.environ["NSR_STORE_DIR"] = store_dir          # the CLI's runs inherit it
    print(f"images bench: {args.runs} runs each, interleaved; {os.cpu_count()} CPUs; "
          f"load average {load()} at the start")
    try:
        if args.big:
            bench_big(work, args.runs)
            return
        layout = make_images(work)
        t = bench_import(layout, work, args.runs)
        ratio = t["native"] / t["umoci"]
        print(f"import+unpack of three (3 layers): {t['native'] * 1000:.0f} ms (native, {INFLATE}), "
              f"{t['shell'] * 1000:.0f} ms (shell: gzip -dc); umoci unpack {t['umoci'] * 1000:.0f} "
              f"ms: {ratio:.2f}x, {t['shell'] / t['umoci']:.2f}x (<= 0.5x: {goal(ratio <= 0.5)}); "
              f"load average {load()}")
        store = images.Store(store_dir)
        for tag in ("three", "one", "ten"):
            images.import_image(f"{layout}:{tag}", f"nsr-bench/{tag}", store)
        times = bench_start(runc_bundle(layout, work), work, args.runs)
        runc = median_ms(times["runc run"])
        print(f"start-to-exit of `true` (median ms, p25-p75, vs runc):")
        for name, t in times.items():
            q = statistics.quantiles(t, n=4)
            print(f"  {name:28} {median_ms(t):7.1f} ({q[0] * 1000:.1f}-{q[2] * 1000:.1f}) "
                  f"{median_ms(t) / runc:5.2f}x")
        api = median_ms(times["API three (3 layers)"]) / runc
        print(f"  warm API vs runc run: {api:.2f}x (<= 0.5x: {goal(api <= 0.5)})")
        grow = median_ms(times["API ten (10 layers)"]) / median_ms(times["API one (1 layer)"])
        print(f"  10 layers vs 1 layer of the same files: {grow:.2f}x "
              f"(<= 1.2x: {goal(grow <= 1.2)})")
        print("disk (du):")
        bench_disk(store, layout)
    finally:
        images.remove_tree(work)
        print(f"load average {load()} at the end; {work} removed")


if __name__ == "__main__":
    main()

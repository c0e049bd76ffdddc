"""Images against the real kernel, with images made by tools nobody here wrote.

umoci makes a three-layer OCI layout (a deleted file, a replaced directory, an opaque
directory of the tests' own; owners, setuid, hardlink, symlink, ``user.*`` xattr and a file
capability) and skopeo copies it to an oci-archive and a docker-archive; Docker 25's
``docker save`` form is built by the format (no Debian tool writes it). Each test has a
store of its own (``NSR_STORE_DIR`` under its tmp_path). The root filesystem nsrecipes
assembles (its layers mounted as overlay lowers) must equal what ``umoci raw unpack`` makes,
entry by entry; bad and hostile inputs are one line and leave nothing in the store.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import subprocess
import sys
import tarfile

import pytest

import imagekit
from nsutil import process
from nsutil import syscalls as sc
from nsutil.errors import Conflict, InvalidInput, NotFound, NsrError
from recipes import images
from recipes.images import store as storemod

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
INVOKE = [sys.executable, "-m", "invoke", "--search-root", ROOT]


@pytest.fixture(autouse=True)
def _root():
    if os.geteuid() != 0:
        pytest.skip("unpacking owners and device whiteouts, and mounting overlays, need root")
    for tool in ("umoci", "skopeo"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed (./bootstrap pytest installs it)")


@pytest.fixture(scope="module")
def made(tmp_path_factory) -> dict[str, str]:
    """The umoci image in every form: layout ref, oci-archive, docker-archive, Docker 25."""
    work = str(tmp_path_factory.mktemp("images"))
    ref = imagekit.umoci_image(work)
    out = {"layout": ref, **imagekit.convert(ref, work)}
    out["docker25"] = imagekit.docker25(out["docker-archive"], os.path.join(work, "d25.tar"))
    return out


@pytest.fixture
def store(tmp_path, monkeypatch):
    """A store of the test's own (:func:`imagekit.own_store`)."""
    with imagekit.own_store(tmp_path, monkeypatch) as own:
        yield own


def store_entries(store: storemod.Store) -> dict[str, list[str]]:
    """What the store holds, per kind (tmp/ must be empty after any import)."""
    return {d: sorted(os.listdir(store.path(d))) if os.path.isdir(store.path(d)) else []
            for d in ("blobs/sha256", "layers", "images", "l", "tmp", "uses")}


def assert_empty(store: storemod.Store) -> None:
    got = store_entries(store)
    assert got == {k: [] for k in got}, got
    assert store.refs() == {}


# --- the same image, four ways -------------------------------------------------------------

def test_same_id_every_way_layers_stored_once(made, store, backend):
    """OCI layout, oci-archive, docker save (old form, skopeo) and Docker 25's form give one
    id; the layers are unpacked once (gzip -dc on the shell backend, zlib on the native)."""
    got = {}
    for kind in ("layout", "oci-archive", "docker-archive", "docker25"):
        got[kind] = images.import_image(made[kind], f"nsr/{kind.replace('2', 'x')}:v1",
                                        backend=backend)
    ids = {g.record["id"] for g in got.values()}
    assert len(ids) == 1, {k: g.record["id"] for k, g in got.items()}
    assert got["layout"].kind == "OCI image layout" and got["layout"].new_layers == 3
    assert got["oci-archive"].kind == "oci-archive"
    assert got["docker-archive"].kind == "docker save tar"
    assert got["docker25"].kind == "docker save tar (Docker 25, OCI form)"
    assert all(g.new_layers == 0 for k, g in got.items() if k != "layout")
    assert len(os.listdir(store.path("layers"))) == 3
    # the first import's record and blobs stay (3 layers, config, manifest): the others
    # only add names, and nothing is unused
    assert len(os.listdir(store.path("blobs/sha256"))) == 5
    assert images.inspect("nsr/oci-archive:v1")["Source"] == "OCI image layout"
    assert images.prune().blobs == []
    rows = images.list_images()
    assert [r.name for r in rows] == ["nsr/docker-archive", "nsr/dockerx5", "nsr/layout",
                                      "nsr/oci-archive"]
    assert store_entries(store)["tmp"] == []


def test_import_cli_names_and_zstd(made, store, tmp_path):
    """The CLI's import line; a docker save tar names itself (RepoTags); zstd layers."""
    out = subprocess.run(INVOKE + ["image-import", made["docker-archive"]], capture_output=True,
                         text=True, check=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("imported nsr/test:v1 (docker save tar): id sha256:")
    zst = imagekit.write_layout(str(tmp_path / "zst"), [imagekit.tar_bytes(
        [("z/", "dir", b""), ("z/file", "file", "zstd\n")])], compress="zstd")
    done = images.import_image(zst, "nsr/zstd", backend="native")
    assert done.name == "nsr/zstd:latest"
    with open(os.path.join(store.diff(done.record["layers"][0]["diff_id"]), "z", "file")) as f:
        assert f.read() == "zstd\n"
    js = json.loads(subprocess.run(INVOKE + ["image-ls", "--json"], capture_output=True,
                                   text=True, check=True).stdout)
    assert {(r["name"], r["tag"], r["layers"]) for r in js} == {("nsr/test", "v1", 3),
                                                               ("nsr/zstd", "latest", 1)}


def test_gzip_through_isal_and_zlib_one_member_or_two(made, store, tmp_path, monkeypatch):
    """The native backend inflates with the isal package's decompressobj, or zlib's where it
    is missing: both give the umoci image the same id, and both read a layer written as
    two gzip members (as a parallel gzip writes them)."""
    import zlib
    from recipes.images import decompress
    libs = [zlib]
    try:
        from isal import isal_zlib
        libs.append(isal_zlib)
    except ImportError:
        pass
    body = imagekit.tar_bytes([("a/", "dir", b""), *[(f"a/{i}", "file", os.urandom(40000))
                                                     for i in range(20)]])
    two = imagekit.write_layout(str(tmp_path / "two"), [body], compress="gzip2")
    ids = set()
    for lib in libs:
        monkeypatch.setattr(decompress, "inflate_lib", lib)
        done = images.import_image(made["layout"], "nsr/gz", backend="native")
        assert done.new_layers == 3
        ids.add(done.record["id"])
        done = images.import_image(two, "nsr/two", backend="native")
        assert done.new_layers == 1
        assert sorted(os.listdir(os.path.join(store.diff(done.record["layers"][0]["diff_id"]),
                                              "a"))) == sorted(str(i) for i in range(20))
        images.remove("nsr/gz")
        images.remove("nsr/two")
    assert len(ids) == 1
    assert_empty_but_probe(store)


def _shim(tmp_path, tool: str) -> str:
    """A directory with a ``tool`` that notes its arguments in ``calls`` and runs the real one
    (to see that the shell backend ran it)."""
    shims = tmp_path / "shims"
    shims.mkdir(exist_ok=True)
    (shims / tool).write_text(f"#!/bin/sh\necho {tool} \"$@\" >> {shims}/calls\n"
                              f"exec {shutil.which(tool)} \"$@\"\n")
    (shims / tool).chmod(0o755)
    return str(shims)


def test_zstd_layers_on_both_backends(store, tmp_path, backend, monkeypatch):
    """tar+zstd layers: the shell backend runs `zstd -dc`, the native one the zstandard
    package; a damaged one is one line either way, naming the tool on the shell backend;
    both give the same layer."""
    if backend == "shell" and shutil.which("zstd") is None:
        pytest.skip("zstd is not installed (./bootstrap pytest installs it)")
    shims = _shim(tmp_path, "zstd") if shutil.which("zstd") else str(tmp_path)
    monkeypatch.setenv("PATH", f"{shims}:{os.environ['PATH']}")
    body = imagekit.tar_bytes([("z/", "dir", b""), ("z/file", "file", "zstd\n"),
                               ("z/big", "file", os.urandom(3 << 20))])
    zst = imagekit.write_layout(str(tmp_path / "zst"), [body], compress="zstd")
    done = images.import_image(zst, "nsr/zstd", backend=backend)
    with open(os.path.join(store.diff(done.record["layers"][0]["diff_id"]), "z", "file")) as f:
        assert f.read() == "zstd\n"
    called = (tmp_path / "shims" / "calls")
    assert (called.exists() and called.read_text() == "zstd -dc\n") == (backend == "shell")
    images.remove("nsr/zstd")
    blob = imagekit.layer_blobs(zst)[0]
    data = bytearray(open(blob, "rb").read())
    data[0] ^= 0xFF                  # its magic number: not a zstd frame
    # the damaged zstd bytes as a layer whose digest is right (only its content is bad)
    damaged = imagekit.write_layout(str(tmp_path / "damaged"), [bytes(data)], compress="",
                                    diff_ids=[imagekit.layer_digest(body)],
                                    media_type="application/vnd.oci.image.layer.v1.tar+zstd")
    with pytest.raises(InvalidInput) as err:
        images.import_image(damaged, "nsr/damaged", backend=backend)
    text = str(err.value)
    assert "\n" not in text and "cannot be decompressed" in text, text
    assert ("(zstd -dc): " in text) == (backend == "shell"), text
    assert_empty_but_probe(store)


def test_zstd_tool_missing_is_one_line(store, tmp_path, monkeypatch):
    """The shell backend without `zstd` on PATH: one line naming the package, nothing kept;
    auto then falls back to the zstandard package."""
    zst = imagekit.write_layout(str(tmp_path / "zst"), [imagekit.tar_bytes(
        [("f", "file", "x\n")])], compress="zstd")
    monkeypatch.setenv("PATH", str(tmp_path / "nothing-here"))
    with pytest.raises(NsrError) as err:
        images.import_image(zst, "nsr/zstd", backend="shell")
    assert str(err.value) == ("`zstd` is not installed (hint: apt-get install zstd, or use "
                              "--backend native)")
    assert_empty_but_probe(store)
    assert images.import_image(zst, "nsr/zstd", backend="auto").new_layers == 1


# --- the assembled rootfs equals umoci's ------------------------------------------------------

def _walk(root: str) -> dict[str, tuple]:
    """Every entry below ``root``: type, mode, owner, size and content, link target, xattrs."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            kind = stat.S_IFMT(st.st_mode)
            extra: object = None
            if stat.S_ISREG(st.st_mode):
                with open(path, "rb") as f:
                    extra = (st.st_size, hashlib.sha256(f.read()).hexdigest(), st.st_mtime_ns,
                             st.st_nlink)
            elif stat.S_ISLNK(st.st_mode):
                extra = os.readlink(path)
            xattrs = {} if stat.S_ISLNK(st.st_mode) else {
                x: os.getxattr(path, x).hex() for x in os.listxattr(path)
                if x.startswith("user.") or x == "security.capability"}
            out[os.path.relpath(path, root)] = (kind, stat.S_IMODE(st.st_mode), st.st_uid,
                                                st.st_gid, extra, sorted(xattrs.items()))
    return out


def _merged_walk(lowers: list[str], scratch: str) -> dict[str, tuple]:
    """Mount the lowers as a read-only overlay in a child's own mount namespace and walk it."""
    merged = os.path.join(scratch, "merged")
    os.mkdir(merged)
    result = os.path.join(scratch, "walk.json")
    pid = process.fork()
    if pid == 0:
        code = 1
        try:
            sc.unshare(sc.CLONE_NEWNS)
            sc.make_propagation("/", "private", recursive=True)
            sc.mount("overlay", merged, "overlay", sc.MS_RDONLY, "lowerdir=" + ":".join(lowers))
            with open(result, "w") as f:
                json.dump(_walk(merged), f)
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert status == 0
    with open(result) as f:
        return json.load(f)


def _norm(entries: dict[str, tuple]) -> dict[str, tuple]:
    return json.loads(json.dumps(entries))


def test_assembled_rootfs_equals_umoci_raw_unpack(made, store, tmp_path):
    """Entry by entry (type, mode, owner, size, content, mtime, link target, user.* and
    security.capability xattrs): the overlay of nsrecipes' layers == umoci raw unpack."""
    images.import_image(made["layout"], "nsr/test:v1")
    reference = str(tmp_path / "umoci-rootfs")
    imagekit.sh("umoci", "raw", "unpack", "--image", made["layout"], reference)
    want = _norm(_walk(reference))
    got = _merged_walk(images.for_container("nsr/test:v1").layers, str(tmp_path))
    assert got == want
    # the image's story is in there: deleted, replaced, opaque, metadata kept
    assert "gone" not in got and "old/x" not in got and "old/z" in got
    assert "opq/p1" not in got and "opq/p2" in got
    assert got["suid"][1:4] == [0o4755, 1000, 50]
    assert got["data/a"][4][3] == 2                          # a hardlink: two names


def test_whiteouts_are_overlayfs_whiteouts(made, store):
    """.wh.NAME -> char device 0/0 in the layer; .wh..wh..opq -> trusted.overlay.opaque=y."""
    rec = images.import_image(made["layout"], "nsr/test").record
    second, third = (store.diff(layer["diff_id"]) for layer in rec["layers"][1:])
    for rel in ("gone", "old/x", "old/y"):
        st = os.lstat(os.path.join(second, rel))
        assert stat.S_ISCHR(st.st_mode) and st.st_rdev == 0, rel
    assert not os.path.lexists(os.path.join(second, ".wh.gone"))
    assert os.getxattr(os.path.join(third, "opq"), "trusted.overlay.opaque") == b"y"
    assert not os.path.lexists(os.path.join(third, "opq", ".wh..wh..opq"))


# --- bad input: one line, nothing left ------------------------------------------------------------

def _bad_layouts(tmp_path, made) -> dict[str, tuple[str, str]]:
    """name -> (path to import, words the one line must have)."""
    ok = [imagekit.tar_bytes([("f", "file", "data\n")])]
    cases: dict[str, tuple[str, str]] = {}

    def copy(name: str) -> str:
        dest = str(tmp_path / name)
        shutil.copytree(made["layout"].rsplit(":", 1)[0], dest)
        return dest

    flipped = copy("flipped")
    blob = imagekit.layer_blobs(flipped)[1]
    data = bytearray(open(blob, "rb").read())
    data[len(data) // 2] ^= 0xFF
    open(blob, "wb").write(bytes(data))
    cases["digest mismatch"] = (flipped + ":v1", "does not match its digest")
    cut = copy("cut")
    blob = imagekit.layer_blobs(cut)[0]
    os.truncate(blob, os.path.getsize(blob) // 2)
    cases["truncated"] = (cut + ":v1", "is truncated")
    missing = copy("missing")
    os.unlink(imagekit.layer_blobs(missing)[2])
    cases["missing blob"] = (missing + ":v1", "has no blobs/sha256/")
    cases["unknown media type"] = (imagekit.write_layout(
        str(tmp_path / "media"), ok, media_type="application/vnd.example.layer+squashfs"),
        "unknown media type")
    cases["diff_id"] = (imagekit.write_layout(str(tmp_path / "diffid"), ok,
                                              diff_ids=["sha256:" + "0" * 64]),
                        "does not match the config's diff_id")
    cases["not gzip"] = (imagekit.write_layout(str(tmp_path / "notgz"), ok, compress="",
                                               media_type="application/vnd.oci.image.layer.v1.tar+gzip"),
                         "cannot be decompressed")
    not_image = tmp_path / "notimage.txt"
    not_image.write_text("hello\n")
    cases["not a tar"] = (str(not_image), "is not an image")
    empty = tmp_path / "emptydir"
    empty.mkdir()
    cases["not a layout"] = (str(empty), "is not an image")
    plain = str(tmp_path / "plain.tar")
    with tarfile.open(plain, "w") as tar:
        tar.add(str(not_image), "hello.txt")
    cases["tar, not an image"] = (plain, "is not an image")
    cases["no such ref"] = (made["layout"].rsplit(":", 1)[0] + ":v9", "has no image named 'v9'")
    return cases


def test_bad_inputs_one_line_nothing_left(made, store, tmp_path, backend):
    """Each bad input is one line with a hint (the CLI prints it as such: checked once, a
    Python start costs 12 s in the emulated VM) and leaves nothing in the store."""
    out = subprocess.run(INVOKE + ["image-import", str(tmp_path)], capture_output=True,
                         text=True, check=False)
    assert out.returncode == 1 and out.stdout == "", out
    assert out.stderr == (f"nsrecipes: {tmp_path} is not an image: no oci-layout and index.json, "
                          "no manifest.json (hint: give an OCI image layout directory (DIR or "
                          "DIR:REF), an oci-archive or a docker save tar)\n")
    for name, (path, words) in _bad_layouts(tmp_path, made).items():
        with pytest.raises(NsrError) as err:
            images.import_image(path, backend=backend)
        text = str(err.value)
        assert "\n" not in text and words in text and "(hint: " in text, (name, text)
        got = store_entries(store)
        assert got["layers"] == got["images"] == got["tmp"] == got["l"] == [], (name, got)
        assert got["blobs/sha256"] == [], (name, got)


def test_hostile_tars_refused(store, tmp_path, backend):
    """No entry may write outside the layer: .., absolute names, through a symlink made
    earlier, hardlinks to outside or through a symlink. Nothing outside is touched."""
    outside = tmp_path / "outside"
    outside.mkdir()
    target = str(outside)
    cases = {
        "dotdot": ([("../../../../../escaped", "file", "x")], "leaves the layer's directory"),
        "absolute": ([("/" + target.lstrip("/") + "/abs", "file", "x")], "absolute name"),
        "symlink": ([("s", "symlink", target), ("s/through", "file", "x")],
                    "goes through the symlink 's'"),
        "dir replaced by a symlink": ([("d/", "dir", b""), ("d/a", "file", "a"), ("d", "symlink", target),
                                       ("d/x", "file", "x")], "goes through the symlink 'd'"),
        "hardlink out": ([("h", "hardlink", "../../../../etc/passwd")],
                         "leaves the layer's directory"),
        "hardlink via symlink": ([("s", "symlink", "/etc"), ("h", "hardlink", "s/passwd")],
                                 "goes through the symlink 's'"),
    }
    for name, (entries, words) in cases.items():
        path = imagekit.write_layout(str(tmp_path / name.replace(" ", "-")),
                                     [imagekit.tar_bytes(entries)])
        with pytest.raises(InvalidInput) as err:
            images.import_image(path, "nsr/hostile", backend=backend)
        assert words in str(err.value), (name, str(err.value))
        assert os.listdir(target) == [], name
        assert_empty_but_probe(store)
    assert not os.path.exists("/escaped")


@pytest.mark.parametrize("cpus", [1, None], ids=["one-cpu", "all-cpus"])
def test_layers_unpacked_together_report_the_lowest_failure(store, tmp_path, backend, cpus,
                                                           monkeypatch):
    """Layers unpack in threads beside the copying of the next blobs: when several fail,
    the error is the lowest layer's, as a serial import would report it, and nothing stays.
    (Layer 2 writes outside; layer 3 writes outside too, or its blob is cut short.) With one
    CPU, one thread unpacks: layer 2 still waits behind layer 1 when layer 3's blob fails, and
    must still run. (``os.cpu_count`` is mocked to 1 there: this machine has more.)"""
    if cpus:
        monkeypatch.setattr(os, "cpu_count", lambda: cpus)
    bad = imagekit.tar_bytes([("../escaped", "file", "x")])
    big = imagekit.tar_bytes([(f"f{i:03d}", "file", os.urandom(64 << 10)) for i in range(64)])
    both = imagekit.write_layout(str(tmp_path / "both"), [big, bad, bad + b"\0" * 512])
    cut = imagekit.write_layout(str(tmp_path / "cut"), [big, bad, big + b"\0" * 512])
    blob = imagekit.layer_blobs(cut)[2]
    os.truncate(blob, os.path.getsize(blob) // 2)
    for path in (both, cut):
        with pytest.raises(InvalidInput) as err:
            images.import_image(path, "nsr/bad", backend=backend)
        assert str(err.value).startswith("layer 2 of 3 (") and "leaves the layer's directory" \
            in str(err.value), str(err.value)
        assert_empty_but_probe(store)
    assert not os.path.exists(str(tmp_path / "escaped"))


def assert_empty_but_probe(store: storemod.Store) -> None:
    got = store_entries(store)
    assert got["layers"] == got["images"] == got["tmp"] == got["blobs/sha256"] == [], got


# --- the store's commands -------------------------------------------------------------------------

def test_tag_rm_prune_shared_layers(made, store, tmp_path):
    """Two images sharing a base layer: it is stored once and shown as shared; image-rm
    of one keeps the shared layer; the last name takes the image; prune keeps used blobs."""
    base = imagekit.tar_bytes([("base/", "dir", b""), ("base/f", "file", "base\n")])
    one = imagekit.write_layout(str(tmp_path / "one"), [base, imagekit.tar_bytes([("one", "file", "1")])])
    two = imagekit.write_layout(str(tmp_path / "two"), [base, imagekit.tar_bytes([("two", "file", "2")])])
    a = images.import_image(one, "nsr/one")
    b = images.import_image(two, "nsr/two")
    assert (a.new_layers, b.new_layers) == (2, 1)
    rows = {r.name: r for r in images.list_images()}
    assert rows["nsr/one"].shared == rows["nsr/two"].shared == len("base\n")
    assert images.tag("nsr/one", "nsr/alias:x") == "nsr/alias:x"
    assert images.remove("nsr/one") == (a.record["id"], False)       # still tagged nsr/alias:x
    assert images.remove("nsr/alias:x") == (a.record["id"], True)
    left = sorted(os.listdir(store.path("layers")))
    assert len(left) == 2                                              # base + two's own
    with pytest.raises(NotFound):
        images.find("nsr/one")
    assert images.prune().layers == []
    images.remove(b.record["id"][7:19])
    assert_empty_but_probe(store)
    assert os.listdir(store.path("l")) == []


def test_rm_refused_while_a_container_uses_it(made, store):
    images.import_image(made["layout"], "nsr/test")
    rec = images.find("nsr/test")
    path = images.use(rec["id"], "nsr-c-imgtest")
    try:
        with pytest.raises(Conflict) as err:
            images.remove("nsr/test")
        assert "used by the container(s) nsr-c-imgtest" in str(err.value)
    finally:
        images.drop(path)
    images.remove("nsr/test")


def test_cleanup_removes_half_imports_only(made, store):
    """A dead import's tmp/import-PID-* is a leftover; a live one's and images are not."""
    images.import_image(made["layout"], "nsr/test")
    dead = process.fork()
    if dead == 0:
        os._exit(0)
    os.waitpid(dead, 0)
    stale = store.path("tmp", f"import-{dead}-dead")
    live = store.path("tmp", f"import-{os.getpid()}-live")
    for d in (stale, live):
        os.makedirs(os.path.join(d, "layers", "x"))
    found = images.leftovers()
    assert [item.name for item in found] == [stale]
    found[0].remove()
    assert not os.path.exists(stale) and os.path.exists(live)
    shutil.rmtree(live)
    assert images.find("nsr/test")
    from recipes.ops import cleanup
    assert "recipes.images" in cleanup.PROVIDERS


# --- containers from images -------------------------------------------------------------------

def _run(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(INVOKE + ["container-run", *args], capture_output=True, text=True,
                          check=False, env=env, timeout=120)


def test_container_run_applies_the_config(made, store, backend, tmp_path):
    """Cmd with Env, WorkingDir and User app:wheel (names from the image's files); a
    command given replaces Cmd; --user NAME too, and the other options still work;
    --image with --rootfs is one line."""
    images.import_image(made["layout"], "nsr/test")
    out = _run("--backend", backend, "--image", "nsr/test")
    assert (out.returncode, out.stdout) == (0, "hello from /data as 1000:10\n"), out.stderr
    (tmp_path / "vol").mkdir()
    (tmp_path / "vol" / "f").write_text("vol\n")
    out = _run("--backend", backend, "--image", "nsr/test", "--user", "root", "--env",
               "X=1", "--read-only", "--volume", f"{tmp_path}/vol:/mnt:ro", "--memory", "64M",
               "--", "sh", "-c", "echo $X $GREETING $(id -u); cat /link /mnt/f; ls /opq; "
               "touch /x || echo ro")
    assert (out.returncode, out.stdout) == (0, "1 hello 0\nalpha\nvol\np2\nro\n"), out.stderr
    out = _run("--image", "nsr/test", "--rootfs", "/tmp", "--", "true")
    assert out.returncode == 2 and out.stderr.strip() == (
        "nsrecipes: --image and --rootfs exclude each other (hint: a container's root "
        "filesystem is either an image's layers or a directory: give one of them)")
    out = _run("--image", "nsr/test", "--user", "nobody", "--", "true")
    assert out.returncode == 2 and "user 'nobody' is not in the image" in out.stderr
    assert os.listdir(store.path("uses")) == []


def _kernel_at_least(major: int, minor: int) -> bool:
    numbers = [int(x) for x in os.uname().release.split("-")[0].split(".")[:2]]
    return tuple(numbers) >= (major, minor)


def test_lowerdir_plus_probe_matches_the_kernel():
    """The probe finds overlayfs's ``lowerdir+`` exactly on Linux 6.8+ (this host: yes; the
    6.1 VM: no, its overlayfs has the legacy context that takes any key)."""
    from nsutil import fsmount
    assert fsmount.lowerdir_plus() == _kernel_at_least(6, 8)


def test_many_layers_past_the_page(store, tmp_path, backend):
    """90 layers: too long for the options' page as paths. The native backend on Linux 6.8+
    appends the long paths with fsconfig lowerdir+; the shell backend and older kernels
    mount short links relative to the store. Every layer is seen, the container's
    mountinfo shows the way taken, and --explain says it."""
    layers = [imagekit.busybox_layer()] + [
        imagekit.tar_bytes([(f"l/{i:03d}", "file", f"{i}\n")]) for i in range(89)]
    path = imagekit.write_layout(str(tmp_path / "many"), layers, compress="")
    images.import_image(path, "nsr/many")
    img = images.for_container("nsr/many", backend=backend)
    plus = backend == "native" and _kernel_at_least(6, 8)
    if plus:
        assert img.lowers.via == "fsconfig lowerdir+" and img.lowers.cwd is None
        assert img.lowers.paths[0].startswith(store.path("layers")), img.lowers.paths[0]
        shown, words = f"lowerdir+={store.path('layers')}/", "appended one by one with fsconfig lowerdir+"
    else:
        assert img.lowers.via == "short links" and img.lowers.cwd == store.root
        assert img.lowers.paths[0].startswith("l/")
        shown, words = "lowerdir=l/", "as short links"
    out = _run("--backend", backend, "--image", "nsr/many", "--", "sh", "-c",
               "ls /l | wc -l; grep ' / / ' /proc/self/mountinfo")
    assert out.returncode == 0, out.stderr
    count, mountline = out.stdout.split("\n", 1)
    assert count.strip() == "89"
    assert shown in mountline and mountline.count("/diff") == (90 if plus else 0), mountline[:300]
    out = _run("--explain", "--backend", backend, "--image", "nsr/many", "--", "sh", "-c", "true")
    assert out.returncode == 0 and words in out.stdout, out.stdout[-2000:]


@pytest.mark.userspace
def test_store_dir_defaults(monkeypatch, tmp_path):
    """root: /var/lib/nsrecipes; NSR_STORE_DIR wins; without root the user's data dir."""
    monkeypatch.delenv("NSR_STORE_DIR", raising=False)
    assert storemod.store_dir() == "/var/lib/nsrecipes"
    monkeypatch.setenv("NSR_STORE_DIR", str(tmp_path))
    assert storemod.store_dir() == str(tmp_path)
    monkeypatch.delenv("NSR_STORE_DIR")
    monkeypatch.setattr(storemod.rootless, "decide", lambda: True)
    monkeypatch.setenv("XDG_DATA_HOME", "/home/u/.data")
    assert storemod.store_dir() == "/home/u/.data/nsrecipes"
    monkeypatch.delenv("XDG_DATA_HOME")
    monkeypatch.setenv("HOME", "/home/u")
    assert storemod.store_dir() == "/home/u/.local/share/nsrecipes"


def test_cow_demo_on_an_image(made, store):
    """cow-demo --image: layers bottom-up, the mount line, a read from layer 1, a write
    copied up, a delete as a whiteout the other container does not see; nothing left."""
    images.import_image(made["layout"], "nsr/test")
    before = {n for n in os.listdir("/tmp") if n.startswith("nsr-cow-")}
    out = subprocess.run(INVOKE + ["cow-demo", "--image", "nsr/test"], capture_output=True,
                         text=True, check=False, timeout=120)
    assert out.returncode == 0, out.stderr
    text = out.stdout
    for words in ("3 layer(s) bottom-up", "layer 3: " + store.path("layers"),
                  "$ mount -t overlay overlay -o lowerdir=" + store.path("layers"),
                  "/etc/passwd comes from layer 1", "now exists: True; the layer's copy is "
                  "unchanged: True", "c--------- 0/0 (a whiteout: True); container 2 still has "
                  "/etc/group: True", "shared by both"):
        assert words in text, (words, text)
    assert {n for n in os.listdir("/tmp") if n.startswith("nsr-cow-")} == before


def test_store_on_overlayfs_is_one_line(made, tmp_path):
    """A store on overlayfs (a container's /var, the VM's): the import stops in one line
    naming NSR_STORE_DIR, and leaves no image behind."""
    from overlaytmp import run_in_overlay_tmp

    def attempt(tmp: str) -> str:
        os.environ["NSR_STORE_DIR"] = os.path.join(tmp, "store")
        try:
            images.import_image(made["layout"], "nsr/test")
        except NsrError as exc:
            return str(exc)
        return "imported"

    got, left = run_in_overlay_tmp(str(tmp_path), attempt)
    assert left["fstype"] == "overlay"
    assert got.startswith("the image store ") and " is on overlay at " in got, got
    assert "NSR_STORE_DIR" in got and "\n" not in got

"""Image tasks: image-import, image-pull, image-ls, image-inspect, image-tag, image-rm, image-prune."""
from __future__ import annotations

from cli.common import nsr_task

BACKEND_HELP = ("auto | shell | native: decompress the layers with `gzip -dc` / `zstd -dc` or "
                "in Python (isal or zlib, zstandard) (default: $NSR_BACKEND, else auto = the "
                "tool where installed); the tar is unpacked and checked in Python either way")


@nsr_task(help={"path": "an OCI image layout directory (DIR, or DIR:REF for one of its "
                        "ref names), an oci-archive tar, or a docker save tar",
                "name": "NAME[:TAG] to give the image (default: the name the archive "
                        "carries, e.g. docker save's RepoTags; else it is listed by id)",
                "backend": BACKEND_HELP})
def image_import(c, path, name=None, backend=None):
    """Import an image into the store: invoke image-import PATH [--name NAME[:TAG]]

    Every blob's sha256 and size is checked against its descriptor, and each layer's
    content against the config's diff_id, before anything is kept; each layer is unpacked
    once (whiteouts as overlayfs's) and shared by every image and container that uses it.
    The store: $NSR_STORE_DIR, else /var/lib/nsrecipes (root) or the user's data directory.
    Layers are decompressed by `gzip -dc`/`zstd -dc` (shell backend) or in Python (native).
    """
    from recipes import images
    done = images.import_image(path, name, backend=backend)
    rec = done.record
    print(f"imported {done.name or '<none>'} ({done.kind}): id {rec['id']}, "
          f"{len(rec['layers'])} layer(s), {done.new_layers} new, in {done.seconds:.2f} s")
    if done.skipped_devices:
        print(f"  device nodes skipped without root: {', '.join(done.skipped_devices[:5])}")
    if done.dropped_caps:
        print(f"  file capabilities dropped without root (setting one needs CAP_SETFCAP): "
              f"{', '.join(done.dropped_caps[:5])}")
    if done.dropped_xattrs:
        print(f"  user.* xattrs the store's filesystem does not keep (a tmpfs before Linux "
              f"6.6?), dropped: {', '.join(done.dropped_xattrs[:5])}")


@nsr_task(help={"json": "print JSON (one object per name: name, tag, id, layers, size, shared)"})
def image_ls(c, json=False):
    """List the images in the store: name, tag, id, layers, size, size shared with others."""
    from recipes import images
    rows = images.list_images()
    if json:
        print(images.dumps([r.as_dict() for r in rows]))
        return
    print(f"{'NAME':<28} {'TAG':<12} {'ID':<12}  {'LAYERS':>6} {'SIZE':>9} {'SHARED':>9}")
    for r in rows:
        print(f"{r.name:<28} {r.tag:<12} {images.short(r.id):<12}  {r.layers:>6} "
              f"{images.describe_size(r.size):>9} {images.describe_size(r.shared):>9}")


@nsr_task(help={"name": "the image: NAME[:TAG] or its id (12 or more hex digits)"})
def image_inspect(c, name):
    """Show an image as JSON: id, names, config, layers bottom-up (with their directory in
    the store), history."""
    from recipes import images
    print(images.dumps(images.inspect(name)))


@nsr_task(help={"src": "the image: NAME[:TAG] or its id", "dst": "the new NAME[:TAG]"})
def image_tag(c, src, dst):
    """Give an image one more name: invoke image-tag SRC DST."""
    from recipes import images
    print(f"tagged {images.tag(src, dst)}")


@nsr_task(help={"name": "NAME[:TAG] to remove (an id removes every name of the image)"})
def image_rm(c, name):
    """Remove an image's name; with its last name the image goes, and then its layers and
    blobs no other image uses. Refused while a container runs from it."""
    from recipes import images
    image_id, removed = images.remove(name)
    print(f"untagged {name}" + (f"; removed image {images.short(image_id)}" if removed else
                                f"; image {images.short(image_id)} keeps its other names"))


@nsr_task()
def image_prune(c):
    """Remove the layers and blobs no image uses (e.g. what image-rm left of an interrupted
    import)."""
    from recipes import images
    out = images.prune()
    print(f"removed {len(out.layers)} layer(s) and {len(out.blobs)} blob(s), "
          f"{images.describe_size(out.bytes)}")


@nsr_task(help={"ref": "[HOST[:PORT]/]NAME[:TAG] or NAME@sha256:HEX; no HOST means Docker "
                       "Hub (busybox is registry-1.docker.io/library/busybox:latest)",
                "name": "NAME[:TAG] to keep it as (default: REF as given; none for a pull "
                        "by digest, then it is listed by id)",
                "username": "log in as this user (default: ~/.docker/config.json's auths)",
                "password_stdin": "read the password from standard input (with --username)",
                "ca_file": "a PEM CA file to trust for the registry's HTTPS certificate",
                "insecure": "allow plain HTTP and unchecked certificates for this registry "
                            "(a registry on 127.0.0.0/8 may speak plain HTTP anyway)",
                "backend": BACKEND_HELP})
def image_pull(c, ref, name=None, username=None, password_stdin=False, ca_file=None,
               insecure=False, backend=None):
    """Pull an image from a registry (HTTP API v2): invoke image-pull REF [--name NAME[:TAG]]

    Bearer-token or Basic login as the registry asks; a manifest list picks this machine's
    platform; every blob is checked (sha256, size, diff_id) as image-import does, and
    nothing half-pulled stays.
    """
    import sys
    from recipes.images import pull
    password = sys.stdin.readline().rstrip("\r\n") if password_stdin else None
    done = pull.pull_image(ref, name, username=username, password=password,
                           ca_file=ca_file, insecure=insecure, backend=backend)
    rec = done.record
    print(f"pulled {done.name or '<none>'} ({done.kind}): id {rec['id']}, "
          f"{len(rec['layers'])} layer(s), {done.new_layers} new, in {done.seconds:.2f} s")

"""image-pull against a real registry: Debian's docker-registry (distribution 2.8), started
by these tests on 127.0.0.1 with storage in a temporary directory.

Images are pushed with skopeo (``skopeo copy oci:DIR docker://...``) into a plain-HTTP
registry; the same storage is then served by the same program configured for Bearer tokens
(``auth: token``; the token issuer is a small HTTP server of these tests, signing JWTs with a
key and certificate made with ``openssl``) and for HTTPS (a CA of these tests' own). Nothing
is mocked; Docker Hub is not reachable from here, which is what its test checks.
"""
from __future__ import annotations

import base64
import hashlib
import http.server
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.parse

import pytest

import imagekit
from nsutil.errors import NsrError
from recipes import images
from recipes.images import pull
from recipes.images import store as storemod

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
INVOKE = [sys.executable, "-m", "invoke", "--search-root", ROOT]
USER, PASSWORD = "nsr-user", "nsr-secret"
SERVICE, ISSUER = "nsr-registry", "nsr-token-issuer"


@pytest.fixture(autouse=True)
def _tools():
    if os.geteuid() != 0:
        pytest.skip("unpacking owners and device whiteouts needs root")
    for tool, pkg in (("umoci", "umoci"), ("skopeo", "skopeo"),
                      ("docker-registry", "docker-registry"), ("openssl", "openssl")):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed (./bootstrap pytest installs {pkg})")


# --- a registry of the tests' own -------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Registry:
    """``docker-registry serve CONFIG`` on 127.0.0.1:PORT, storage in ``storage``."""

    def __init__(self, work: str, storage: str, extra: str = ""):
        self.port = free_port()
        self.host = f"127.0.0.1:{self.port}"
        self.config = os.path.join(work, f"registry-{self.port}.yml")
        with open(self.config, "w") as f:
            f.write(f"version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n"
                    f"    rootdirectory: {storage}\n  delete:\n    enabled: true\n"
                    f"http:\n  addr: 127.0.0.1:{self.port}\n{extra}")
        self.log = open(os.path.join(work, f"registry-{self.port}.log"), "wb")
        self.proc = subprocess.Popen(["docker-registry", "serve", self.config],
                                     stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 15
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    with open(self.log.name) as f:
                        raise RuntimeError(f"docker-registry did not start: {f.read()[-2000:]}")
                time.sleep(0.05)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


def openssl(*argv: str) -> None:
    subprocess.run(["openssl", *argv], check=True, capture_output=True)


def make_certs(work: str) -> dict[str, str]:
    """A CA, a server certificate for 127.0.0.1 signed by it, and a self-signed token key."""
    p = {k: os.path.join(work, k) for k in ("ca.key", "ca.pem", "srv.key", "srv.csr",
                                            "srv.pem", "san.ext", "token.key", "token.pem")}
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj",
            "/CN=nsr test CA", "-keyout", p["ca.key"], "-out", p["ca.pem"])
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1",
            "-keyout", p["srv.key"], "-out", p["srv.csr"])
    with open(p["san.ext"], "w") as f:
        f.write("subjectAltName=IP:127.0.0.1\n")
    openssl("x509", "-req", "-in", p["srv.csr"], "-CA", p["ca.pem"], "-CAkey", p["ca.key"],
            "-CAcreateserial", "-days", "1", "-extfile", p["san.ext"], "-out", p["srv.pem"])
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj",
            "/CN=nsr token signer", "-keyout", p["token.key"], "-out", p["token.pem"])
    return p


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def sign_token(key: str, cert: str, scope: str) -> str:
    """A JWT as distribution's token auth wants it: RS256, the signer's certificate in x5c."""
    der = subprocess.run(["openssl", "x509", "-in", cert, "-outform", "DER"], check=True,
                         capture_output=True).stdout
    header = {"typ": "JWT", "alg": "RS256", "x5c": [base64.b64encode(der).decode()]}
    now = int(time.time())
    access = []
    if scope:
        kind, name, actions = scope.split(":")
        access = [{"type": kind, "name": name, "actions": actions.split(",")}]
    claims = {"iss": ISSUER, "sub": USER, "aud": SERVICE, "exp": now + 300, "nbf": now - 10,
              "iat": now, "jti": os.urandom(8).hex(), "access": access}
    signing_input = f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(claims).encode())}"
    sig = subprocess.run(["openssl", "dgst", "-sha256", "-sign", key], input=signing_input.encode(),
                         check=True, capture_output=True).stdout
    return f"{signing_input}.{b64url(sig)}"


class TokenIssuer:
    """A token service on 127.0.0.1: Basic USER:PASSWORD in, a signed JWT out."""

    def __init__(self, key: str, cert: str):
        issuer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:                               # noqa: N802
                want = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
                if self.headers.get("Authorization") != want:
                    self.send_response(401)
                    self.end_headers()
                    return
                query = urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query)
                issuer.asked.append(query)
                if issuer.hold:                  # a pull to be killed while it waits here
                    issuer.waiting.set()
                    issuer.hold.wait(30)
                body = json.dumps({"token": sign_token(key, cert, query.get("scope", [""])[0])})
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(body.encode())

            def log_message(self, *args: object) -> None:
                pass

        self.asked: list[dict] = []
        self.hold: threading.Event | None = None
        self.waiting = threading.Event()
        self.server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/token"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


# --- images pushed once ---------------------------------------------------------------------

def skopeo_push(src: str, host: str, dest: str, *extra: str) -> None:
    subprocess.run(["skopeo", "copy", "-q", "--dest-tls-verify=false", *extra, src,
                    f"docker://{host}/{dest}"], check=True, capture_output=True)


def two_platform_layout(work: str) -> str:
    """An OCI layout whose ``v1`` is an image index: linux/arm64 first, then linux/amd64."""
    out = os.path.join(work, "multi")
    per = {}
    for arch in ("arm64", "amd64"):
        d = imagekit.write_layout(os.path.join(work, f"plat-{arch}"),
                                  [imagekit.tar_bytes([("arch", "file", f"{arch}\n")])],
                                  config={"architecture": arch})
        per[arch] = d
    os.makedirs(os.path.join(out, "blobs", "sha256"))
    manifests = []
    for arch, d in per.items():
        for name in os.listdir(os.path.join(d, "blobs", "sha256")):
            shutil.copy(os.path.join(d, "blobs", "sha256", name), os.path.join(out, "blobs", "sha256"))
        with open(os.path.join(d, "index.json")) as f:
            desc = json.load(f)["manifests"][0]
        desc.pop("annotations")
        desc["platform"] = {"os": "linux", "architecture": arch}
        manifests.append(desc)
    index = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
                        "manifests": manifests}).encode()
    digest = "sha256:" + hashlib.sha256(index).hexdigest()
    with open(os.path.join(out, "blobs", "sha256", digest[7:]), "wb") as f:
        f.write(index)
    with open(os.path.join(out, "oci-layout"), "w") as f:
        json.dump({"imageLayoutVersion": "1.0.0"}, f)
    with open(os.path.join(out, "index.json"), "w") as f:
        json.dump({"schemaVersion": 2, "manifests": [{
            "mediaType": "application/vnd.oci.image.index.v1+json", "digest": digest,
            "size": len(index), "annotations": {"org.opencontainers.image.ref.name": "v1"}}]}, f)
    return out


@pytest.fixture(scope="module")
def pushed(tmp_path_factory):
    """A plain-HTTP registry holding nsr-x:v1 (the umoci image), nsr-multi:v1 (two
    platforms) and nsr-corrupt:v1 (whose top layer the test damages); its storage and work
    directory, for the other configurations to serve too."""
    work = str(tmp_path_factory.mktemp("registry"))
    storage = os.path.join(work, "storage")
    ref = imagekit.umoci_image(work)
    reg = Registry(work, storage)
    try:
        skopeo_push(f"oci:{ref}", reg.host, "nsr-x:v1")
        skopeo_push(f"oci:{two_platform_layout(work)}:v1", reg.host, "nsr-multi:v1", "--all")
        corrupt = imagekit.write_layout(os.path.join(work, "corrupt"),
                                        [imagekit.tar_bytes([("f", "file", "intact\n")])])
        skopeo_push(f"oci:{corrupt}:v1", reg.host, "nsr-corrupt:v1")
        yield {"registry": reg, "layout": ref, "work": work, "storage": storage,
               "corrupt": imagekit.layer_blobs(corrupt)[0]}
    finally:
        reg.stop()


@pytest.fixture(scope="module")
def certs(pushed):
    return make_certs(pushed["work"])


@pytest.fixture(scope="module")
def token_registry(pushed, certs):
    """The same storage behind ``auth: token``, with a token issuer of the tests' own."""
    issuer = TokenIssuer(certs["token.key"], certs["token.pem"])
    try:
        reg = Registry(pushed["work"], pushed["storage"],
                       f"auth:\n  token:\n    realm: {issuer.url}\n    service: {SERVICE}\n"
                       f"    issuer: {ISSUER}\n    rootcertbundle: {certs['token.pem']}\n")
        try:
            yield reg, issuer
        finally:
            reg.stop()
    finally:
        issuer.stop()


@pytest.fixture(scope="module")
def tls_registry(pushed, certs):
    """The same storage over HTTPS, its certificate signed by the tests' CA."""
    reg = Registry(pushed["work"], pushed["storage"],
                   f"  tls:\n    certificate: {certs['srv.pem']}\n    key: {certs['srv.key']}\n")
    try:
        yield reg
    finally:
        reg.stop()


@pytest.fixture
def store(tmp_path, monkeypatch):
    """A store of the test's own (:func:`imagekit.own_store`), and no logins of the host's."""
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "docker"))
    with imagekit.own_store(tmp_path, monkeypatch) as own:
        yield own


def assert_nothing_kept(store: storemod.Store) -> None:
    """No blob, layer, image, name or staging directory (the filesystem probe's file aside)."""
    for d in ("blobs/sha256", "layers", "images", "l", "tmp"):
        path = store.path(d)
        assert not os.path.isdir(path) or os.listdir(path) == [], (d, os.listdir(path))
    assert store.refs() == {}


def one_line(exc: BaseException) -> str:
    text = str(exc)
    assert "\n" not in text and "(hint: " in text, text
    return text


# --- pulls that work ------------------------------------------------------------------------

def test_pull_by_tag_and_digest_same_id_as_import(pushed, store, tmp_path):
    """Pulled by tag, by digest and imported from the pushed layout: one id, layers once."""
    host = pushed["registry"].host
    by_tag = pull.pull_image(f"{host}/nsr-x:v1")
    assert by_tag.name == f"{host}/nsr-x:v1" and by_tag.new_layers == 3
    manifest = by_tag.record["manifest"]
    by_digest = pull.pull_image(f"{host}/nsr-x@{manifest}", "nsr/bydigest:v1")
    imported = images.import_image(pushed["layout"], "nsr/imported:v1")
    assert by_tag.record["id"] == by_digest.record["id"] == imported.record["id"]
    assert by_digest.new_layers == imported.new_layers == 0
    assert len(os.listdir(store.path("layers"))) == 3
    assert os.listdir(store.path("tmp")) == []


def test_pull_cli_and_manifest_list_picks_amd64(pushed, store):
    """A two-platform index gives linux/amd64's image; the CLI prints one line."""
    host = pushed["registry"].host
    out = subprocess.run([*INVOKE, "image-pull", f"{host}/nsr-multi:v1"], capture_output=True,
                         text=True, env={**os.environ}, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith(f"pulled {host}/nsr-multi:v1 (registry {host}): id sha256:")
    rec = images.inspect(f"{host}/nsr-multi:v1")
    assert rec["Architecture"] == "amd64" and rec["Source"] == f"registry {host}"
    with open(os.path.join(rec["Layers"][0]["Dir"], "arch")) as f:
        assert f.read() == "amd64\n"


def test_manifest_list_without_this_platform_names_what_it_has(pushed, store, monkeypatch):
    """No image for this machine: one line that lists the platforms there are."""
    from recipes.images import mediatypes
    monkeypatch.setattr(mediatypes, "this_platform", lambda: ("linux", "riscv64"))
    with pytest.raises(NsrError) as err:
        pull.pull_image(f"{pushed['registry'].host}/nsr-multi:v1")
    assert "has no image for linux/riscv64 (it has: linux/arm64, linux/amd64)" in one_line(err.value)
    assert_nothing_kept(store)


def test_token_flow(token_registry, store, monkeypatch, tmp_path):
    """401 + WWW-Authenticate Bearer -> the issuer (Basic credentials) -> a token; from
    --username/password, from ~/.docker/config.json; a wrong password is one line."""
    reg, issuer = token_registry
    done = pull.pull_image(f"{reg.host}/nsr-x:v1", username=USER, password=PASSWORD)
    assert done.new_layers == 3
    assert issuer.asked and issuer.asked[-1]["scope"] == ["repository:nsr-x:pull"]
    assert issuer.asked[-1]["service"] == [SERVICE]
    docker = tmp_path / "docker"
    docker.mkdir()
    (docker / "config.json").write_text(json.dumps({"auths": {reg.host: {
        "auth": base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()}}}))
    again = pull.pull_image(f"{reg.host}/nsr-x:v1", "nsr/again:v1")
    assert again.record["id"] == done.record["id"]
    (docker / "config.json").unlink()
    images.remove(done.record["id"])
    images.prune()
    with pytest.raises(NsrError) as err:
        pull.pull_image(f"{reg.host}/nsr-x:v1", username=USER, password="wrong")
    assert f"{reg.host} refused the credentials of 'nsr-user' for nsr-x" in one_line(err.value)
    with pytest.raises(NsrError) as err:
        pull.pull_image(f"{reg.host}/nsr-x:v1")
    assert f"{reg.host} wants credentials for nsr-x" in one_line(err.value)
    assert_nothing_kept(store)


def test_pull_killed_midway_leaves_only_what_cleanup_removes(token_registry, store):
    """A CLI pull SIGKILLed while it waits for its token (its staging directory made):
    only tmp/import-PID-* is left, and cleanup's leftovers name and remove it."""
    reg, issuer = token_registry
    issuer.hold, issuer.waiting = threading.Event(), threading.Event()
    proc = subprocess.Popen([*INVOKE, "image-pull", f"{reg.host}/nsr-x:v1", "--username", USER,
                             "--password-stdin"], stdin=subprocess.PIPE,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        proc.stdin.write(f"{PASSWORD}\n".encode())
        proc.stdin.close()
        assert issuer.waiting.wait(60), "the pull never asked for a token"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
    finally:
        issuer.hold.set()
        issuer.hold = None
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    left = os.listdir(store.path("tmp"))
    assert [name.split("-")[:2] for name in left] == [["import", str(proc.pid)]]
    assert os.listdir(store.path("images")) == [] and store.refs() == {}
    found = images.leftovers()
    assert [item.name for item in found] == [store.path("tmp", left[0])]
    found[0].remove()
    assert_nothing_kept(store)


def test_https_with_ca_file_and_refused_without(tls_registry, pushed, store):
    """HTTPS checked against --ca-file; without it the certificate is refused in one line
    (a loopback registry falls back to plain HTTP only when it does not speak TLS)."""
    with pytest.raises(NsrError) as err:
        pull.pull_image(f"{tls_registry.host}/nsr-x:v1")
    assert "its certificate is not trusted" in one_line(err.value)
    assert "--ca-file" in str(err.value)
    assert_nothing_kept(store)
    with pytest.raises(NsrError) as err:
        pull.pull_image(f"{tls_registry.host}/nsr-x:v1", ca_file=pushed["work"] + "/ca.key")
    assert "ca.key is not a PEM certificate" in one_line(err.value)
    done = pull.pull_image(f"{tls_registry.host}/nsr-x:v1", ca_file=pushed["work"] + "/ca.pem")
    assert done.new_layers == 3


# --- pulls that fail: one line, nothing kept --------------------------------------------------

def test_unknown_repo_and_tag(pushed, store):
    host = pushed["registry"].host
    for ref, words in ((f"{host}/nsr-nope:v1", "has no image nsr-nope:v1"),
                       (f"{host}/nsr-x:nope", "has no image nsr-x:nope")):
        with pytest.raises(NsrError) as err:
            pull.pull_image(ref)
        assert words in one_line(err.value), err.value
    assert_nothing_kept(store)


def test_corrupted_blob_digest_mismatch(pushed, store):
    """A layer changed in the registry's storage (same size): the digest check refuses it."""
    blob = pushed["corrupt"]
    digest = os.path.basename(blob)
    data = os.path.join(pushed["storage"], "docker/registry/v2/blobs/sha256", digest[:2],
                        digest, "data")
    with open(data, "rb") as f:
        good = f.read()
    bad = good[:40] + bytes([good[40] ^ 0xFF]) + good[41:]      # one byte flipped
    with open(data, "wb") as f:
        f.write(bad)
    try:
        with pytest.raises(NsrError) as err:
            pull.pull_image(f"{pushed['registry'].host}/nsr-corrupt:v1")
        assert "does not match its digest" in one_line(err.value)
    finally:
        with open(data, "wb") as f:
            f.write(good)
    assert_nothing_kept(store)


def test_unreachable_registry_and_docker_hub(store):
    """A registry nobody listens at, and Docker Hub (no Internet here): one line each, from
    the CLI for Docker Hub."""
    with pytest.raises(NsrError) as err:
        pull.pull_image(f"127.0.0.1:{free_port()}/nsr-x:v1")
    assert "cannot reach the registry 127.0.0.1:" in one_line(err.value)
    out = subprocess.run([*INVOKE, "image-pull", "busybox"], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode != 0 and out.stdout == ""
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "cannot reach Docker Hub (registry-1.docker.io)" in lines[0]
    assert "library/busybox without a registry host means Docker Hub" in lines[0]
    assert_nothing_kept(store)


def test_reference_parsing_as_docker_reads_it():
    from recipes.images.registry import parse_ref
    r = parse_ref("busybox")
    assert (r.host, r.repo, r.tag, r.name) == ("registry-1.docker.io", "library/busybox",
                                               "latest", "busybox:latest")
    r = parse_ref("docker.io/nsr/app:1")
    assert (r.host, r.repo, r.name) == ("registry-1.docker.io", "nsr/app", "nsr/app:1")
    r = parse_ref("localhost/app")
    assert (r.host, r.repo, r.tag) == ("localhost", "app", "latest")
    r = parse_ref("127.0.0.1:5000/a/b@sha256:" + "0" * 64)
    assert (r.host, r.repo, r.tag, r.name) == ("127.0.0.1:5000", "a/b", None, "")

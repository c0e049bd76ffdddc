"""A small client of the Registry HTTP API v2 (the Distribution spec), standard library only.

What ``docker pull`` does over HTTP, step by step:

1. read the reference as Docker does (:func:`parse_ref`): no registry host means Docker Hub
   (``registry-1.docker.io``, ``library/`` in front of a one-word name);
2. ``GET /v2/REPO/manifests/REF`` with an ``Accept`` of the manifest and index types;
3. a 401 names how to log in in ``WWW-Authenticate``: ``Basic`` (send the user's
   credentials) or ``Bearer realm=...,service=...,scope=...`` (ask the realm for a token,
   with the credentials if there are any, then send ``Authorization: Bearer TOKEN``);
4. ``GET /v2/REPO/blobs/DIGEST`` for the config and each layer (redirects followed, the
   credentials sent to the registry's own host only).

HTTPS is checked against the system's CAs or ``--ca-file``. Plain HTTP only for a registry
on 127.0.0.0/8 (Docker lets loopback registries be insecure) when it does not speak TLS, or
with ``--insecure`` (which also skips certificate checks).
"""
from __future__ import annotations

import base64
import http.client
import ipaddress
import json
import os
import re
import ssl
import urllib.parse
from dataclasses import dataclass
from typing import BinaryIO

from nsutil.errors import InvalidInput, NotFound, NsrError

HUB_HOST = "registry-1.docker.io"
HUB_NAMES = ("docker.io", "index.docker.io", HUB_HOST)
HUB_AUTH_KEY = "https://index.docker.io/v1/"
TIMEOUT = 30.0
MAX_REDIRECTS = 5
_DIGEST_REF = re.compile(r"sha256:[0-9a-f]{64}")


class RegistryError(NsrError):
    """The registry cannot be reached, refuses us, or answers what an image cannot be."""


@dataclass
class Reference:
    """``[HOST[:PORT]/]REPO[:TAG][@DIGEST]`` as Docker reads it."""

    host: str           # where to connect: registry-1.docker.io for Docker Hub
    repo: str           # library/busybox
    tag: str | None
    digest: str | None
    hub: bool

    @property
    def reference(self) -> str:
        """What goes after ``/manifests/``: the digest if given, else the tag."""
        return self.digest or self.tag or "latest"

    @property
    def name(self) -> str:
        """NAME:TAG to keep the image as (Docker Hub's shown without docker.io/library/),
        or "" for a pull by digest only (the image is then listed by id)."""
        if self.tag is None:
            return ""
        repo = self.repo[len("library/"):] if self.hub and self.repo.startswith("library/") \
            and self.repo.count("/") == 1 else self.repo
        return f"{repo}:{self.tag}" if self.hub else f"{self.host}/{repo}:{self.tag}"

    def __str__(self) -> str:
        where = "Docker Hub" if self.hub else self.host
        return f"{where} {self.repo}{'@' + self.digest if self.digest else ':' + (self.tag or 'latest')}"


def parse_ref(ref: str) -> Reference:
    """Read ``ref`` as ``docker pull`` does: the first part is a registry host if it has a
    '.' or a ':' or is ``localhost``; else the image is on Docker Hub."""
    text = ref.strip()
    digest = None
    if "@" in text:
        text, digest = text.split("@", 1)
        if not _DIGEST_REF.fullmatch(digest):
            raise InvalidInput(f"{ref!r}: {digest!r} is not sha256:<64 hex digits>",
                               hint="pull by tag (NAME:TAG) or by digest (NAME@sha256:HEX)")
    first, _, rest = text.partition("/")
    if rest and ("." in first or ":" in first or first == "localhost"):
        host, path = first, rest
    else:
        host, path = "docker.io", text
    hub = host in HUB_NAMES
    tag = None
    slash, colon = path.rfind("/"), path.rfind(":")
    if colon > slash:
        path, tag = path[:colon], path[colon + 1:]
    elif digest is None:
        tag = "latest"
    if hub and "/" not in path:
        path = "library/" + path
    if not re.fullmatch(r"[a-z0-9]+(?:[._-]+[a-z0-9]+)*(?:/[a-z0-9]+(?:[._-]+[a-z0-9]+)*)*", path) \
            or (tag is not None and not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}", tag)):
        raise InvalidInput(f"{ref!r} is not an image reference",
                           hint="[HOST[:PORT]/]NAME[:TAG] or NAME@sha256:HEX, e.g. busybox:1.36 "
                                "or 127.0.0.1:5000/nsr/app:v1")
    return Reference(HUB_HOST if hub else host, path, tag, digest, hub)


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and addresses in 127.0.0.0/8 (with or without a port)."""
    name = host.rsplit(":", 1)[0] if host.count(":") == 1 else host
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name.strip("[]")).is_loopback
    except ValueError:
        return False


def docker_config_auth(host: str, hub: bool, path: str | None = None) -> tuple[str, str] | None:
    """(user, password) for ``host`` from ``~/.docker/config.json``'s ``auths`` (base64
    ``user:password`` in ``auth``), or None."""
    path = path or os.path.join(os.environ.get("DOCKER_CONFIG") or
                                os.path.join(os.path.expanduser("~"), ".docker"), "config.json")
    try:
        with open(path, "rb") as f:
            auths = json.load(f).get("auths") or {}
    except (OSError, ValueError, AttributeError):
        return None
    keys = [HUB_AUTH_KEY, "docker.io", "index.docker.io"] if hub else [host]
    for key, entry in auths.items():
        bare = re.sub(r"^https?://", "", key).rstrip("/")
        if (key in keys or bare in keys or bare.split("/")[0] in keys) and isinstance(entry, dict):
            try:
                user, _, password = base64.b64decode(entry.get("auth", "")).decode().partition(":")
            except (ValueError, UnicodeDecodeError):
                continue
            if user:
                return user, password
    return None


def parse_challenge(header: str) -> tuple[str, dict[str, str]]:
    """``Bearer realm="...",service="...",scope="..."`` -> ("bearer", {realm: ..., ...})."""
    scheme, _, rest = header.strip().partition(" ")
    params = dict(re.findall(r'(\w+)="([^"]*)"', rest))
    return scheme.lower(), params


class Response:
    """An HTTP response body to read as a stream; closing it closes its connection."""

    def __init__(self, conn: http.client.HTTPConnection, resp: http.client.HTTPResponse):
        self.conn, self.resp = conn, resp
        self.status, self.headers = resp.status, resp.headers

    def read(self, n: int = -1) -> bytes:
        """Up to ``n`` bytes of the body (all of it with -1)."""
        try:
            return self.resp.read() if n < 0 else self.resp.read(n)
        except (OSError, http.client.HTTPException) as exc:
            raise RegistryError(f"the registry's answer broke off: {exc}",
                                hint="try again; nothing was kept") from None

    def close(self) -> None:
        """Close the connection."""
        self.conn.close()

    def __enter__(self) -> "Response":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Client:
    """One registry, one repository: authenticated GETs of manifests and blobs."""

    def __init__(self, ref: Reference, credentials: tuple[str, str] | None = None,
                 ca_file: str | None = None, insecure: bool = False):
        self.ref, self.insecure = ref, insecure
        self.credentials = credentials or docker_config_auth(ref.host, ref.hub)
        self.context = ssl.create_default_context()          # the system's CAs
        if ca_file:
            try:
                self.context.load_verify_locations(cafile=ca_file)   # and this one
            except (OSError, ssl.SSLError) as exc:
                raise RegistryError(f"--ca-file {ca_file} is not a PEM certificate: {exc}",
                                    hint="give the CA that signed the registry's "
                                         "certificate, in PEM") from None
        if insecure:
            self.context.check_hostname = False
            self.context.verify_mode = ssl.CERT_NONE
        self.scheme: str | None = None          # "https" or "http", found on first contact
        self.authorization: str | None = None

    # --- connections ------------------------------------------------------------------------
    def where(self) -> str:
        """The registry, as errors name it."""
        return f"{self.ref.host} (Docker Hub)" if self.ref.hub else self.ref.host

    def connect(self, scheme: str, host: str) -> http.client.HTTPConnection:
        """A connection to ``host`` (HOST[:PORT])."""
        if scheme == "https":
            return http.client.HTTPSConnection(host, timeout=TIMEOUT, context=self.context)
        return http.client.HTTPConnection(host, timeout=TIMEOUT)

    def send(self, url: str, headers: dict[str, str]) -> Response:
        """GET ``url`` (redirects followed; credentials only to the registry's own host)."""
        for _ in range(MAX_REDIRECTS):
            parts = urllib.parse.urlsplit(url)
            conn = self.connect(parts.scheme, parts.netloc)
            path = parts.path + (f"?{parts.query}" if parts.query else "")
            try:
                conn.request("GET", path, headers=headers)
                resp = conn.getresponse()
            except ssl.SSLCertVerificationError as exc:
                conn.close()
                raise RegistryError(f"cannot pull from {self.where()}: its certificate is not "
                                    f"trusted ({exc.verify_message})",
                                    hint="give its CA with --ca-file CA.pem (or --insecure to "
                                         "skip the check)") from None
            except (OSError, http.client.HTTPException) as exc:
                conn.close()
                raise self.unreachable(exc, parts.netloc) from None
            if resp.status in (301, 302, 303, 307, 308) and resp.headers.get("Location"):
                url = urllib.parse.urljoin(url, resp.headers["Location"])
                conn.close()
                if urllib.parse.urlsplit(url).netloc != parts.netloc:
                    headers = {k: v for k, v in headers.items() if k != "Authorization"}
                continue
            return Response(conn, resp)
        raise RegistryError(f"{self.where()} redirects too often", hint="is it a registry?")

    def unreachable(self, exc: BaseException, netloc: str) -> RegistryError:
        """One line for a registry that cannot be reached."""
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc) or \
            type(exc).__name__
        if self.ref.hub:
            return RegistryError(f"cannot reach Docker Hub ({netloc}): {reason}",
                                 hint=f"{self.ref.repo} without a registry host means Docker "
                                      "Hub; is this machine online? Name another registry "
                                      "as HOST[:PORT]/NAME")
        return RegistryError(f"cannot reach the registry {netloc}: {reason}",
                             hint="is it running, and is HOST[:PORT] right?")

    def first_contact(self) -> None:
        """Choose HTTPS, or HTTP where allowed: a loopback registry (or --insecure) that
        does not speak TLS."""
        if self.scheme:
            return
        try:
            self.send(f"https://{self.ref.host}/v2/", {}).close()
            self.scheme = "https"
        except RegistryError as exc:
            if "certificate" in exc.what or not (self.insecure or is_loopback(self.ref.host)):
                raise
            self.scheme = "http"

    # --- requests -----------------------------------------------------------------------------
    def get(self, path: str, accept: str = "") -> Response:
        """GET ``/v2/REPO/PATH`` logged in as the registry asks; an error other than 401 is
        returned to the caller to judge."""
        self.first_contact()
        url = f"{self.scheme}://{self.ref.host}/v2/{self.ref.repo}/{path}"
        headers = {"Accept": accept} if accept else {}
        for attempt in range(2):
            if self.authorization:
                headers["Authorization"] = self.authorization
            resp = self.send(url, headers)
            if resp.status != 401 or attempt:
                break
            challenge = resp.headers.get("WWW-Authenticate", "")
            resp.close()
            self.login(challenge)
        if resp.status == 401:
            resp.close()
            raise self.denied()
        return resp

    def denied(self) -> RegistryError:
        """One line for credentials the registry refuses (or none given)."""
        if self.credentials:
            return RegistryError(f"{self.where()} refused the credentials of "
                                 f"{self.credentials[0]!r} for {self.ref.repo}",
                                 hint="check --username and the password (or "
                                      "~/.docker/config.json); nothing was pulled")
        return RegistryError(f"{self.where()} wants credentials for {self.ref.repo}",
                             hint="give --username U --password-stdin, or log in with "
                                  "`docker login` (~/.docker/config.json)")

    def basic(self) -> str:
        """``Basic base64(user:password)``."""
        assert self.credentials
        user, password = self.credentials
        return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()

    def login(self, challenge: str) -> None:
        """Answer a 401's ``WWW-Authenticate``: Basic credentials, or a Bearer token from
        the realm it names."""
        scheme, params = parse_challenge(challenge)
        if scheme == "basic":
            if not self.credentials:
                raise self.denied()
            self.authorization = self.basic()
            return
        if scheme != "bearer" or "realm" not in params:
            raise RegistryError(f"{self.where()} asks for an unknown login: {challenge!r}",
                                hint="only Basic and Bearer (token) logins are supported")
        query = {"service": params.get("service", ""),
                 "scope": params.get("scope") or f"repository:{self.ref.repo}:pull"}
        url = params["realm"] + ("&" if "?" in params["realm"] else "?") + \
            urllib.parse.urlencode({k: v for k, v in query.items() if v})
        headers = {"Authorization": self.basic()} if self.credentials else {}
        with self.send(url, headers) as resp:
            body = resp.read(1 << 20)
            status = resp.status
        if status == 401:
            raise self.denied()
        try:
            answer = json.loads(body)
            token = answer.get("token") or answer.get("access_token")
        except (ValueError, AttributeError):
            token = None
        if status != 200 or not token:
            raise RegistryError(f"the token service {params['realm']} answered {status} "
                                "without a token", hint="is the realm a registry's token service?")
        self.authorization = f"Bearer {token}"

    def fail(self, resp: Response, what: str) -> RegistryError:
        """One line for an answer that is not 200 (404: no such repository, tag or blob)."""
        body = resp.read(64 << 10)
        resp.close()
        try:
            errors = json.loads(body).get("errors") or []
            detail = "; ".join(f"{e.get('code')}: {e.get('message')}" for e in errors)
        except (ValueError, AttributeError):
            detail = ""
        detail = detail or f"HTTP {resp.status}"
        if resp.status == 404:
            return NotFound(f"{self.where()} has no {what} ({detail})",
                            hint="check the name and tag (e.g. with `skopeo list-tags`)")
        return RegistryError(f"{self.where()} refused {what}: {detail}",
                             hint="nothing was pulled")

    def manifest(self, reference: str, accept: str) -> tuple[bytes, str]:
        """(body, Content-Type) of the manifest ``reference`` (a tag or a digest)."""
        what = f"{self.ref.repo}:{reference}" if not reference.startswith("sha256:") else \
            f"{self.ref.repo}@{reference}"
        resp = self.get(f"manifests/{reference}", accept)
        if resp.status != 200:
            raise self.fail(resp, f"image {what}")
        with resp:
            body = resp.read(4 << 20)
        return body, resp.headers.get("Content-Type", "").split(";")[0].strip()

    def blob(self, digest: str) -> BinaryIO:
        """The blob ``digest`` as a stream (to read through :func:`copy_verified`)."""
        resp = self.get(f"blobs/{digest}")
        if resp.status != 200:
            raise self.fail(resp, f"blob {digest[:19]}... in {self.ref.repo}")
        return resp      # type: ignore[return-value]


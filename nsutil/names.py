"""Validation of names and values given by users, before anything is created.

Every check raises :class:`InvalidInput` with one line naming the limit.
"""
from __future__ import annotations

import ipaddress
import os
import re

from .errors import InvalidInput

PREFIX = "nsr"          #: every object nsrecipes creates carries this prefix
IFNAMSIZ = 15           #: Linux interface names: 15 bytes + NUL
HOST_NAME_MAX = 64      #: sethostname(2) limit
_SAFE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
#: a hostname as hostname(1) takes it (RFC 1123): labels of letters, digits and '-', not
#: starting or ending with '-', joined by single dots
_LABEL = r"[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?"
_HOST_LABELS = re.compile(rf"{_LABEL}(\.{_LABEL})*")


def check_name(name: str, *, what: str = "name", max_bytes: int = 64) -> str:
    """A name that becomes a file, netns or state entry: no '/', whitespace, '.' or '..'."""
    if not isinstance(name, str) or not name:
        raise InvalidInput(f"{what} is empty", hint=f"give a {what} like {PREFIX}-a")
    if name in (".", ".."):
        raise InvalidInput(f"{what} {name!r} is not allowed", hint="pick a real name")
    size = len(name.encode())
    if size > max_bytes:
        raise InvalidInput(f"{what} {name!r} is {size} bytes, the limit is {max_bytes}",
                           hint="use a shorter name")
    if not _SAFE.fullmatch(name):
        raise InvalidInput(f"{what} {name!r} has a character that is not allowed",
                           hint="use letters, digits, '-', '_' and '.', starting with a letter or digit")
    return name


def check_ifname(name: str) -> str:
    """An interface name: at most 15 bytes (IFNAMSIZ-1), no '/', whitespace, '.' or '..'."""
    return check_name(name, what="interface name", max_bytes=IFNAMSIZ)


def check_hostname(name: str, what: str = "hostname") -> str:
    """A hostname for sethostname(2) (or, ``what="domainname"``, a NIS domain name for
    setdomainname(2)): 1..64 bytes, no whitespace or '/'; a hostname also as hostname(1)
    takes it (RFC 1123 labels), so both backends accept the same names."""
    if not name or len(name.encode()) > HOST_NAME_MAX:
        raise InvalidInput(f"{what} {name!r} is {len(name.encode())} bytes, the limit is "
                           f"{HOST_NAME_MAX}", hint="use 1 to 64 bytes")
    if any(c.isspace() or c == "/" for c in name):
        raise InvalidInput(f"{what} {name!r} contains whitespace or '/'",
                           hint="use letters, digits, '-' and '.'")
    if what == "hostname" and not _HOST_LABELS.fullmatch(name):
        raise InvalidInput(f"hostname {name!r} is not a valid hostname (hostname(1) refuses it)",
                           hint="use labels of letters, digits and '-' joined by single dots, "
                                "e.g. web-1.lab")
    return name


def check_domainname(name: str) -> str:
    """A NIS domain name for setdomainname(2): the rules of :func:`check_hostname`."""
    return check_hostname(name, what="domainname")


def check_id(value: str | int, *, what: str = "uid") -> int:
    """A uid or gid: a whole number from 0 to 4294967294."""
    from .limits import parse_number
    return parse_number(value, what, minimum=0, maximum=4294967294, example="1000")


def check_cidr(value: str, *, what: str = "address") -> ipaddress.IPv4Interface | ipaddress.IPv6Interface:
    """An interface address with prefix length, e.g. ``10.200.0.1/24``."""
    try:
        iface = ipaddress.ip_interface(value.strip())
    except ValueError:
        raise InvalidInput(f"{what} {value!r} is not an address with a prefix",
                           hint="write it like 10.200.0.1/24") from None
    if "/" not in value:
        raise InvalidInput(f"{what} {value!r} has no prefix length", hint="write it like 10.200.0.1/24")
    return iface


def ip_of(cidr: str) -> str:
    """The address of ``cidr`` without its prefix length (``10.0.0.1/24`` -> ``10.0.0.1``)."""
    return str(ipaddress.ip_interface(cidr).ip)


def scope_id() -> str:
    """A short random per-run scope (4 hex digits) so that concurrent runs never collide."""
    return os.urandom(2).hex()   # what secrets.token_hex does, without loading hashlib


def prefixed(*parts: str, limit: int = IFNAMSIZ) -> str:
    """``nsr`` + parts joined by '-', checked to fit ``limit`` bytes."""
    name = "-".join((PREFIX,) + tuple(p for p in parts if p))
    if len(name.encode()) > limit:
        raise InvalidInput(f"generated name {name!r} exceeds {limit} bytes",
                           hint="use a shorter name or fewer hosts")
    return name


def is_ours(name: str) -> bool:
    """True for names nsrecipes makes (they start with the prefix)."""
    return name.startswith(PREFIX)


#: root's state directory (``$NSR_STATE_DIR`` overrides it, see nsutil.state)
STATE_DIR = "/run/nsrecipes"

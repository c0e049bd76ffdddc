"""Resource limits as users give them (``--memory 64M --pids 64 --cpus 0.5``), validated
before anything is made; :mod:`nsutil.cgroupfs` writes them into cgroup files."""
from __future__ import annotations

import os
import re
import resource
from dataclasses import dataclass

from .errors import InvalidInput, NsrError

CPU_PERIOD_US = 100_000
MIN_MEMORY = 6 << 20


# --- parsing of user input -------------------------------------------------------------------

def _plain(limit: float) -> str:
    """4294967294 as it is, 0.1 as it is (not 4.29497e+09)."""
    return str(int(limit)) if float(limit).is_integer() else repr(float(limit))


def parse_number(text: str | int | float, what: str, *, kind: type = int,
                 minimum: float | None = None, maximum: float | None = None,
                 example: str = "") -> int | float:
    """Every numeric option of every task goes through here: ``--seconds 1.5``,
    ``--size-mb 8``, ``--hosts 3``, ``--timeout 10``.

    ``kind`` is int (digits only) or float (``1``, ``0.5``, ``.5``); a value outside
    [minimum, maximum] or one that does not parse is one InvalidInput line naming the option
    (``what``) and the range, never a traceback.
    """
    raw = str(text).strip()
    pattern = r"[+-]?[0-9]+" if kind is int else r"[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)"
    bounds = " and ".join(f"{word} {_plain(limit)}" for word, limit in
                          (("at least", minimum), ("at most", maximum)) if limit is not None)
    hint = f"write {'a whole number' if kind is int else 'a number'}" + \
           (f" {bounds}" if bounds else "") + (f", e.g. {example}" if example else "")
    if not re.fullmatch(pattern, raw):
        raise InvalidInput(f"{what} {raw!r} is not a number", hint=hint)
    value = kind(raw)
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        raise InvalidInput(f"{what} {raw} is out of range", hint=hint)
    return value


_UNITS = {"": 1, "B": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_size(text: str | int, what: str, *, minimum: int = 1, example: str = "64M",
               hint: str | None = None) -> int:
    """Every size in bytes goes through here: ``64M`` / ``512k`` / ``1G`` / ``6291456`` ->
    bytes. ``64X``, ``-1``, ``1.5M`` or less than ``minimum`` bytes (``0`` with the default)
    is one InvalidInput line naming the option (``what``); ``hint`` says what to write."""
    raw = str(text).strip()
    hint = hint or f"write a positive size like {example}, 512K, 1G or a number of bytes"
    m = re.fullmatch(r"(\d+)\s*([KkMmGgTtBb]?)(?:i?[Bb])?", raw)
    if not m:
        raise InvalidInput(f"{what} {raw!r} does not parse", hint=hint)
    value = int(m.group(1)) * _UNITS[m.group(2).upper()]
    if value < minimum:
        raise InvalidInput(f"{what} {raw!r} is " + ("not a positive size" if minimum == 1 else
                                                    f"below {minimum} bytes"), hint=hint)
    return value


def parse_tmpfs_size(text: str | int, what: str = "tmpfs size") -> str:
    """A tmpfs ``size=`` as the kernel takes it, canonical: ``16m``, ``1g``, bytes, or ``N%``
    of RAM (1 to 100). ``0`` is refused: for tmpfs it means no limit at all."""
    raw = str(text).strip()
    if raw.endswith("%"):
        return f"{parse_number(raw[:-1], what, minimum=1, maximum=100, example='50%')}%"
    value = parse_size(raw, what, hint="write a positive size like 16m, 1g or 50% (of RAM); "
                                       "0 would mean no limit, so it is refused")
    for unit, shift in (("g", 30), ("m", 20), ("k", 10)):
        if value % (1 << shift) == 0:
            return f"{value >> shift}{unit}"
    return str(value)


def parse_memory(text: str | int) -> int:
    """``64M`` / ``512k`` / ``1G`` / ``6291456`` -> bytes; at least 6 MiB (Docker's minimum:
    less does not leave room for the container's own PID 1)."""
    value = parse_size(text, "memory limit", minimum=0)
    raw = str(text).strip()
    if value < MIN_MEMORY:
        raise InvalidInput(f"memory limit {raw!r} is below 6M",
                           hint="a container needs at least 6M (as with Docker); write e.g. 64M")
    return value


def parse_pids(text: str | int, allow_max: bool = False) -> int | None:
    """A pids limit: a whole number >= 1 (``-1`` and ``0`` are refused); with ``allow_max``
    also ``max`` (no limit, as in ``pids.max``), returned as None."""
    raw = str(text).strip()
    if allow_max and raw == "max":
        return None
    if not re.fullmatch(r"\d+", raw) or int(raw) < 1:
        raise InvalidInput(f"pids limit {raw!r} is not a positive whole number" +
                           (" or max" if allow_max else ""),
                           hint="write e.g. 64 (the container's process count may not exceed it)" +
                           ("; max means no limit" if allow_max else ""))
    if int(raw) > 4_194_304:
        raise InvalidInput(f"pids limit {raw} exceeds the kernel's pid_max (4194304)",
                           hint="write a smaller number")
    return int(raw)


def parse_cpus(text: str | float) -> float:
    """A CPU limit in CPUs (``0.5`` = half a CPU): 0.01 up to the CPUs this process may run
    on (as Docker: a quota of more CPUs than there are would limit nothing)."""
    raw = str(text).strip()
    if not re.fullmatch(r"\d+(\.\d+)?|\.\d+", raw):
        raise InvalidInput(f"cpu limit {raw!r} does not parse",
                           hint="write a positive number of CPUs like 0.5 or 2")
    value = float(raw)
    if value < 0.01:
        raise InvalidInput(f"cpu limit {raw!r} is below 0.01 CPU",
                           hint="write e.g. 0.5 (half a CPU)")
    there = len(os.sched_getaffinity(0))
    if value > there:
        raise InvalidInput(f"cpu limit {raw} is more than the {there} CPU{'s' * (there > 1)} "
                           "there are", hint=f"write 0.01 to {there}, e.g. 0.5 (half a CPU)")
    return value


@dataclass
class Limits:
    """Resource limits; ``None`` means "not limited"."""

    memory: int | None = None     #: bytes
    pids: int | None = None       #: processes
    cpus: float | None = None     #: CPUs (quota / period)

    @classmethod
    def parse(cls, memory: str | int | None = None, pids: str | int | None = None,
              cpus: str | float | None = None) -> "Limits":
        """Validate user-given limits (strings as on the command line)."""
        return cls(memory=parse_memory(memory) if memory not in (None, "") else None,
                   pids=parse_pids(pids) if pids not in (None, "") else None,
                   cpus=parse_cpus(cpus) if cpus not in (None, "") else None)

    def any(self) -> bool:
        """True if at least one limit is set."""
        return any(v is not None for v in (self.memory, self.pids, self.cpus))

    def cpu_quota(self, period: int = CPU_PERIOD_US) -> tuple[int, int]:
        """(quota_us, period_us) for ``cpus``."""
        assert self.cpus is not None
        return max(1000, int(round(self.cpus * period))), period


def raise_nofile(need: int) -> None:
    """Let this process open ``need`` files (RLIMIT_NOFILE): the soft limit, and as root the
    hard one too; NsrError with a hint if it cannot."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < need:
        if hard != resource.RLIM_INFINITY and hard < need:
            try:      # root may raise the hard limit too (CAP_SYS_RESOURCE, up to fs.nr_open)
                resource.setrlimit(resource.RLIMIT_NOFILE, (need, need))
                return
            except (ValueError, OSError):
                raise NsrError(f"{need} open files are needed, the limit is {hard}",
                               hint="raise it (ulimit -n) or build fewer hosts at once") from None
        resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))

"""Resource limits as users give them (``--memory 64M --pids 64 --cpus 0.5``), validated
before anything is made; :mod:`nsutil.cgroupfs` writes them into cgroup files."""
from __future__ import annotations

import re
from dataclasses import dataclass

from .errors import InvalidInput

CPU_PERIOD_US = 100_000
MIN_MEMORY = 6 << 20


# --- parsing of user input -------------------------------------------------------------------

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
    bounds = " and ".join(f"{word} {limit:g}" for word, limit in
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


def parse_memory(text: str | int) -> int:
    """``64M`` / ``512k`` / ``1G`` / ``6291456`` -> bytes; at least 6 MiB (Docker's minimum:
    less does not leave room for the container's own PID 1)."""

    # Rejects ``64X``, ``-1``, ``0`` with one line saying what is accepted.
    raw = str(text).strip()
    m = re.fullmatch(r"(\d+)\s*([KkMmGgTtBb]?)(?:i?[Bb])?", raw)
    if not m:
        raise InvalidInput(f"memory limit {raw!r} does not parse",
                           hint="write a positive size like 64M, 512K, 1G or a number of bytes")
    value = int(m.group(1)) * _UNITS[m.group(2).upper()]
    if value < MIN_MEMORY:
        raise InvalidInput(f"memory limit {raw!r} is below 6M",
                           hint="a container needs at least 6M (as with Docker); write e.g. 64M")
    return value


def parse_pids(text: str | int) -> int:
    """A pids limit: a whole number >= 1 (``-1`` and ``0`` are refused)."""
    raw = str(text).strip()
    if not re.fullmatch(r"\d+", raw) or int(raw) < 1:
        raise InvalidInput(f"pids limit {raw!r} is not a positive whole number",
                           hint="write e.g. 64 (the container's process count may not exceed it)")
    if int(raw) > 4_194_304:
        raise InvalidInput(f"pids limit {raw} exceeds the kernel's pid_max (4194304)",
                           hint="write a smaller number")
    return int(raw)


def parse_cpus(text: str | float) -> float:
    """A CPU limit in CPUs (``0.5`` = half a CPU): 0.01 .. number of CPUs * 1000."""
    raw = str(text).strip()
    if not re.fullmatch(r"\d+(\.\d+)?|\.\d+", raw):
        raise InvalidInput(f"cpu limit {raw!r} does not parse",
                           hint="write a positive number of CPUs like 0.5 or 2")
    value = float(raw)
    if value < 0.01:
        raise InvalidInput(f"cpu limit {raw!r} is below 0.01 CPU",
                           hint="write e.g. 0.5 (half a CPU)")
    if value > 1024:
        raise InvalidInput(f"cpu limit {raw!r} is too large", hint="write at most 1024")
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

"""time namespace -- beyond the document (Linux 5.6+; flag CLONE_NEWTIME).

The document lists six namespaces; the time namespace came with Linux 5.6
(time_namespaces(7)), for containers that move between machines (CRIU) and must keep their
clocks. It offsets two clocks, CLOCK_MONOTONIC and CLOCK_BOOTTIME (so ``/proc/uptime`` and
``uptime``); CLOCK_REALTIME, the wall clock, is *not* namespaced.

Unlike the others, ``unshare(CLONE_NEWTIME)`` does not move the caller: it makes a new
namespace for the caller's *children* (``/proc/PID/ns/time_for_children``), so that its
offsets can be written to ``/proc/self/timens_offsets`` before the first process enters it;
then they freeze. ``unshare --time --fork --monotonic N --boottime N -- CMD`` writes them and
forks CMD into the new namespace (without ``--fork`` CMD is in it only on kernels from 6.3,
which switch time namespace at exec: on Debian 12's 6.1 it stays outside). The native holder
does it in three steps: unshare(CLONE_NEWTIME), write the offsets, setns() into
``time_for_children``.
A kernel without it (no ``/proc/self/ns/time``) is refused with one line.
"""
from __future__ import annotations

import platform
import socket
import sys
import time
from datetime import timedelta

from nsutil import process
from nsutil import syscalls as sc
from nsutil.backend import Runner, Step, derived
from nsutil.errors import NsrError, SyscallError
from nsutil.limits import parse_number
from nsutil.nstypes import available

from recipes.cgroupns import cat, read_text, start_prepared_holder
from recipes.common.holder import enter_argv, join_types, run_inside

SECTION = "time namespace"
BEYOND = "Linux 5.6+; beyond the document"
#: the largest offset the options take: ten years (the kernel's own limit is ~146 years)
MAX_OFFSET = 10 * 365 * 86400
CLOCKS = ("CLOCK_MONOTONIC", "CLOCK_BOOTTIME", "CLOCK_REALTIME")
#: run inside by the shell form (a constant: no user input goes into it)
CLOCKS_CODE = ("import time; print(*(time.clock_gettime(c) for c in (time.CLOCK_MONOTONIC, "
               "time.CLOCK_BOOTTIME, time.CLOCK_REALTIME)))")


def check_offset(value: str | int, option: str) -> int:
    """An offset in whole seconds, 0 to ten years (``--boottime 86400``)."""
    return int(parse_number(value, option, minimum=0, maximum=MAX_OFFSET, example="86400"))


def unavailable() -> str | None:
    """Why this kernel cannot run the demo (no time namespaces), or None."""
    if available("time"):
        return None
    return f"this kernel ({platform.release()}) has no time namespaces (/proc/self/ns/time)"


def require_timens() -> None:
    """Refuse, before anything is made, on a kernel without time namespaces."""
    why = unavailable()
    if why:
        raise NsrError(f"time-demo: {why}",
                       hint="time namespaces need Linux 5.6 or newer built with CONFIG_TIME_NS=y")


def read_clocks() -> list[float]:
    """CLOCK_MONOTONIC, CLOCK_BOOTTIME and CLOCK_REALTIME of the calling process, seconds."""
    return [time.clock_gettime(getattr(time, c)) for c in CLOCKS]


def parse_offsets(text: str) -> dict[str, int]:
    """``monotonic 3600 0`` lines -> {"monotonic": 3600, ...} (whole seconds)."""
    out = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[1].lstrip("-").isdigit():
            out[parts[0]] = int(parts[1])
    return out


# --- steps ---------------------------------------------------------------------------------------

def start_with_offsets(run: Runner, monotonic: int, boottime: int) -> process.Holder:
    """Step: a holder in a new time namespace with these offsets; undo: stop it."""
    def prepare() -> None:
        sc.unshare(sc.CLONE_NEWTIME)              # a new namespace, for children only
        sc.set_timens_offsets({"monotonic": monotonic, "boottime": boottime})
        process.enter_time_for_children()          # the first process in: offsets freeze

    argv = ["unshare", "--time", "--fork", "--monotonic", monotonic, "--boottime", boottime,
            "--", "sleep", "infinity"]
    return start_prepared_holder(
        run, "time", argv, prepare,
        "unshare(CLONE_NEWTIME), write /proc/self/timens_offsets, then setns() into "
        "time_for_children and hold it")


def try_to_change(run: Runner, holder: process.Holder) -> bool:
    """Step: write the holder's timens_offsets again; True if the kernel refused (EACCES):
    once a process is in the namespace its offsets are frozen."""
    path = derived(f"/proc/{holder.pid}/timens_offsets", holder.pid)

    def native() -> bool:
        try:
            sc.set_timens_offsets({"boottime": 0}, holder.pid)
        except SyscallError as exc:
            return exc.errno_name == "EACCES"
        return False

    return run.run(Step("try to change the offsets now that a process is inside",
                        display=f"echo 'boottime 0 0' > {path}    # EACCES", native=native,
                        placeholder=True))


def clocks_inside(run: Runner, holder: process.Holder) -> list[float]:
    """Step: read the three clocks inside the holder's time namespace."""
    types = join_types(holder, "time")
    return run.run(Step("read CLOCK_MONOTONIC, CLOCK_BOOTTIME and CLOCK_REALTIME inside",
                        argv=enter_argv(holder, "time", [sys.executable, "-c", CLOCKS_CODE]),
                        native=lambda: process.call_in(holder.pid, types, read_clocks),
                        parse=lambda text: [float(x) for x in text.split()],
                        placeholder=[0.0, 0.0, 0.0]))


def host_uptime(run: Runner) -> str:
    """Step: ``uptime`` where nsrecipes runs (the host's time namespace)."""
    return run.run(Step("uptime on the host", argv=["uptime"],
                        native=lambda: process.exec_in(None, [], ["uptime"]).check().stdout))


# --- the demo ------------------------------------------------------------------------------------

def _clock_table(run: Runner, host: list[float], inside: list[float]) -> None:
    run.say(f"  {'clock':<16} {'host':>18} {'in the namespace':>18} {'difference':>12}")
    notes = ("the monotonic offset", "the boottime offset: uptime",
             "not namespaced: one wall clock for all")
    for name, a, b, note in zip(CLOCKS, host, inside, notes):
        run.say(f"  {name:<16} {a:>18.3f} {b:>18.3f} {b - a:>+11.1f}s  {note}")


def demo(run: Runner, boottime: int | str = 86400, monotonic: int | str = 3600) -> dict:
    """A holder in a new time namespace with CLOCK_BOOTTIME and CLOCK_MONOTONIC offsets:
    its ``/proc/uptime`` and ``uptime`` run ``boottime`` seconds ahead of the host's, its
    monotonic clock ``monotonic`` seconds, its wall clock not at all. Returns what was seen:
    ``offsets`` (from /proc/PID/timens_offsets), ``host_uptime``/``inside_uptime`` (seconds),
    ``host_clocks``/``inside_clocks`` (monotonic, boottime, realtime), ``frozen``, the
    ``host_tool``/``inside_tool`` lines of uptime and the ``holder``'s pid."""
    boottime = check_offset(boottime, "--boottime")
    monotonic = check_offset(monotonic, "--monotonic")
    require_timens()
    run.heading(f"{SECTION} (CLONE_NEWTIME, {BEYOND}): uptime {boottime} s ahead")
    prompt = f"[root@{socket.gethostname()}]#"
    host_up = read_text("/proc/uptime") if not run.explain else "0 0"
    host_tool = host_uptime(run)
    host_clocks = read_clocks()
    run.say(f"{prompt} cat /proc/uptime      (the host)\n{host_up.rstrip()}\n"
            f"{prompt} uptime\n{host_tool.rstrip()}")
    holder = start_with_offsets(run, monotonic, boottime)
    offsets_text = cat(run, derived(f"/proc/{holder.pid}/timens_offsets", holder.pid),
                       "the offsets of the holder's time namespace")
    run.say(f"在新的time namespace中 (inside the new time namespace, pid {holder.pid}):\n"
            f"{prompt} cat /proc/{holder.pid}/timens_offsets\n{offsets_text.rstrip()}")
    inside_up = run_inside(run, holder, "time", ["cat", "/proc/uptime"],
                           "cat /proc/uptime inside the new time namespace").stdout
    inside_tool = run_inside(run, holder, "time", ["uptime"],
                             "uptime inside the new time namespace").stdout
    inside_clocks = clocks_inside(run, holder)
    frozen = try_to_change(run, holder)
    run.say(f"{prompt} cat /proc/uptime\n{inside_up.rstrip()}    <- {boottime} s "
            f"({timedelta(seconds=boottime)}) ahead "
            f"(the idle time, second, is not namespaced)\n{prompt} uptime\n{inside_tool.rstrip()}")
    if not run.explain:
        _clock_table(run, host_clocks, inside_clocks)
        run.say(f"echo 'boottime 0 0' > /proc/{holder.pid}/timens_offsets: "
                + ("EACCES: frozen since the first process entered" if frozen else "accepted?!"))
    run.learner_shell(hint="cat /proc/uptime; uptime; date (the wall clock: not namespaced); "
                           "cat /proc/$$/timens_offsets; exit")
    run.undo()
    return {"offsets": parse_offsets(offsets_text), "frozen": frozen, "holder": holder.pid,
            "host_uptime": float(host_up.split()[0]),
            "inside_uptime": float(inside_up.split()[0]) if not run.explain else 0.0,
            "host_clocks": host_clocks, "inside_clocks": inside_clocks,
            "host_tool": host_tool.strip(), "inside_tool": inside_tool.strip()}

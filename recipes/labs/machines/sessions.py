"""Sessions: one Fabric connection and remote command per machine of a lab, run in a thread
each, whose JSON lines (:mod:`recipes.ops.agent`) become events the controller
(:mod:`recipes.labs.machines.controller`) waits for.

Document section "Network namespace", past one machine. A failure is kept as one line naming
the machine; a machine that says nothing for too long while it builds (a network cut off
mid-build: the session stays open and TCP notices nothing for many minutes) is taken for
lost.
"""
from __future__ import annotations

import errno
import json
import os
import queue
import shlex
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from nsutil.errors import NsrError
from recipes.labs.machines.wire import version

CONNECT_TIMEOUT = 60       #: seconds to open an SSH connection (generous: slow VMs)
STEP_TIMEOUT = 1800        #: seconds a machine may take for one phase of a build
INSTALL_HINT = "install this checkout there: invoke machines-install --file LAB.toml"


# --- one Fabric connection and remote command per machine ---------------------------------

class Feed:
    """What Invoke reads as a command's stdin: the text put so far, then EOF once closed
    (Invoke shuts the channel's write side, so the remote end reads EOF)."""

    def __init__(self) -> None:
        self.chunks: queue.SimpleQueue = queue.SimpleQueue()
        self.done = False

    def put(self, text: str) -> None:
        """Queue ``text`` for the remote command's stdin."""
        self.chunks.put(text)

    def close(self) -> None:
        """End the remote command's stdin."""
        self.chunks.put(None)

    def read(self, size: int = -1) -> str | None:
        """Everything queued (Invoke asks for one byte at a time and naps between reads);
        None while there is nothing yet, "" once closed."""
        if self.done:
            return ""
        try:
            item = self.chunks.get_nowait()
        except queue.Empty:
            return None
        if item is None:
            self.done = True
            return ""
        return item

    def isatty(self) -> bool:
        """Not a terminal (so Invoke treats "" as the end)."""
        return False


class Session:
    """One machine's remote command, run by Fabric in a thread; its JSON lines as events."""

    def __init__(self, machine: dict, args: list[str], feed: Feed | None = None,
                 passthrough=None) -> None:
        self.machine, self.args, self.feed, self.passthrough = machine, args, feed, passthrough
        self.events: list[dict] = []
        self.error: str | None = None
        self.result = None
        self.finished = False
        self._buf = ""
        self.changed = threading.Condition()
        self.heard = time.monotonic()     #: when the machine last said anything
        self.lost = False                 #: silent too long (cut off, or hung)

    @property
    def label(self) -> str:
        """``machine m2 (root@10.250.0.12)``."""
        return f"machine {self.machine['name']} ({self.machine['ssh']})"

    def command(self) -> str:
        """The command line run there."""
        venv = self.machine["venv"]
        return shlex.join([f"{venv}/bin/python", "-m", "recipes.ops.agent", self.args[0],
                           "--expect", version(), *self.args[1:]])

    def write(self, text: str) -> None:
        """Invoke's out_stream: JSON lines become events (the rest passes through)."""
        self.heard = time.monotonic()
        self._buf += text
        while "\n" in self._buf:
            line, self._buf = self._buf.split("\n", 1)
            if line.startswith("{") and (not self.passthrough or not self.events):
                try:
                    self._event(json.loads(line))
                    continue
                except ValueError:
                    pass
            if self.passthrough:
                self.passthrough.write(line + "\n")
                self.passthrough.flush()

    def flush(self) -> None:
        """Invoke's out_stream: nothing buffered to flush."""
        if self.passthrough and self._buf and self.events:
            self.passthrough.write(self._buf)
            self._buf = ""

    def _event(self, ev: dict) -> None:
        with self.changed:
            self.events.append(ev)
            self.changed.notify_all()

    def silent(self, limit: float | None) -> bool:
        """True (and ``lost``, with the error saying so) if the session still runs and the
        machine has said nothing for more than ``limit`` seconds (None: no limit)."""
        if limit is None or self.finished or time.monotonic() - self.heard <= limit:
            return False
        self.lost = True
        self.error = self.error or (f"no word from it for {limit:.0f} s: cut off from the "
                                    "network, or hung")
        return True

    def has(self, key: str) -> dict | None:
        """The first event with ``key``."""
        return next((e for e in self.events if key in e), None)

    def run(self) -> None:
        """Connect and run (in a thread); failures are kept as one line in ``error``."""
        try:
            conn = connection(self.machine)
            try:
                self.result = conn.run(self.command(), in_stream=self.feed or False, out_stream=self,
                                       err_stream=_Discard(), hide=True, warn=True, pty=False)
            finally:
                conn.close()
            self.flush()
            self.error = self._failure(self.result)
        except Exception as exc:    # whatever Fabric, paramiko or the socket raise
            self.error = f"ssh: {ssh_reason(exc)}"
            if self.has("version"):             # it had started: not a connection failure
                # (another version there quits at once: the part we send it finds the
                # session closed, and that is not what went wrong)
                self.error = self.version_error() or (
                    f"its nsrecipes ended half-way, killed or cut off ({self.error})")
        finally:
            with self.changed:
                self.finished = True
                self.changed.notify_all()

    def version_error(self) -> str | None:
        """What is wrong if the machine answered another nsrecipes version than this one."""
        seen = self.has("version")
        if seen and seen["version"] != local_version():
            return (f"nsrecipes {seen['version']} is installed there ({self.machine['venv']}), "
                    f"{local_version()} here")
        return None

    def _failure(self, result) -> str | None:
        seen = self.has("version")
        if self.version_error():
            return self.version_error()
        err = self.has("error")
        if err:
            return err["error"]
        if result.exited in (0, 2) or (self.passthrough and seen):
            return None
        tail = (result.stderr or "").strip().splitlines()
        if not seen:
            return (f"no nsrecipes in {self.machine['venv']} there "
                    f"({tail[-1] if tail else f'exit {result.exited}'})")
        if result.exited < 0:                   # no exit status: a signal, or the link gone
            return "its nsrecipes ended half-way, killed or cut off (no exit status)"
        return f"remote nsrecipes failed with exit {result.exited}: {tail[-1] if tail else ''}"


class _Discard:
    def write(self, text: str) -> None:
        pass

    def flush(self) -> None:
        pass


def local_version() -> str:
    """The nsrecipes version here, which every machine must have too."""
    return version()


def connection(machine: dict):
    """A Fabric connection to ``machine`` (its key when the lab names one)."""
    from fabric import Connection
    kwargs = {"key_filename": [machine["identity"]], "look_for_keys": False,
              "allow_agent": False} if machine.get("identity") else {}
    return Connection(machine["host"], user=machine["user"], port=machine["port"],
                      connect_timeout=CONNECT_TIMEOUT, connect_kwargs=kwargs)


def ssh_reason(exc: BaseException) -> str:
    """One line for what went wrong connecting: the errno name when there is one."""
    inner = getattr(exc, "errors", None)         # paramiko's NoValidConnectionsError
    if isinstance(inner, dict) and inner:
        exc = next(iter(inner.values()))
    wrapped = getattr(exc, "exceptions", None)   # Invoke's ThreadException (its stdin thread)
    if isinstance(wrapped, (list, tuple)) and wrapped and hasattr(wrapped[0], "value"):
        exc = wrapped[0].value
    if isinstance(exc, (socket.timeout, TimeoutError)):
        return "connection timed out"
    if isinstance(exc, OSError) and exc.errno:
        return f"{os.strerror(exc.errno).lower()} ({errno.errorcode.get(exc.errno, exc.errno)})"
    return f"{type(exc).__name__}: {exc}".splitlines()[0]


def fail(s: Session) -> NsrError:
    if s.lost:
        return NsrError(f"{s.label}: {s.error}", hint="the other machines' parts are undone; its "
                        "own is undone there once the session's end reaches it, else run "
                        f"`invoke cleanup` on it (ssh {s.machine['ssh'].split(':')[0]})")
    hint = INSTALL_HINT if "nsrecipes" in (s.error or "") and "installed" in (s.error or "") \
        or (s.error or "").startswith("no nsrecipes") else \
        "is its sshd up and the key authorized? (ssh " + s.machine["ssh"].split(":")[0] + ")" \
        if (s.error or "").startswith("ssh:") else "see the message; nothing is left on any machine"
    return NsrError(f"{s.label}: {s.error}", hint=hint)


def wait_all(sessions: list[Session], key: str, timeout: float = STEP_TIMEOUT,
              silent_after: float | None = None) -> None:
    """Until every session has an event ``key``; the first that ends without it raises, and
    so does one silent for more than ``silent_after`` seconds (None: no limit)."""
    deadline = time.monotonic() + timeout
    for s in sessions:
        with s.changed:
            while not s.has(key) and not s.finished:
                if not s.changed.wait(timeout=max(0.0, min(1.0, deadline - time.monotonic()))):
                    if time.monotonic() >= deadline:
                        s.error = s.error or f"no answer in {timeout:.0f} s"
                        raise fail(s)
                    failed = next((o for o in sessions if (o.finished and o.error)
                                   or o.silent(silent_after)), None)
                    if failed:
                        raise fail(failed)
        if not s.has(key):
            s.error = s.error or f"it stopped before {key}"
            raise fail(s)


def run_all(machines: list[dict], args: list[str], inputs: dict[str, str] | None = None,
            passthrough=None) -> dict[str, Session]:
    """Run ``recipes.ops.agent ARGS`` on every machine at once; raises the first failure (one
    line naming the machine). ``inputs``: machine -> its stdin."""
    sessions = {}
    for m in machines:
        feed = None
        if inputs is not None:
            feed = Feed()
            feed.put(inputs.get(m["name"], ""))
            feed.close()
        sessions[m["name"]] = Session(m, args, feed, passthrough)
    with ThreadPoolExecutor(max_workers=len(sessions)) as pool:
        list(pool.map(Session.run, sessions.values()))
    for s in sessions.values():
        if s.error:
            raise fail(s)
    return sessions


def join(sessions: list[Session], threads: list[threading.Thread], silent_after: float) -> None:
    """Wait for every session's thread to end, but not for a machine silent for more than
    ``silent_after`` seconds (its thread is a daemon: it ends when the session does)."""
    deadline = time.monotonic() + STEP_TIMEOUT
    for s, t in zip(sessions, threads):
        while t.is_alive() and time.monotonic() < deadline and not s.silent(silent_after):
            t.join(1.0)

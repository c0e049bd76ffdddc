"""A container's id and name, which of them a user means, and what state it is in.

Every container gets an id of 64 hex digits (as Docker's; 12 are shown) beside its name
(``nsr-c-...``). A user names one by its whole name or id, or by a prefix of either that
only one container has (``nsr-c-`` may be left out of a name). The state is told from the
record and the processes it names, never from the name alone:

* ``running``: PID 1 runs (or the tool or supervisor that runs it is still finishing);
* ``exited``: its exit code was recorded (by the supervisor of a detached container, or by
  ``container-run --no-rm`` in the foreground), kept until ``container-rm``;
* ``dead``: none of its processes runs and no exit code was recorded (its tool or
  supervisor was killed); ``cleanup`` removes it, and its name can be used again;
* ``created``: the record is being written.
"""
from __future__ import annotations

import os

from nsutil import procfs
from nsutil.errors import Conflict, InvalidInput, NotFound
from nsutil.names import PREFIX
from nsutil.state import read_json, state_dir

from recipes.container.state import remove_container, states

#: how many hex digits of an id are shown (as ``docker ps``)
SHORT = 12


class NoSuchContainer(NotFound):
    """No container has that name or id (or a prefix of them)."""


class NameInUse(Conflict):
    """A container of that name exists (running, or exited and kept)."""


def new_id() -> str:
    """A new container id: 64 random hex digits."""
    return os.urandom(32).hex()   # what secrets.token_hex does, without loading hashlib


def short(rec: dict) -> str:
    """The id as ``container-ls`` shows it (12 hex digits; ``-`` before it is recorded)."""
    return (rec.get("id") or "-")[:SHORT]


def status(rec: dict) -> str:
    """``running``, ``exited``, ``dead`` or ``created`` (see the module docstring)."""
    if "exit_code" in rec:
        return "exited"
    if not rec.get("pid"):
        return "created" if procfs.same_process(rec.get("creator")) or "creator" not in rec \
            else "dead"
    if procfs.same_process({"pid": rec.get("pid1"), "start": rec.get("pid1_starttime")}):
        return "running"
    if procfs.same_process(rec.get("creator")):
        return "running"
    return "dead"


def running(rec: dict) -> bool:
    """True if PID 1 of the recorded container runs (the very process: its start time)."""
    return procfs.same_process({"pid": rec.get("pid1"), "start": rec.get("pid1_starttime")})


def resolve(query: str) -> dict:
    """The record of the container that ``query`` names: a whole name or id first, else the
    one container whose name (with or without ``nsr-c-``) or id starts with it."""
    recs = states()
    prefixes = (query, f"{PREFIX}-c-{query}")
    for rec in recs:
        if rec.get("name") in prefixes or query == rec.get("id"):
            return rec
    found = [r for r in recs if query and (str(r.get("name", "")).startswith(prefixes)
                                           or str(r.get("id", "")).startswith(query))]
    if len(found) == 1:
        return found[0]
    if not found:
        raise NoSuchContainer(f"no such container: {query}",
                              hint="`invoke container-ls --all` lists them (name or id prefix)")
    names = ", ".join(sorted(str(r["name"]) for r in found))
    raise InvalidInput(f"{query!r} names {len(found)} containers: {names}",
                       hint="give more of the id, or the whole name")


def name_in_use(name: str) -> NameInUse:
    """The one-line refusal of a name that a container has, naming it and what removes it."""
    rec = read_json(state_dir(name, "state.json", create=False)) or {"name": name}
    state = status(rec)
    force = " --force" if state in ("running", "created") else ""
    return NameInUse(f"container name {name} is in use by container {short(rec)} ({state})",
                     hint=f"remove it with `invoke container-rm {name}{force}`, "
                          "or pick another --name")


def claim_name(name: str) -> None:
    """Refuse ``name`` if a live or kept container has it; remove a dead one's leftovers
    (a run that was SIGKILLed), so the name can be used again."""
    for rec in states():
        if rec.get("name") != name:
            continue
        if status(rec) != "dead":
            raise name_in_use(name)
        remove_container(rec)

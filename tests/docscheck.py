"""The checker behind ``pytest -m docs``: every fenced block of README.md and docs/*.md is
parsed with Sybil (its Markdown lexer) and judged by what it is.

``console``    ``$ COMMAND`` lines, each followed by the output it prints (stdout and stderr,
               as a terminal shows them; ``# COMMAND``, root's prompt, in a block whose
               outputs have lines starting with ``$``). Each command runs with ``bash -c`` from the checkout,
               with its ``.venv/bin`` first on PATH, inside the page's sandbox: a mount and
               network namespace of its own with fresh /tmp, /run and /etc/netns, so the
               names a page uses cannot meet another run's. The output must match what is
               shown once both are normalised (:func:`normalise`); a line ``...`` stands for
               any lines, ``...`` inside a line for any text. ``console both`` runs every
               command once per backend (``NSR_BACKEND=shell``, then ``native``): both
               must print what is shown. ``console user`` runs every command as a real
               unprivileged user instead (uid 65534 through ``setpriv``, no capabilities,
               in the same sandbox), with a home and an ``XDG_RUNTIME_DIR`` of the page's
               own (:func:`asuser.user_home`): what that user's commands leave behind fails
               the page. A command that exits non-zero must say so (``; echo $?``) or print
               nsrecipes' one-line error.
``python``     run with the project's Python inside the page's sandbox; it must exit 0.
               ``python test`` is a test module: pytest runs it there (the nsrecipes
               plugin's fixtures included), and it must pass.
``toml``       parsed (a lab file must at least be TOML).
``sh``         commands shown without output (set-up, a VM run): not run.
``text``       output that the suite cannot reproduce (a 10,000-host lab, a VM run, a timing):
               allowed only right after a line ``Example run (DATE, MACHINE):``, which is
               what marks it; without that line the block fails.

A block with no language, or one not listed here, fails: nothing is skipped silently.
``pytest -m docs --update-docs`` writes the outputs the commands print now over those shown
(those that do not match, with the sandbox's varying parts as they came), so a changed
message is refreshed in one run; read the diff before committing it.
"""
from __future__ import annotations

import os
import re
import socket
import subprocess
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from sybil import Document, Example, Sybil
from sybil.parsers.markdown.lexers import RawFencedCodeBlockLexer

from asuser import USER_PATH, user_env, user_home, venv_reachable
from conftest import unprivileged_argv
from helpers import ROOT

#: the pages checked: the README and every page under docs/
def pages() -> list[Path]:
    """README.md and docs/*.md, in a fixed order."""
    return [Path(ROOT, "README.md"), *sorted(Path(ROOT, "docs").glob("*.md"))]


#: what the sandbox of a page hides behind fresh tmpfs (see tests/sandboxkit.py)
HIDDEN = (("/tmp", "1777"), ("/run", "755"), ("/etc/netns", "755"))
EXAMPLE_RUN = re.compile(r"^Example run \((\d{4}-\d{2}-\d{2}), ([^)]+)\):\s*$")
#: a page with this line runs in a sandbox that sees only a cgroup of its own, and ends with
#: ``cleanup --all`` there (a page that runs cleanup must: on the host's cgroups it could
#: reach a concurrent run's); the other pages see the host's cgroups (their limits work)
OWN_CGROUPS = "<!-- docs: own cgroups -->"
KNOWN = ("console", "python", "toml", "sh", "text")
TIMEOUT = 120
#: where a page's unprivileged user gets its home: a directory the sandbox does not hide
USER_HOMES = "/var/tmp"


@dataclass
class Block:
    """One fenced block: its kind (the info string's first word), options (the rest), body."""

    kind: str
    options: list[str]
    body: str
    line: int
    marker: str = ""          # for ``text``: the Example run line before it


@dataclass
class Update:
    """An output the ``--update-docs`` run writes over the one shown: character offsets in
    the page, and the new text."""

    start: int
    end: int
    text: str


@dataclass
class PageState:
    """What the blocks of one page share: its sandbox and the updates to write."""

    sandbox: object = None
    home: str | None = None    # the home of the page's unprivileged user (``console user``)
    updates: list[Update] = field(default_factory=list)


def _lexer() -> RawFencedCodeBlockLexer:
    return RawFencedCodeBlockLexer(
        info_pattern=re.compile(r"(?P<kind>[^\s`]*)(?P<options>[^\n`]*)$\n", re.MULTILINE))


def parse_blocks(document: Document):
    """Sybil parser: one region per fenced block, whatever its language."""
    text = document.text
    for region in _lexer()(document):
        kind = region.lexemes["kind"].strip()
        body = str(region.lexemes["source"])
        line = text.count("\n", 0, region.start) + 1
        before = text[:region.start].rstrip("\n").rsplit("\n", 1)[-1]
        marker = before if EXAMPLE_RUN.match(before) else ""
        region.parsed = Block(kind, region.lexemes["options"].split(), body, line, marker)
        region.evaluator = evaluate
        # where the body starts in the page (for --update-docs)
        region.body_start = region.start + text[region.start:].index("\n") + 1
        yield region


def sybil() -> Sybil:
    """The Sybil that reads a page into its blocks."""
    return Sybil(parsers=[parse_blocks], patterns=["*.md"])


def examples() -> list[Example]:
    """Every block of every page, in page order."""
    out: list[Example] = []
    reader = sybil()
    for page in pages():
        out.extend(reader.parse(page))
    return out


# -- normalising what varies from run to run ---------------------------------------------------

_RULES: list[tuple[re.Pattern, str]] = [
    (re.compile(r"\b4026\d{6}\b"), "INODE"),                       # namespace inodes
    (re.compile(r"\b\d{4}-\d{2}-\d{2}[ T]\d{2}:\d{2}:\d{2}\b"), "DATE"),
    (re.compile(r"\b\d{2}:\d{2}:\d{2}\b"), "TIME"),
    (re.compile(r"\bnsr-[a-z]+-[A-Za-z0-9_]{6,8}\b(?<!-demo)"), "nsr-RANDOM"),  # mkdtemp
    (re.compile(r"\bnsr-(c|v|cg|cgns|cow|sbx|\d+)-[0-9a-f]{4,}\b"), r"nsr-\1-ID"),
    (re.compile(r"\bnsr-(?:\d+|[0-9a-f]{4})-"), "nsr-ID-"),          # pids, random scopes
    (re.compile(r"\b[0-9a-f]{64}\b"), "CONTAINER-ID"),            # a container's id
    (re.compile(r"\b[0-9a-f]{12}\b"), "SHORT-ID"),                # its first 12 digits
    (re.compile(r"\b[0-9a-f]{32}\b"), "HASH"),                    # a cgroup named by a hash
    (re.compile(r"\b\d+ seconds? ago\b"), "N seconds ago"),       # container-ls CREATED
    (re.compile(r"(?<=running)(\s+)\d+"), r"\1PID"),              # container-ls PID
    (re.compile(r"(?m)^(\S+\s+)\d+(?=\s+(?:alive|dead)\b)"), r"\1PID"),   # env-ls PID
    (re.compile(r"\b0x[0-9a-f]{8}\b"), "KEY"),                      # SysV IPC keys
    (re.compile(r"(?<=KEY )\d+"), "ID"),
    (re.compile(r"(?<=queue id: )\d+"), "ID"),
    (re.compile(r"(?<=pid )\d+"), "PID"),
    (re.compile(r"(?<=holder )\d+"), "PID"),
    (re.compile(r"(?<=PID )\d{3,}"), "PID"),
    (re.compile(r"(?<=/proc/)\d+"), "PID"),
    (re.compile(r"(?<=-t )\d+"), "PID"),
    (re.compile(r"(?<=--task )\d+"), "PID"),
    (re.compile(r"(?<=NSpid: )\d+"), "PID"),
    (re.compile(r"\b\d+(\.\d+)? ?(s|ms|us)\b"), "T s"),
    (re.compile(r"[ \t]*\t[ \t]*| {2,}"), " "),
]


def normalise(text: str) -> str:
    """The output with what varies replaced: namespace inodes, dates, scratch and scope
    names, IPC keys and ids, container ids, pids, durations, ages, the machine's hostname (shown as ``vm``) and
    the column alignment (runs of spaces); trailing blanks and blank lines at either end go."""
    host = socket.gethostname()
    if host and host != "vm":
        text = re.sub(rf"(?<=@){re.escape(host)}\b", "vm", text)
        text = re.sub(rf"(?m)^{re.escape(host)}(?=\s|$)", "vm", text)
    for pattern, repl in _RULES:
        text = pattern.sub(repl, text)
    lines = [ln.rstrip() for ln in text.split("\n")]
    while lines and not lines[-1]:
        lines.pop()
    while lines and not lines[0]:
        lines.pop(0)
    return "\n".join(lines)


def _pattern(expected: str) -> re.Pattern:
    """A regex for an expected (normalised) output: a line ``...`` is any lines, ``...``
    inside a line any text."""
    parts = []
    for line in expected.split("\n"):
        if line.strip() == "...":
            parts.append(r"(?:[^\n]*(?:\n|$))*?")
        else:
            parts.append(".*?".join(re.escape(p) for p in line.split("...")) + r"(?:\n|$)")
    return re.compile("".join(parts), re.DOTALL if False else 0)


def matches(expected: str, actual: str) -> bool:
    """Whether ``actual`` output is what ``expected`` shows, both normalised."""
    want, got = normalise(expected), normalise(actual)
    if want == got:
        return True
    return "..." in want and _pattern(want).fullmatch(got + "\n" if got else "") is not None


# -- running a page's commands ------------------------------------------------------------------

def split_console(body: str) -> list[tuple[str, str, int, int]]:
    """The commands of a console block and the output after each: (command, output, start,
    end), the offsets of the output within ``body``. The prompt is what the first line
    starts with: ``$ ``, or ``# `` (root's) for a block whose outputs have ``$ `` lines."""
    prompt = body[:2]
    assert prompt in ("$ ", "# "), f"console block: the first line is not a command: {body[:60]!r}"
    out = []
    offset = 0
    current = None
    for line in body.splitlines(keepends=True):
        if line.startswith(prompt):
            if current:
                out.append((current[0], body[current[1]:offset], current[1], offset))
            current = (line[2:].rstrip("\n"), offset + len(line))
        offset += len(line)
    if current:
        out.append((current[0], body[current[1]:offset], current[1], offset))
    return out


def environment(backend: str | None) -> dict[str, str]:
    """What the page's commands run with: the checkout's venv first on PATH, a plain
    terminal's settings, and the backend asked for (else nsrecipes' own choice)."""
    env = dict(os.environ)
    for name in ("NSR_STATE_DIR", "NSR_BACKEND", "NSR_CACHE_DIR", "COLUMNS"):
        env.pop(name, None)
    env["PATH"] = f"{ROOT}/.venv/bin:" + env.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
    env.update({"TMPDIR": "/tmp", "LC_ALL": "C.UTF-8", "TERM": "dumb"})
    if backend:
        env["NSR_BACKEND"] = backend
    return env


def user_environment(backend: str | None, home: str) -> dict[str, str]:
    """:func:`environment` as the unprivileged user's login has it: its own HOME and
    ``XDG_RUNTIME_DIR`` (``HOME/run``), USER nobody (:func:`asuser.user_env`)."""
    root = environment(backend)
    env = user_env(home, PATH=f"{ROOT}/.venv/bin:{USER_PATH}",
                   **{k: root[k] for k in ("TMPDIR", "LC_ALL", "TERM")})
    for name in ("NSR_BACKEND", "NSR_CACHE_DIR", "COLUMNS"):
        env.pop(name, None)
    if backend:
        env["NSR_BACKEND"] = backend
    return env


def run_in(sandbox, argv: list[str], backend: str | None, stdin: str | None = None,
           home: str | None = None) -> subprocess.CompletedProcess:
    """``argv`` inside the page's sandbox, from the checkout, stderr merged into stdout;
    with ``home``, as uid 65534 (setpriv, no capabilities) with that home."""
    env = environment(backend)
    if home is not None:
        argv = unprivileged_argv(argv)
        env = user_environment(backend, home)
    return subprocess.run(sandbox.enter() + argv, cwd=ROOT, env=env,
                          input=stdin if stdin is not None else "", stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=TIMEOUT, check=False)


# -- the evaluator ------------------------------------------------------------------------------

#: set by the test module: page path -> PageState, and whether to write updates
STATE: dict[str, PageState] = {}
UPDATE = {"on": False}
OPEN_SANDBOX = {"fn": None}
#: set by the test module: opens a home for the page's unprivileged user (closed with the page)
OPEN_HOME = {"fn": None}


def _page(example: Example) -> PageState:
    state = STATE.setdefault(example.path, PageState())
    if state.sandbox is None:
        state.sandbox = OPEN_SANDBOX["fn"](example.path)
    return state


def _home(state: PageState) -> str:
    """The page's unprivileged user's home, made by its first ``console user`` block."""
    if state.home is None:
        why = venv_reachable()
        assert why is None, why
        state.home = OPEN_HOME["fn"]()
    return state.home


def evaluate(example: Example) -> str | None:
    """Judge one block (Sybil's evaluator); a mismatch raises AssertionError."""
    block: Block = example.region.parsed
    where = f"{os.path.relpath(example.path, ROOT)}:{block.line}"
    if block.kind == "console":
        _console(example, block, where)
    elif block.kind == "python":
        _python(example, block, where)
    elif block.kind == "toml":
        tomllib.loads(block.body)
    elif block.kind == "sh":
        pass                                  # commands without output: shown, not run
    elif block.kind == "text":
        assert block.marker, (f"{where}: a text block (output the suite does not re-run) "
                              "needs the line 'Example run (DATE, MACHINE):' right before it")
    else:
        raise AssertionError(f"{where}: a ```{block.kind} block: say what it is "
                             f"(one of {', '.join(KNOWN)})")
    return None


def _console(example: Example, block: Block, where: str) -> None:
    """Run the block's commands in order (the whole block once per backend with ``both``)."""
    state = _page(example)
    backends = ["shell", "native"] if "both" in block.options else [None]
    home = _home(state) if "user" in block.options else None
    stale: dict[tuple[int, int], str] = {}
    for backend in backends:
        for command, shown, start, end in split_console(block.body):
            # a page shows shell lines (pipes, ``; echo $?``): bash reads them as a user's would
            proc = run_in(state.sandbox, ["bash", "-c", command], backend, home=home)
            label = (f"{where}: $ {command}" + (f"  (NSR_BACKEND={backend})" if backend else "")
                     + ("  (as uid 65534)" if home else ""))
            failed_silently = (proc.returncode != 0 and "echo $?" not in command
                               and "nsrecipes:" not in proc.stdout)
            assert not failed_silently, f"{label}\nexit {proc.returncode}:\n{proc.stdout}"
            if matches(shown, proc.stdout):
                continue
            if not UPDATE["on"]:
                raise AssertionError(f"{label}\n--- shown (normalised)\n{normalise(shown)}\n"
                                     f"--- printed (normalised)\n{normalise(proc.stdout)}")
            stale.setdefault((start, end), proc.stdout)
    body_start = example.region.body_start
    state.updates += [Update(body_start + s, body_start + e, text)
                      for (s, e), text in stale.items()]


def _python(example: Example, block: Block, where: str) -> None:
    """Run a Python block in the page's sandbox (``python test``: through pytest there)."""
    state = _page(example)
    python = f"{ROOT}/.venv/bin/python"
    if "test" in block.options:
        inside = "/tmp/test_docblock.py"              # on the sandbox's own /tmp
        Path(state.sandbox.path(inside)).write_text(block.body)
        argv = [python, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-c", "/dev/null",
                "--rootdir", "/tmp", inside]
        proc = run_in(state.sandbox, argv, None)
    else:
        proc = run_in(state.sandbox, [python, "-"], None, stdin=block.body)
    assert proc.returncode == 0, f"{where}: the Python block failed:\n{proc.stdout}"


def write_updates(path: str, updates: list[Update]) -> None:
    """Write the new outputs into the page (last first, so the offsets hold)."""
    text = Path(path).read_text()
    for up in sorted(updates, key=lambda u: u.start, reverse=True):
        new = up.text if up.text.endswith("\n") or not up.text else up.text + "\n"
        text = text[:up.start] + new + text[up.end:]
    Path(path).write_text(text)

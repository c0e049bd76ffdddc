"""The tasks that span the others: tour (every demo in the document's order), cleanup, doctor."""
from __future__ import annotations

from invoke import Exit

from cli.common import current_lesson, nsr_task


@nsr_task(lesson="step")
def tour(c, backend=None, explain=False):
    """All demos in the document's order, with headings: the main job.

    As root, or without root in a user namespace of your own (mapped to root inside, owning
    every other namespace); what a user cannot do is said in one line where it is left out.
    """
    from recipes import tour as t
    from nsutil.rootless import require_namespaces
    if not explain:
        require_namespaces("tour")
    t.tour(backend=backend, explain=explain, lesson=current_lesson())


@nsr_task(help={"dry_run": "only list what would be removed and what is kept (and why); "
                           "remove nothing",
                "all": "remove everything nsrecipes made, in use or not: live environments, "
                       "net-veth pairs, topologies, running containers too (listed first)"})
def cleanup(c, dry_run=False, all_=False):
    """Remove what nsrecipes left broken or orphaned; keep what is in use (--all: everything).

    Removed: environments whose holder died or whose creator died half-way, half-built
    net-veth pairs and topologies, dead containers (their tool or supervisor was killed), nsr
    cgroups with no process, nsr-cow-*/nsr-user-* scratch directories, half-imported images
    (the image store's tmp/import-* of an import that died; never a complete image). Kept:
    live environments, complete pairs and topologies, running and exited containers (detached,
    or --no-rm: container-rm removes them). A network namespace no nsrecipes record names is
    never touched, whatever its name. Without root: only your own (your state directory's
    labs and containers whose holder or supervisor died or was never finished, their
    holders); root's cleanup never sees them.
    """
    from recipes.ops import cleanup as cl
    from nsutil import rootless
    from nsutil.errors import require_root
    if not rootless.decide():     # a user cleans up the user's own (their state directory)
        require_root("cleanup")
    plan = cl.sweep(everything=all_)
    for line in cl.plan_lines(plan, dry_run):
        print(line, flush=True)
    removed, failed = cl.remove_all(dry_run=dry_run, items=plan.remove)
    for item, exc in failed:
        print(f"FAILED {item.kind} {item.name}: {exc}")
    print(cl.summary(removed, failed, plan.kept, dry_run))
    if failed:
        raise Exit(f"nsrecipes: cleanup: {len(failed)} could not be removed (hint: see above)",
                   code=1)

@nsr_task(help={"json": "print the table as JSON (a list of rows: layer, name, status, ok, "
                        "required, detail, blocks, fix)"})
def doctor(c, json=False):
    """Which layer lets this process make namespaces, and which blocks: a table of layers.

    Each row is a real attempt in a child process where one can be made: root and its user
    namespace, capabilities, seccomp, LSMs, a container (own PID namespace, read-only
    /proc/sys), each namespace type, a mount, unprivileged user namespaces (and their
    sysctls), cgroups and their delegation, overlayfs (also in a user namespace), modules and
    netem, tools. A row that is not ok says what it blocks and the fix; exits non-zero if a
    layer blocks the tour. Leaves nothing behind: every attempt is made in namespaces of the
    child's own, and the one cgroup it makes (nsr-doctor-PID) is removed at once.
    """
    from recipes.ops import doctor as doc
    checks = doc.run_checks()
    print(doc.as_json(checks) if json else doc.format_table(checks))
    blocked = doc.blocking(checks)
    if blocked:
        raise Exit(f"nsrecipes: doctor: blocked by {', '.join(ch.name for ch in blocked)} "
                   "(hint: each row above says what it blocks and the fix)", code=1)


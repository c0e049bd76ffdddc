"""The tasks that span the others: tour (every demo in the document's order), cleanup, doctor."""
from __future__ import annotations

from invoke import Exit

from cli.common import current_lesson, nsr_task


@nsr_task(lesson="step")
def tour(c, backend=None, explain=False):
    """All demos in the document's order, with headings: the main job. Needs root."""
    from recipes import tour as t
    from nsutil.errors import require_root
    if not explain:
        require_root("tour")
    t.tour(backend=backend, explain=explain, lesson=current_lesson())


@nsr_task(help={"dry_run": "only list what would be removed and what is kept (and why); "
                           "remove nothing",
                "all": "remove everything nsrecipes made, in use or not: live environments, "
                       "net-veth pairs, topologies, running containers too (listed first)"})
def cleanup(c, dry_run=False, all_=False):
    """Remove what nsrecipes left broken or orphaned; keep what is in use (--all: everything).

    Removed: environments whose holder died or whose creator died half-way, half-built
    net-veth pairs and topologies, containers whose tool is gone, nsr cgroups with no process,
    nsr-cow-*/nsr-user-* scratch directories. Kept: live environments, complete pairs and
    topologies, running containers. A network namespace no nsrecipes record names is never
    touched, whatever its name.
    """
    from recipes.ops import cleanup as cl
    from nsutil.errors import require_root
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

@nsr_task()
def doctor(c):
    """Check the kernel and host: namespaces, user-ns limits, cgroups, overlayfs, tools, root.

    Prints an ok/missing table with hints; exits non-zero if something the demos need is missing.
    """
    from recipes.ops import doctor as doc
    checks = doc.run_checks()
    print(doc.format_table(checks))
    missing = [ch.name for ch in checks if ch.required and not ch.ok]
    if missing:
        raise Exit(f"nsrecipes: doctor: missing {', '.join(missing)} (hint: see the table above)",
                   code=1)


"""Tasks for machines of a lab: machines-install (labs across machines)."""
from __future__ import annotations

from cli.common import nsr_task


@nsr_task(help={"file": "the lab file whose [machines] table names the machines (each with "
                        "its venv = \"/path\")",
                "wheelhouse": "a directory of dependency wheels to put there too and install "
                              "from with --no-index (for machines without PyPI; make it with "
                              "pip download -d DIR invoke pyroute2 graphviz zstandard)",
                "python": "the Python 3.11+ on the machines that makes the venv (default python3)"})
def machines_install(c, file, wheelhouse=None, python="python3"):
    """Install this checkout's nsrecipes into every machine's venv, on all at once.

    Builds the wheel (pip wheel --no-deps), and on each machine through Fabric: python3 -m
    venv VENV, puts the wheel (and --wheelhouse's) there, pip installs it; then checks each
    machine's nsrecipes version as a build does.
    """
    from recipes.labs.machines import install as machineinstall
    from recipes.labs import build as topo
    from recipes.labs import labfile as topofile
    plan = topofile.plan_file(file)
    if not plan.machines:
        from nsutil.errors import InvalidInput
        raise InvalidInput(f"{file} has no [machines] table", hint="add [machines.NAME] tables")
    seconds, _ = topo.timed(machineinstall.install, plan.machines, wheelhouse, python)
    print(f"installed on {len(plan.machines)} machines in {seconds:.1f} s")

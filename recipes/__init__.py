"""nsrecipes: the sections of "Docker core principles" as runnable, composable recipes.

One module per section of the document -- :mod:`recipes.uts`, :mod:`recipes.ipc`,
:mod:`recipes.pid`, :mod:`recipes.mount`, :mod:`recipes.net`, :mod:`recipes.user`,
:mod:`recipes.api` -- and for the two principles the document only names,
:mod:`recipes.cgroup` and :mod:`recipes.cow`, composed in :mod:`recipes.container`.
Environments that last are in :mod:`recipes.env`; topologies in :mod:`recipes.labs.build`.

Every recipe is a plain function taking a :class:`nsutil.backend.Runner` (or creating one),
so a provisioning script uses them exactly as ``tasks.py`` does::

    from nsutil.backend import Runner
    from recipes import uts
    with Runner(backend="native") as run:
        print(uts.demo(run, hostname="NewNamespace"))
"""

"""The command line: the task groups (demos, containers, envs, labs, machines, ops), the
collection of them all (collection), what every task shares (common) and the installed
``nsr`` command (program; :func:`main` is its console script)."""


def main() -> None:
    """The ``nsr`` console script. A Ctrl-C while its modules still load (about 0.3 s)
    ends it quietly, status 130: nothing was made yet."""
    import sys
    try:
        from cli.program import main as run
    except KeyboardInterrupt:
        sys.exit(130)
    run()

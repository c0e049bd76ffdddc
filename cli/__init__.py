"""The command line's rooms (tasks.py imports their tasks): common (what every task shares),
labs (net-topo, net-exec, net-link) and envs (env-*)."""

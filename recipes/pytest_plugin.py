"""pytest fixtures for users' own test suites (loaded through the ``pytest11`` entry point).

Filled in by the network recipes (issue: Network recipes at scale).
"""

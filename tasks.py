"""nsrecipes command line in the checkout: `invoke --list` shows every task, `invoke TASK
--help` its options. The installed command `nsr TASK` runs the same collection.

The tasks live in the cli package (cli.collection); this file only hands invoke that
collection. Every error nsrecipes raises becomes one line on stderr with a hint and a
non-zero exit status (cli.common.nsr_task), and so does a command line invoke cannot parse
(cli.program).
"""
from __future__ import annotations

import sys

from cli.collection import ns  # noqa: F401  (invoke loads the collection named ns)
from cli.program import invoke_in_checkout

invoke_in_checkout(sys.argv)

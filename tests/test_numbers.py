"""Every numeric option of every task goes through one validator (nsutil.limits.parse_number):
a value that does not parse or is out of range is one line naming the option, exit 2, before
anything is made -- never a traceback, never a silently accepted -1."""
from __future__ import annotations

import pytest

from helpers import cli, one_line_error
from nsutil.errors import InvalidInput
from nsutil.limits import parse_number

BAD = [
    (["cgroup-demo", "--seconds=abc"], "--seconds 'abc' is not a number"),
    (["cgroup-demo", "--seconds=-1"], "--seconds -1 is out of range"),
    (["cgroup-demo", "--seconds", "1e9"], "--seconds '1e9' is not a number"),
    (["cow-demo", "--size-mb", "eight"], "--size-mb 'eight' is not a number"),
    (["cow-demo", "--size-mb", "0"], "--size-mb 0 is out of range"),
    (["net-topo", "--hosts", "3.5"], "host count '3.5' is not a number"),
    (["user-demo", "--uid", "x"], "uid 'x' is not a number"),
]


@pytest.mark.userspace
@pytest.mark.parametrize("args,words", BAD, ids=[" ".join(a) for a, _ in BAD])
def test_bad_numbers_are_one_line(args, words):
    proc = cli(*args)
    assert words in one_line_error(proc)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr


@pytest.mark.userspace
def test_parse_number_rules():
    assert parse_number(" 7 ", "--n") == 7
    assert parse_number("0.25", "--s", kind=float, minimum=0.1) == 0.25
    assert parse_number(".5", "--s", kind=float) == 0.5
    for text, kind in (("", int), ("1.0", int), ("nan", float), ("inf", float), ("1_000", int),
                       ("0x10", int), ("１２", int)):
        with pytest.raises(InvalidInput, match="is not a number"):
            parse_number(text, "--n", kind=kind)
    with pytest.raises(InvalidInput, match=r"--n 11 is out of range \(hint: write a whole number "
                                           r"at least 1 and at most 10, e\.g\. 3\)"):
        parse_number("11", "--n", minimum=1, maximum=10, example="3")

"""A pytest plugin the VM guest loads (``-p nsr_vm_live``): one line per test into
``$NSR_VM_RESULTS`` as soon as the test ends, so the host has every result so far even when
the VM times out or dies before pytest writes its junit xml. A test whose body runs longer
than ``$NSR_VM_TEST_TIMEOUT`` seconds (900) fails with "timed out", so one hang does not
stop the rest of the run.

Each line is ``OUTCOME<TAB>NODEID<TAB>ONE-LINE ERROR<TAB>SECONDS``; OUTCOME is passed, failed,
error or skipped, SECONDS the phase's duration. Only the standard library and pytest's hook API.
"""
from __future__ import annotations

import os
import signal

import pytest


def _one_line(report: pytest.TestReport) -> str:
    if isinstance(report.longrepr, tuple):       # a skip: (file, line, "Skipped: reason")
        return str(report.longrepr[2])[:300]
    crash = getattr(report.longrepr, "reprcrash", None)
    text = crash.message if crash is not None else str(report.longrepr or "")
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[0][:300] if lines else ""


def _write(outcome: str, report: pytest.TestReport) -> None:
    path = os.environ.get("NSR_VM_RESULTS")
    if path:
        with open(path, "a") as f:
            message = _one_line(report) if outcome != "passed" else ""
            f.write(f"{outcome}\t{report.nodeid}\t{message}\t{report.duration:.1f}\n")


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.when == "call":
        _write(report.outcome, report)
    elif report.failed:
        _write("error", report)           # a failing fixture (setup) or cleanup (teardown)
    elif report.skipped and report.when == "setup":
        _write("skipped", report)


def _timed_out(signum: int, frame: object) -> None:
    pytest.fail(f"timed out after {os.environ.get('NSR_VM_TEST_TIMEOUT', '900')} s in the VM")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item):
    previous = signal.signal(signal.SIGALRM, _timed_out)
    signal.setitimer(signal.ITIMER_REAL, float(os.environ.get("NSR_VM_TEST_TIMEOUT", "900")))
    try:
        return (yield)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)

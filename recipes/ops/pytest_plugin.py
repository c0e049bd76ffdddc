"""pytest fixtures for users' own test suites (loaded through the ``pytest11`` entry point).

Once nsrecipes is installed, any test suite run as root can ask for:

* ``nsr_netns`` -- the name of a fresh network namespace (only ``lo``, up), deleted after;
* ``nsr_veth`` -- two fresh namespaces joined by a veth pair with addresses
  (:class:`VethPair`: ``.ns_a``, ``.ns_b``, ``.addr_a``, ``.addr_b``, ``.check()``);
* ``nsr_topology`` -- a built :class:`recipes.labs.build.Topology`, a star of 3 hosts unless the
  test says otherwise with ``@pytest.mark.nsr_topology(shape="line", hosts=4)`` or
  ``file="lab.toml"``; ``net.run("h1", [...])``, ``net.addr("h2")``, ``net.check()``.
  The marker's keywords go to :func:`recipes.labs.build.topology` as they are, impaired links
  included (tc netem/tbf on both ends, see :mod:`recipes.labs.impair`)::

      @pytest.mark.nsr_topology(shape="line", hosts=2,
                                links={("h1", "h2"): {"delay": "50ms", "loss": "2%"}})
      def test_service_survives_a_bad_link(nsr_topology):
          ...   # this service, under 100 ms of RTT and 2 % loss each way

  ``impair={"rate": "10mbit"}`` impairs every link; ``links`` names single ones (by their
  two hosts, either order) and wins over ``impair``. Keys: delay, jitter, loss, rate,
  corrupt, duplicate; a bad value fails the test's setup in one line, before anything
  is built.

Every fixture tears down what it made, also when the test fails. Names carry the ``nsr``
prefix and a random scope, so tests may run in parallel. The backend is ``native`` unless
``--nsr-backend shell`` (or ``$NSR_BACKEND``) says otherwise. Without root the fixtures skip.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Iterator

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    """``--nsr-backend``: the backend the nsrecipes fixtures build with."""
    group = parser.getgroup("nsrecipes")
    group.addoption("--nsr-backend", default=None, choices=("auto", "shell", "native"),
                    help="backend for the nsrecipes fixtures (default: $NSR_BACKEND or native)")


def pytest_configure(config: pytest.Config) -> None:
    """Register the ``nsr_topology`` marker."""
    config.addinivalue_line("markers", "nsr_topology(shape='star', hosts=3, file=None, "
                                       "links=None, impair=None): what the nsr_topology "
                                       "fixture builds (links: {(a, b): {delay, loss, rate, ...}})")


def _backend(config: pytest.Config) -> str:
    return config.getoption("--nsr-backend") or os.environ.get("NSR_BACKEND") or "native"


def _need_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("nsrecipes network fixtures need root")


@dataclass
class VethPair:
    """Two namespaces joined by a veth pair (end ``ns_a`` in ``ns_a``, ``ns_b`` in ``ns_b``)."""

    ns_a: str
    ns_b: str
    addr_a: str
    addr_b: str

    def check(self) -> bool:
        """A UDP datagram from a to b and a reply back."""
        from recipes.common.reach import udp_check
        return udp_check(self.ns_a, self.addr_a, self.ns_b, self.addr_b)


@pytest.fixture
def nsr_netns(request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh network namespace (name under /run/netns, ``lo`` up); deleted after the test."""
    _need_root()
    from nsutil.backend import Runner
    from nsutil.names import prefixed, scope_id
    from recipes import net

    name = prefixed(scope_id(), "t")
    with open(os.devnull, "w") as out, Runner(backend=_backend(request.config), out=out) as run:
        net.record_scratch_netns(run, [name])
        net.create_netns(run, name)
        net.set_lo_up(run, name)
        yield name


@pytest.fixture
def nsr_veth(request: pytest.FixtureRequest) -> Iterator[VethPair]:
    """Two fresh namespaces joined by a veth pair, 10.250.0.1/24 <-> 10.250.0.2/24."""
    _need_root()
    from nsutil.backend import Runner
    from nsutil.names import prefixed, scope_id
    from recipes import net

    scope = scope_id()
    a, b = prefixed(scope, "a"), prefixed(scope, "b")
    pair = VethPair(a, b, "10.250.0.1/24", "10.250.0.2/24")
    with open(os.devnull, "w") as out, Runner(backend=_backend(request.config), out=out) as run:
        net.record_scratch_netns(run, [a, b])
        net.create_netns(run, a)
        net.create_netns(run, b)
        net.add_veth_pair(run, a, b, ns=a, peer_ns=b, addr=pair.addr_a, peer_addr=pair.addr_b)
        yield pair


@pytest.fixture
def nsr_topology(request: pytest.FixtureRequest):
    """A built topology (star of 3 unless ``@pytest.mark.nsr_topology(...)``, whose keywords,
    ``links=``/``impair=`` impairments too, go to :func:`recipes.labs.build.topology`), torn down after."""
    _need_root()
    from recipes.labs.build import topology

    marker = request.node.get_closest_marker("nsr_topology")
    kwargs = dict(marker.kwargs) if marker else {}
    if marker and marker.args:
        kwargs.setdefault("shape", marker.args[0])
    kwargs.setdefault("backend", _backend(request.config))
    with topology(**kwargs) as net:
        yield net

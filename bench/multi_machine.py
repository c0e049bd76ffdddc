"""A 100-host lab on 1, 2 and 4 simulated machines: build and teardown time, and the share
of it that is SSH (issue 12).

The machines are those of the tests (tests/machines.py: nsrecipes environments with a real
sshd each, joined by an underlay bridge; the controller in a namespace of its own). The lab
is a line of 100 hosts (inner hosts route), cut into equal consecutive pieces, one per
machine, so 1, 1 and 3 links become VXLAN tunnels. The SSH share is the wall time of
connecting and running ``true`` on every machine at once (Fabric, a thread each), against
the build's and teardown's wall time (each is one SSH session per machine).
Run as root: ``.venv/bin/python bench/multi_machine.py [--backend shell]``.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "tests")]

from machines import cluster          # noqa: E402
from nsutil.backend import Runner     # noqa: E402
from recipes.labs.machines import controller as machines  # noqa: E402
from recipes.labs import labfile as topofile  # noqa: E402

HOSTS = 100


def lab_text(c, count: int) -> str:
    per = -(-HOSTS // count)
    hosts = "".join(f'[hosts.h{i}]\nmachine = "m{(i - 1) // per + 1}"\n'
                    + ("router = true\n" if 1 < i < HOSTS else "") for i in range(1, HOSTS + 1))
    links = "".join(f'[[links]]\na = "h{i}"\nb = "h{i + 1}"\n' for i in range(1, HOSTS))
    return c.toml() + hosts + links


def one(count: int, backend: str) -> dict:
    with tempfile.TemporaryDirectory() as d, cluster(count, d) as c:
        path = os.path.join(d, "lab.toml")
        with open(path, "w") as f:
            f.write(lab_text(c, count))
        plan = topofile.plan_file(path)
        run = Runner(backend=backend, keep=True, out=open(os.devnull, "w"))
        with c.controller():
            machines.ssh_overhead(plan)                      # warm: host keys, imports
            sshd0 = sum(sshd_cpu(c, n) for n in c.names)
            cpu0 = time.process_time()
            runs = [machines.ssh_overhead(plan) for _ in range(3)]
            client = (time.process_time() - cpu0) / (3 * count)
            sshd = (sum(sshd_cpu(c, n) for n in c.names) - sshd0) / (3 * count)
            ssh = min(r["all"] for r in runs)
            per = min(sum(v for k, v in r.items() if k != "all") / count for r in runs)
            t = time.perf_counter()
            machines.build(run, plan)
            build = time.perf_counter() - t
            t = time.perf_counter()
            machines.down(run, plan.scope)
            down = time.perf_counter() - t
        return {"machines": count, "build": build, "down": down, "ssh": ssh, "per": per,
                "client": client, "sshd": sshd}


def sshd_cpu(c, name: str) -> float:
    """CPU seconds the connections to machine ``name``'s sshd have used so far (its
    listener's reaped children: one sshd per connection)."""
    pid = c.exec(name, ["cat", "/run/nsr-sshd.pid"]).stdout.strip()
    stat = c.exec(name, ["cat", f"/proc/{pid}/stat"]).stdout.rsplit(")", 1)[1].split()
    return (int(stat[13]) + int(stat[14])) / os.sysconf("SC_CLK_TCK")   # cutime, cstime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", choices=("native", "shell"), default="native",
                        help="how each machine builds its part (default: native)")
    backend = parser.parse_args().backend
    rows = [one(n, backend) for n in (1, 2, 4)]
    print(f"{HOSTS}-host line lab, {backend} backend, a real sshd per simulated machine")
    print(f"{'MACHINES':>8} {'BUILD s':>8} {'DOWN s':>8} {'SSH s':>7} {'SSH % of build':>15} "
          f"{'SSH % of down':>14} {'PER MACHINE s':>14} {'CLIENT CPU s':>13} {'SSHD CPU s':>11}")
    for r in rows:
        print(f"{r['machines']:>8} {r['build']:>8.2f} {r['down']:>8.2f} {r['ssh']:>7.3f} "
              f"{100 * r['ssh'] / r['build']:>14.0f}% {100 * r['ssh'] / r['down']:>13.0f}% "
              f"{r['per']:>14.3f} {r['client']:>13.3f} {r['sshd']:>11.3f}")
    print("PER MACHINE: one machine's connect + `true`, all at once; CPU: per connection, of "
          "the controller (all its threads) and of the machine's sshd")
    print(closing(rows, os.cpu_count() or 1))


def closing(rows: list[dict], cores: int) -> str:
    """The verdict: does the per-machine overhead grow, and why."""
    first, last = rows[0], rows[-1]
    if last["per"] <= 1.5 * first["per"]:
        return (f"per-machine SSH overhead {first['per']:.2f} s on 1 machine, {last['per']:.2f} s "
                f"on {last['machines']}: it does not grow (Fabric connects in parallel)")
    busy = last["machines"] * last["sshd"]
    return (f"per-machine SSH overhead GROWS here ({first['per']:.2f} s on 1 machine, "
            f"{last['per']:.2f} s on {last['machines']}): not the controller ({last['client']:.3f} s "
            f"CPU per connection, so no GIL queue) but the simulation: {last['machines']} sshd "
            f"handshakes of {last['sshd']:.2f} s CPU each ({busy:.2f} s) share this host's "
            f"{cores} cores; real machines each have their own CPU")


if __name__ == "__main__":
    main()

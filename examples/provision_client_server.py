#!/usr/bin/env python3
"""Provision a client and a server, each in its own environment, on a veth link.

The recipes composed, step by step (each is also an ``invoke env-*`` task):

1. two environments with new UTS, IPC, PID, mount and network namespaces, each with its
   own hostname (``env-create --hostname``);
2. a veth pair between their network namespaces, addressed (``env-veth``);
3. a tmpfs inside the server only, holding the page it serves (``env-mount``);
4. the server listens with ``busybox nc`` inside its namespaces; the client connects over
   TCP through the veth and prints what it got (``env-exec``) -- traffic between the two
   environments' network namespaces only;
5. both are removed when the ``with`` block ends (``env-rm``).

Run it as root, from the checkout, with the Python that has nsrecipes' dependencies -- the
project's ``.venv`` that ``./bootstrap`` makes (the system ``python3`` lacks ``sh`` and
``pyroute2``)::

    .venv/bin/python examples/provision_client_server.py [--backend shell|native]

or, where nsrecipes is installed with pip, that environment's ``python``.
"""
from __future__ import annotations

import argparse
import os
import secrets
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from nsutil.errors import NsrError  # noqa: E402
from recipes.env import Environment  # noqa: E402

PORT = 8080
SERVER_ADDR, CLIENT_ADDR = "10.250.0.1/30", "10.250.0.2/30"


def provision(backend: str | None) -> int:
    """Build the two environments, prove the link with a TCP exchange, remove them."""
    tag = secrets.token_hex(2)
    types = "uts,ipc,pid,mnt,net"
    with Environment.create(f"nsr-server-{tag}", types, hostname="server", backend=backend) as server, \
         Environment.create(f"nsr-client-{tag}", types, hostname="client", backend=backend) as client:
        print(f"[1] environments {server.name} (pid {server.pid}) and {client.name} "
              f"(pid {client.pid})")
        link = server.add_veth(client, addr=SERVER_ADDR, peer_addr=CLIENT_ADDR)
        print(f"[2] veth {server.name}:{link['ifname']} {SERVER_ADDR} <-> "
              f"{client.name}:{link['peer_ifname']} {CLIENT_ADDR}")
        server.mount_tmpfs("/mnt", size="1m")
        server.exec(["sh", "-c", 'echo "hello from $(hostname)" > /mnt/index.txt'], check=True)
        print("[3] tmpfs on /mnt inside the server with /mnt/index.txt "
              "(the host's /mnt is untouched)")

        served: dict = {}

        def serve() -> None:
            served["done"] = server.exec(["sh", "-c", f"busybox nc -l -p {PORT} < /mnt/index.txt"])

        thread = threading.Thread(target=serve)
        thread.start()
        got = None
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            done = client.exec(["busybox", "nc", "-w", "2", SERVER_ADDR.split("/")[0], str(PORT)])
            if done.returncode == 0 and done.stdout.strip():
                got = done.stdout.strip()
                break
            time.sleep(0.05)
        thread.join(10)
        who = client.exec(["hostname"]).stdout.strip()
        print(f"[4] {who} connected to {SERVER_ADDR.split('/')[0]}:{PORT} over TCP and got: {got!r}")
        if got != "hello from server":
            print("the server did not answer", file=sys.stderr)
            return 1
        print("    the server answered the client over their own veth link")
        for e in (server, client):
            row = e.info()
            print(f"    {row['name']}: state {row['state']}, {row['nprocs']} processes, "
                  f"net:[{row['ns']['net']}]")
    print("[5] both environments removed")
    return 0


def main() -> int:
    """Parse ``--backend`` and provision."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=["auto", "shell", "native"], default=None)
    args = parser.parse_args()
    try:
        return provision(args.backend)
    except NsrError as exc:
        print(f"nsrecipes: {exc}", file=sys.stderr)
        return exc.exit_code


if __name__ == "__main__":
    sys.exit(main())

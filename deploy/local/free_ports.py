"""Chooses free loopback TCP ports for servers that are started next.

Usage: free_ports.py N [TAKEN ...]   prints N ports, one per line

A port is free when nothing is bound to it now; the server that will listen
there binds it a moment later. Two things could take it in between, and the
choice rules both out:

- the same caller choosing again before its first server listens: the N
  ports are bound all at once while chosen, and none of TAKEN (the ports the
  caller chose before) is given;
- another test worker choosing at the same time: HOOKBRIDGE_PORT_SLOT=i/n
  (set by the test harness, inherited by what it starts) gives only ports p
  with p % n == i, so the n workers of one test run never choose one port.

Used by deploy/local/stack.sh and kafka.sh, and imported by the test harness
(tests/e2e/hbtest/procs.py).
"""
import os
import random
import socket
import sys


def port_slot():
    """(i, n) from HOOKBRIDGE_PORT_SLOT, or (0, 1) when unset or unreadable."""
    try:
        i, n = (int(x) for x in os.environ.get("HOOKBRIDGE_PORT_SLOT", "").split("/"))
    except ValueError:
        return 0, 1
    return (i, n) if 0 <= i < n else (0, 1)


def port_range():
    """Below the kernel's ephemeral range (ip_local_port_range, 32768-60999 by
    default), where no outgoing connection takes a local port; the ephemeral
    range itself where there is no room below it."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            lo, hi = (int(x) for x in f.read().split())
    except (OSError, ValueError):
        lo, hi = 32768, 60999
    return (10000, lo - 1) if lo - 10000 >= 4000 else (lo, hi)


def choose(count, taken=()):
    i, n = port_slot()
    first, last = port_range()
    taken = set(taken)
    base = first + (i - first) % n  # the class's first port in the range
    held, ports = [], []
    try:
        while len(ports) < count:
            # not the kernel's choice (port 0): Linux gives bind() odd ports
            # only (2,000 of 2,000 here), to a worker of any class
            p = base + random.randrange((last - base) // n + 1) * n
            if p in taken:
                continue
            s = socket.socket()
            try:
                s.bind(("127.0.0.1", p))
            except OSError:  # someone has it
                s.close()
                continue
            held.append(s)  # kept bound until all are chosen: none twice
            ports.append(p)
            taken.add(p)
    finally:
        for s in held:
            s.close()
    return ports


if __name__ == "__main__":
    print("\n".join(str(p) for p in choose(int(sys.argv[1]), (int(a) for a in sys.argv[2:]))))

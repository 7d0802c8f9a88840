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
    """count free ports of this worker's class, none of taken. Fails (an
    error naming the class) rather than spinning when taken and what is bound
    leave too few: the class holds (range / workers) ports, about 2,800 with 8
    workers."""
    i, n = port_slot()
    first, last = port_range()
    taken = set(taken)
    base = first + (i - first) % n  # the class's first port in the range
    size = (last - base) // n + 1
    mine = sum(1 for p in taken if base <= p <= last and (p - base) % n == 0)
    if mine + count > size:
        raise RuntimeError(f"cannot choose {count} port(s): class {i}/{n} of ports "
                           f"{first}-{last} holds {size}, {mine} of them taken")
    held, ports = [], []
    tries = 0
    try:
        while len(ports) < count:
            tries += 1
            if tries > 100 * count + 10000:
                raise RuntimeError(f"cannot choose {count} port(s) in class {i}/{n}: "
                                   f"{len(ports)} found in {tries - 1} tries "
                                   f"({len(taken)} taken)")
            # not the kernel's choice (port 0): Linux gives bind() odd ports
            # only (2,000 of 2,000 here), to a worker of any class
            p = base + random.randrange(size) * n
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
    try:
        chosen = choose(int(sys.argv[1]), (int(a) for a in sys.argv[2:]))
    except RuntimeError as e:
        sys.exit(f"free_ports.py: {e}")
    print("\n".join(str(p) for p in chosen))

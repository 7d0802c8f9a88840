"""make bench: a process's CPU time, sampled often, to cut a phase out of it.

    cpu_sampler.py PID OUT [INTERVAL_MS]

Every INTERVAL_MS (default 5) appends "wall_ms cpu_ns" to OUT: the wall clock
in milliseconds (the clock nginx's $msec uses) and the run time of every
thread of PID so far, in nanoseconds (/proc/PID/task/*/schedstat, first
field: exact, unlike /proc/PID/stat's clock ticks; threads that ended are
lost, which the dispatcher's do not do during a run). Stops when PID is gone
or OUT.stop exists. scripts/bench.sh uses it for the catch-up phase, whose
start-up (connecting, the group join) must not count: the CPU between the
first and the last POST is the difference of the samples around them.
"""
import os
import sys
import time


def cpu_ns(pid):
    total = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                total += int(f.read().split()[0])
        except (FileNotFoundError, ProcessLookupError, IndexError, ValueError):
            pass
    return total


def main():
    pid, out = int(sys.argv[1]), sys.argv[2]
    interval = (int(sys.argv[3]) if len(sys.argv) > 3 else 5) / 1000.0
    with open(out, "w") as f:
        while not os.path.exists(out + ".stop"):
            try:
                ns = cpu_ns(pid)
            except FileNotFoundError:
                break
            f.write(f"{time.time() * 1000:.3f} {ns}\n")
            time.sleep(interval)


if __name__ == "__main__":
    main()

"""deploy/local/stack.sh, the start/stop functions behind `make run` and
`make bench`: whatever the user does with Ctrl-C, nothing is left running."""
import os
import signal
import subprocess
import time
from pathlib import Path

from hbtest.procs import REPO, SLOW, wait_until

SCRIPT = r"""
set -euo pipefail
. deploy/local/stack.sh
stack_init hbstacktest
stack_start_postgres
# A process that takes a while to stop, as the dispatcher does while it drains.
stack_spawn slow bash -c 'trap "" TERM INT; sleep 30'
echo "dir=$STACK_DIR"
echo ready
wait
"""


def ctrl_c_as_in_a_terminal():
    """SIGINT back to its default in the script (see test_make_run.py): run
    from a background job, it came ignored, the Ctrl-C did nothing and the
    test waited for the slow process's 30 s instead."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def postmasters(data_dir):
    out = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if str(data_dir) in line and "postgres" in line]


def test_ctrl_c_twice_while_stopping_still_stops_postgres_and_removes_the_state(tmp_path):
    """Ctrl-C, then Ctrl-C again while the stack is stopping (an impatient
    user): the second one must not cut the clean-up short and leave the
    throwaway PostgreSQL running with its directory in /tmp."""
    out_path = tmp_path / "out"
    env = dict(os.environ, STACK_STOP_TIMEOUT="3")
    with open(out_path, "w") as out:
        p = subprocess.Popen(["bash", "-c", SCRIPT], cwd=REPO, stdout=out,
                             stderr=subprocess.STDOUT, env=env, start_new_session=True,
                             preexec_fn=ctrl_c_as_in_a_terminal)
    state_dir = None
    try:
        wait_until(lambda: "ready" in out_path.read_text() or p.poll() is not None, 60,
                   "the stack to start")
        assert p.poll() is None, out_path.read_text()
        state_dir = Path(out_path.read_text().split("dir=")[1].split()[0])
        assert postmasters(state_dir), "PostgreSQL is not running"
        os.killpg(p.pid, signal.SIGINT)  # Ctrl-C: the terminal signals the whole group
        time.sleep(1)                     # stopping: waiting for the slow process
        assert p.poll() is None, "clean-up ended too early for this test"
        os.killpg(p.pid, signal.SIGINT)  # Ctrl-C again
        p.wait(60 * SLOW)
        time.sleep(0.5)
        assert postmasters(state_dir) == [], "PostgreSQL left running:\n" + out_path.read_text()
        assert not state_dir.exists(), "the state directory was left behind"
    finally:
        try:  # whatever the script left in its group (the slow process when it failed)
            os.killpg(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        p.wait()
        if state_dir and (state_dir / "pg/data/postmaster.pid").exists():
            argv = ["pg_ctl", "-D", str(state_dir / "pg/data"), "-m", "immediate", "-w", "stop"]
            pgbin = subprocess.run(["bash", "-c", ". deploy/local/stack.sh; stack_pgbin"],
                                   cwd=REPO, capture_output=True, text=True).stdout.strip()
            argv[0] = f"{pgbin}/pg_ctl"
            if os.geteuid() == 0:
                argv = ["runuser", "-u", "postgres", "--"] + argv
            subprocess.run(argv, cwd="/tmp", capture_output=True)
        if state_dir and state_dir.exists():
            subprocess.run(["rm", "-rf", str(state_dir)])

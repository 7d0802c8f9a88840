"""Review 59: what was merged on 7 December (reviews 56 to 58 and the
lead's), as production meets it.

Each check says what it did on main's binaries (c36abc8)."""
import time

from hbtest.procs import SLOW, wait_until
from hbtest.stack import Broker, Retrier
from test_delivery import sql

ANSWERED = "periodic requests are answered again"
SWEEP = "deactivate_failing(interval)"


def test_a_sweep_failing_for_good_beside_answered_claims_is_not_said_answered_again(
        db_url, procs, workdir):
    """The retrier's sweep of failing endpoints (every second here) fails
    for good (its function is gone: a schema half migrated) while its replay
    claims are answered every second. The sweep's failure is warned, and
    nothing says the periodic requests are answered again while it goes on
    failing; once the sweep is answered again, that is said within seconds.

    On main (c36abc8): 'the periodic requests are answered again' came one
    second after each warning (every 30 s, for as long as the sweep failed),
    which reads as the end of a failure that had not ended. About 9 s."""
    broker = Broker(procs, workdir)
    r = Retrier(procs, db_url, broker.bootstrap,
                extra_env={"HOOKBRIDGE_AUTO_DEACTIVATE_AFTER": "4s"})
    r.wait_ready()
    sql(db_url, f"ALTER FUNCTION hookbridge.{SWEEP} RENAME TO deactivate_failing_gone")
    wait_until(lambda: "deactivate_failing(interval) does not exist" in r.proc.output(),
               5 * SLOW, "the sweep's failure warned")
    warned = len(r.proc.output())
    time.sleep(2.5 * SLOW)  # replay claims answered meanwhile, the sweep failing each second
    assert ANSWERED not in r.proc.output()[warned:], r.proc.output()[warned:][-2000:]

    sql(db_url, "ALTER FUNCTION hookbridge.deactivate_failing_gone(interval) "
        "RENAME TO deactivate_failing")
    wait_until(lambda: ANSWERED in r.proc.output()[warned:], 4 * SLOW,
               "the sweep answered again, and said")

"""Session 31 (sleeps81): tests that guessed with a sleep when the product
had reached a state now wait for what the product shows. One state had
nothing to show it: the ingest spool's replay round in flight, now the
gauge hookbridge_ingest_spool_replaying (docs/operations.md)."""
import json

from hbtest.ingest import Ingest
from hbtest.procs import wait_until
from test_ingest_spool import (DELIVERIES, REPLAYED, REPLAYING, brokers_down, brokers_up,
                               spool_env, wait_published)
from test_review43_faults import spooled_backlog


def test_the_replay_round_in_flight_shows_on_metrics_until_the_brokers_take_it(
        broker, procs, workdir):
    """A spool of 5 deliveries replayed while the brokers are away: the
    round of 5, produced and waiting for acknowledgements, shows as
    hookbridge_ingest_spool_replaying 5; once the brokers take them it is 0
    and the spool empty. Before, nothing told an operator (or a test)
    whether the replay was waiting on the brokers or backing off between
    rounds: the gauge did not exist (test_review43's stop test guessed with
    a 1.5 s sleep)."""
    spool = spooled_backlog(workdir / "spool", 5)
    events = [e for f in sorted(spool.glob("*.okta"))
              for e in json.loads(f.read_bytes())["data"]["events"]]
    brokers_down(broker)
    ing = Ingest(procs, broker.bootstrap,
                 extra_env=spool_env(spool, HOOKBRIDGE_INGEST_TIMEOUT="10s"))
    wait_until(lambda: ing.metric(REPLAYING) == 5, 10, "the round of 5 in flight")
    # (the spool's gauges follow it from the main loop's first pass on)
    wait_until(lambda: ing.metric(DELIVERIES) == 5, 10, "the 5 counted on the spool")
    assert ing.metric(REPLAYED) == 0
    brokers_up(broker)
    wait_published(spool, broker.bootstrap, events, "brokers back")
    wait_until(lambda: ing.metric(REPLAYED) == 5, 10, "the 5 replayed")
    assert ing.metric(REPLAYING) == 0
    assert ing.metric(DELIVERIES) == 0

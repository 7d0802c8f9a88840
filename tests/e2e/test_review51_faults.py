"""Review 51: hop tiers (HOOKBRIDGE_RETRY_HOP_TIERS) met as an operator meets
them. Real parts: Apache Kafka (no topic is created on first use, as in
production), `hookbridge-migrate topics`, PostgreSQL, the dispatcher and the
retrier."""
from hbtest.procs import wait_until
from hbtest.stack import Dispatcher, Retrier
from test_apache_kafka import lines, migrate_topics


def test_an_empty_hop_tiers_setting_keeps_the_tiers_you_have(apache_kafka, db_url, procs):
    """docs/operations.md: upgrading to a release with hop tiers, "set
    HOOKBRIDGE_RETRY_HOP_TIERS= (empty) to keep the tiers you have". The
    topics are an earlier release's (schedule 1s: events, 1s, dead letters).
    With the setting empty, `migrate topics --check` finds nothing missing
    and the dispatcher and the retrier become ready.

    Checked to fail on main's binaries (3b2f7f9): an empty variable was
    taken for unset, so the default 20s,1m applied: --check exited 2 with
    hookbridge.retry.20s and .1m MISSING, and the services stayed not ready
    ("topic ...20s does not exist") until someone created topics nobody
    asked for."""
    space = apache_kafka.space(create=False)
    # what a release without hop tiers created (a hop tier equal to the step adds none)
    r = migrate_topics(space, HOOKBRIDGE_RETRY_SCHEDULE="1s", HOOKBRIDGE_RETRY_HOP_TIERS="1s")
    assert r.returncode == 0 and len(lines(r.stdout, "created")) == 3, r.stdout + r.stderr

    env = {"HOOKBRIDGE_RETRY_SCHEDULE": "1s", "HOOKBRIDGE_RETRY_HOP_TIERS": ""}
    r = migrate_topics(space, "--check", **env)
    assert r.returncode == 0 and not lines(r.stdout, "MISSING"), r.stdout + r.stderr

    d = Dispatcher(procs, db_url, space.bootstrap, extra_env=env)
    rt = Retrier(procs, db_url, space.bootstrap, extra_env=env)
    d.wait_ready(30)
    wait_until(lambda: rt.get("/readyz")[0] == 200 or None, 30,
               "the retrier ready on the tiers it has: " + rt.get("/readyz")[1])

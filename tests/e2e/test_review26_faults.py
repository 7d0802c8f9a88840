"""Review 26: leftovers in the SQL API, the secret sealer, topics and
operations.

Each test says what it holds and how it was shown to fail on 08777cb."""
import json

from hbtest.procs import SLOW, wait_until
from hbtest.stack import Dispatcher
from test_delivery import sql
from test_secrets import sealed_state


def test_a_value_the_sealer_cannot_seal_is_set_aside_and_the_others_are_sealed(
        db_url, broker, procs):
    """docs/security.md, Until sealed: the sealer takes the inbox oldest
    first. A value it cannot seal (here an auth value of 1.1 MB, more than a
    sealed value may hold, written straight to the plaintext column as only
    the schema's owner can) made it stop there at every pass: every value
    behind it stayed unsealed, so those subscriptions got no delivery and no
    verification, and the log said only "sealing secrets: value to seal is too
    long". Now the row is set aside with the reason (its plaintext wiped),
    logged once at error naming the subscription, shown `unsealable` in
    secret_status with the reason, and the values behind it are sealed; an
    update() sets the value again and it is sealed.

    Checked to fail without the fix: on 08777cb the three subscriptions
    registered after it stay `pending` ("... sealed" times out). About 3 s."""
    poison = sql(db_url, "SELECT hookbridge.register('poison', 'https://example.com/p', "
                 "ARRAY['user.session.start'])")[0][0]
    sql(db_url, "UPDATE hookbridge.subscriptions SET auth_header = 'X-Key', "
        "auth_value = repeat('p', 1100000) WHERE id = %s", poison)
    others = [sql(db_url, "SELECT hookbridge.register(%s, 'https://example.com/o', "
                  "ARRAY['user.session.start'], %s::jsonb)", f"other-{i}",
                  json.dumps({"auth_header": "X-Key", "auth_value": f"k-{i}"}))[0][0]
              for i in range(3)]
    d = Dispatcher(procs, db_url, broker.bootstrap)
    d.wait_ready()
    for sub in others:
        wait_until(lambda: sealed_state(db_url, sub) == ("sealed", "sealed"), 15 * SLOW,
                   f"{sub}, registered after the unsealable value, sealed")
    assert sql(db_url, "SELECT signing_secret, auth_value, seal_error FROM "
               "hookbridge.secret_status WHERE id = %s", poison) == [
        ("sealed", "unsealable",
         "the value is 1100000 bytes, more than a sealed value may hold (1048576)")]
    assert sql(db_url, "SELECT length(value) FROM hookbridge.secret_inbox "
               "WHERE subscription_id = %s AND kind = 'auth'", poison) == [(0,)]
    out = d.proc.output()
    assert out.count("cannot seal its auth value: the value is 1100000 bytes") == 1, out
    line = next(l for l in out.splitlines() if "cannot seal its auth value" in l)
    assert poison in line and "set it again with update()" in line
    assert "ppppppppp" not in out
    # the way out the line names
    sql(db_url, "SELECT hookbridge.update(%s, options => %s::jsonb)", poison,
        json.dumps({"auth_header": "X-Key", "auth_value": "short"}))
    wait_until(lambda: sealed_state(db_url, poison) == ("sealed", "sealed"), 15 * SLOW,
               "the value set again sealed")
    assert sql(db_url, "SELECT seal_error FROM hookbridge.secret_status WHERE id = %s",
               poison) == [(None,)]
    assert d.proc.stop() == 0

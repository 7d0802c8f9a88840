"""Secrets at rest: signing secrets and auth values are in PostgreSQL only
sealed (AES-256-GCM under HOOKBRIDGE_SECRET_KEY, key id per row), and what
an operator and a receiver see around that."""
import base64
import json
import os
import subprocess
import time

import psycopg2
import pytest

from hbtest.lifecycle import wait_read
from hbtest.procs import BIN, SECRET_KEY, wait_until
from hbtest.stack import Dispatcher, Receiver, produce
from hbtest.webhooks import signature_valid
from test_delivery import event, register_verified, sql


def new_key():
    return base64.b64encode(os.urandom(32)).decode()


def key_id(key):
    out = subprocess.run([BIN / "hookbridge-secret", "key-id"], capture_output=True, text=True,
                         env=dict(os.environ, HOOKBRIDGE_SECRET_KEY=key), timeout=30)
    assert out.returncode == 0, out.stderr
    return out.stdout.split()[0]


def secret_cli(db_url, *args, key=SECRET_KEY, old=None):
    env = dict(os.environ, HOOKBRIDGE_DATABASE_URL=db_url, HOOKBRIDGE_SECRET_KEY=key)
    if old:
        env["HOOKBRIDGE_SECRET_KEYS_OLD"] = old
    return subprocess.run([BIN / "hookbridge-secret", *map(str, args)], capture_output=True,
                          text=True, env=env, timeout=30)


def sealed_state(db_url, sub):
    rows = sql(db_url, "SELECT signing_secret, auth_value FROM hookbridge.secret_status "
               "WHERE id = %s", sub)
    return rows[0] if rows else None


def wait_sealed(db_url, sub, auth=True):
    want = ("sealed", "sealed" if auth else "none")
    wait_until(lambda: sealed_state(db_url, sub) == want, 15, f"{sub} sealed")


def db_files(pg_cluster, db_url):
    """Every file of the cluster that is logged storage: WAL, and the
    database's relation files except those of unlogged relations."""
    dbname = db_url.rsplit("/", 1)[1].split("?")[0]
    with psycopg2.connect(db_url) as conn, conn.cursor() as cur:
        cur.execute("CHECKPOINT")
        cur.execute("SELECT oid FROM pg_database WHERE datname = %s", (dbname,))
        db_oid = cur.fetchone()[0]
        cur.execute("SELECT pg_relation_filenode(oid) FROM pg_class "
                    "WHERE relpersistence = 'u' AND pg_relation_filenode(oid) IS NOT NULL")
        unlogged = {str(r[0]) for r in cur.fetchall()}
    files = list((pg_cluster.data / "pg_wal").glob("0*"))
    for f in (pg_cluster.data / "base" / str(db_oid)).iterdir():
        if f.name.split("_")[0].split(".")[0] not in unlogged:
            files.append(f)
    return files


def found_in(files, needle):
    raw = needle.encode()
    return [str(f) for f in files if f.is_file() and raw in f.read_bytes()]


def test_secrets_reach_the_database_only_sealed(db_url, pg_cluster, broker, procs, workdir):
    """The auth value and the signing secret an operator gives register() are
    nowhere in PostgreSQL's logged files (WAL, tables, indexes) nor in a
    pg_dump once a service has sealed them; deliveries still carry them."""
    marker = os.urandom(8).hex()
    auth = f"Bearer at-rest-{marker}"
    secret = "whsec_" + base64.b64encode(os.urandom(32)).decode()
    receiver = Receiver(procs, workdir, secret=secret, auth=f"Authorization: {auth}")
    d = Dispatcher(procs, db_url, broker.bootstrap)
    d.wait_ready()
    sub = register_verified(db_url, receiver.url, ["user.session.start"],
                            {"auth_value": auth, "secret": secret})
    wait_sealed(db_url, sub)
    kid = key_id(SECRET_KEY)
    assert sql(db_url, "SELECT signing_key_id, auth_key_id FROM hookbridge.secret_status "
               "WHERE id = %s", sub) == [(kid, kid)]
    assert sql(db_url, "SELECT auth_value, length(auth_sealed) > 0 FROM hookbridge.subscriptions "
               "WHERE id = %s", sub) == [(None, True)]

    produce(broker.bootstrap, [event("user.session.start")])
    wait_until(lambda: receiver.events(), 30, "the delivery")
    req, _ = receiver.events()[0]
    assert req["headers"]["authorization"] == auth
    assert signature_valid(secret, req)

    files = db_files(pg_cluster, db_url)
    assert files
    assert found_in(files, auth) == []
    assert found_in(files, secret[6:]) == []
    dump = subprocess.run([pg_cluster.bindir / "pg_dump", db_url], capture_output=True,
                          timeout=60)
    assert dump.returncode == 0, dump.stderr
    assert auth.encode() not in dump.stdout  # auth values leave the inbox when sealed
    # Nothing of either in the service's log.
    assert auth not in d.proc.output() and secret[6:] not in d.proc.output()


def test_signing_secret_is_shown_for_a_while_then_only_with_the_key(db_url, broker, procs):
    """register() generates a secret: signing_secret() shows it during the
    reveal window; afterwards SQL refuses (HB022, with a hint) and only
    hookbridge-secret show, which has the key, prints it."""
    d = Dispatcher(procs, db_url, broker.bootstrap)
    d.wait_ready()
    sub = sql(db_url, "SELECT hookbridge.register('gen', 'http://127.0.0.1:9/h', "
              "ARRAY['user.session.start'])")[0][0]
    shown = sql(db_url, "SELECT hookbridge.signing_secret(%s)", sub)[0][0]
    assert shown.startswith("whsec_") and len(base64.b64decode(shown[6:])) == 32
    wait_sealed(db_url, sub, auth=False)
    assert sql(db_url, "SELECT hookbridge.signing_secret(%s)", sub)[0][0] == shown

    sql(db_url, "UPDATE hookbridge.limits SET value = 1 WHERE name = 'secret_reveal_seconds'")
    time.sleep(1.2)
    with pytest.raises(psycopg2.Error) as err:
        sql(db_url, "SELECT hookbridge.signing_secret(%s)", sub)
    assert err.value.pgcode == "HB022"
    assert "hookbridge-secret show" in err.value.diag.message_hint
    assert shown[6:] not in str(err.value)

    out = secret_cli(db_url, "show", sub)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == shown

    # rotate_secret hands out the new one; show follows it.
    new = sql(db_url, "SELECT hookbridge.rotate_secret(%s)", sub)[0][0]
    wait_until(lambda: secret_cli(db_url, "show", sub).stdout.strip() == new, 15,
               "show prints the rotated secret")

    # Without the right key, show says what is wrong and prints no secret.
    wrong = secret_cli(db_url, "show", sub, key=new_key())
    assert wrong.returncode == 1
    assert "not configured" in wrong.stderr and new[6:] not in wrong.stdout + wrong.stderr
    unknown = secret_cli(db_url, "show", "00000000-0000-0000-0000-000000000000")
    assert unknown.returncode == 1 and "not found" in unknown.stderr


def test_key_rotation_moves_values_to_the_new_key(db_url, broker, procs, workdir):
    """Operators rotate HOOKBRIDGE_SECRET_KEY by starting the services with
    the new key and the old one in HOOKBRIDGE_SECRET_KEYS_OLD: the values move
    to the new key (hookbridge.secret_keys shows it), deliveries keep their
    secret, and the old key can then be dropped."""
    auth = "Bearer rotate-" + os.urandom(6).hex()
    secret = "whsec_" + base64.b64encode(os.urandom(24)).decode()
    receiver = Receiver(procs, workdir, secret=secret, auth=f"Authorization: {auth}")
    old, new = SECRET_KEY, new_key()
    d = Dispatcher(procs, db_url, broker.bootstrap)
    d.wait_ready()
    sub = register_verified(db_url, receiver.url, ["user.session.start"],
                            {"auth_value": auth, "secret": secret})
    # More than one batch (100) of values to seal, and later to move.
    sql(db_url, "SELECT hookbridge.register('bulk ' || i, 'https://example.com/' || i, "
        "ARRAY['user.session.start'], '{\"auth_header\": \"X-Key\", \"auth_value\": \"k\"}') "
        "FROM generate_series(1, 150) i")
    wait_sealed(db_url, sub)
    wait_until(lambda: sql(db_url, "SELECT key_id, signing_secrets, auth_values "
                           "FROM hookbridge.secret_keys") == [(key_id(old), 151, 151)], 30,
               "every value sealed under the first key")
    d.proc.stop()

    # Each restart in a consumer group of its own: joining the group a member
    # just left takes the broker 5 s, a new group 3 s (no event is waiting).
    d2 = Dispatcher(procs, db_url, broker.bootstrap, name="dispatcher-newkey",
                    group_id="hookbridge-dispatcher-newkey",
                    extra_env={"HOOKBRIDGE_SECRET_KEY": new, "HOOKBRIDGE_SECRET_KEYS_OLD": old})
    d2.wait_ready()
    wait_until(lambda: sql(db_url, "SELECT key_id, signing_secrets, auth_values "
                           "FROM hookbridge.secret_keys") == [(key_id(new), 151, 151)], 30,
               "every value under the new key")
    d2.proc.stop()

    # The old key is gone from the configuration: still delivered, signed.
    d3 = Dispatcher(procs, db_url, broker.bootstrap, name="dispatcher-onlynew",
                    group_id="hookbridge-dispatcher-onlynew",
                    extra_env={"HOOKBRIDGE_SECRET_KEY": new})
    d3.wait_ready()
    produce(broker.bootstrap, [event("user.session.start")])
    wait_until(lambda: receiver.events(), 30, "the delivery")
    req, _ = receiver.events()[0]
    assert req["headers"]["authorization"] == auth and signature_valid(secret, req)


def test_wrong_key_or_moved_ciphertext_fails_closed(db_url, broker, procs, workdir):
    """A service whose key cannot open a subscription's secret, or a sealed
    value copied onto another subscription by hand, delivers nothing to it and
    says why (naming the key id, never the secret); the others are served."""
    secret = "whsec_" + base64.b64encode(os.urandom(24)).decode()
    good = Receiver(procs, workdir, secret=secret, name="good")
    victim = Receiver(procs, workdir, secret=secret, name="victim")
    d = Dispatcher(procs, db_url, broker.bootstrap)
    d.wait_ready()
    ok = register_verified(db_url, good.url, ["user.session.start"], {"secret": secret})
    moved = register_verified(db_url, victim.url, ["user.session.start"], {"secret": secret})
    wait_sealed(db_url, ok)
    wait_sealed(db_url, moved)
    # Someone with table access copies ok's sealed auth value onto `moved`:
    # the AAD binds each value to its own row, so it does not open there.
    sql(db_url, "UPDATE hookbridge.subscriptions SET "
        "auth_sealed = (SELECT auth_sealed FROM hookbridge.subscriptions WHERE id = %s), "
        "auth_key_id = (SELECT auth_key_id FROM hookbridge.subscriptions WHERE id = %s) "
        "WHERE id = %s", ok, ok, moved)
    wait_until(lambda: "does not authenticate" in d.proc.output(), 15,
               "the dispatcher refusing the moved value")
    produce(broker.bootstrap, [event("user.session.start")])
    wait_until(lambda: good.events(), 30, "the delivery to the intact subscription")
    time.sleep(1)
    assert victim.events() == []
    d.proc.stop()

    # A service started with an unrelated key: nothing opens, it says which
    # key id the values need, and delivers nothing.
    stranger = new_key()
    # In a consumer group of its own (joined in 3 s, not the 5 s of the group
    # the first one just left): it reads the first event again, and the next.
    d2 = Dispatcher(procs, db_url, broker.bootstrap, name="dispatcher-wrongkey",
                    group_id="hookbridge-dispatcher-wrongkey",
                    extra_env={"HOOKBRIDGE_SECRET_KEY": stranger})
    d2.wait_ready()
    need = key_id(SECRET_KEY)
    wait_until(lambda: f"sealed with key {need}, which is not configured" in d2.proc.output(),
               15, "the wrong-key error")
    produce(broker.bootstrap, [event("user.session.start")])
    wait_read(d2, 2, "both events")
    assert len(good.events()) == 1
    assert secret[6:] not in d2.proc.output()


def test_a_value_lost_before_sealing_is_reported_and_can_be_set_again(db_url, broker, procs,
                                                                       workdir):
    """A PostgreSQL crash empties the unlogged inbox: a value no service had
    sealed yet is lost. secret_status says so, the subscription gets nothing,
    and setting the value again (rotate_secret, update) brings it back."""
    secret = "whsec_" + base64.b64encode(os.urandom(24)).decode()
    receiver = Receiver(procs, workdir, secret=secret, auth="Authorization: Bearer again")
    # No service runs yet: nothing seals the values; then the "crash".
    sub = sql(db_url, "SELECT hookbridge.register('lost', %s, ARRAY['user.session.start'], "
              "%s::jsonb)", receiver.url, json.dumps({"auth_header": "Authorization",
                                                     "auth_value": "Bearer lost",
                                                     "secret": secret}))[0][0]
    assert sealed_state(db_url, sub) == ("pending", "pending")
    sql(db_url, "TRUNCATE hookbridge.secret_inbox")
    assert sealed_state(db_url, sub) == ("lost", "lost")

    d = Dispatcher(procs, db_url, broker.bootstrap)
    d.wait_ready()
    wait_until(lambda: "not sealed yet" in d.proc.output(), 15, "the dispatcher saying so")
    sql(db_url, "SELECT hookbridge.rotate_secret(%s, '0 s', %s)", sub, secret)
    sql(db_url, "SELECT hookbridge.update(%s, options => %s::jsonb)", sub,
        json.dumps({"auth_header": "Authorization", "auth_value": "Bearer again"}))
    wait_sealed(db_url, sub)
    sql(db_url, "SELECT hookbridge.verify(%s)", sub)
    wait_until(lambda: sql(db_url, "SELECT verification FROM hookbridge.subscriptions "
                           "WHERE id = %s", sub)[0][0] == "verified", 15, "verified")
    sql(db_url, "SELECT hookbridge.activate(%s)", sub)
    produce(broker.bootstrap, [event("user.session.start")])
    wait_until(lambda: receiver.events(), 30, "the delivery")
    req, _ = receiver.events()[0]
    assert req["headers"]["authorization"] == "Bearer again" and signature_valid(secret, req)



def test_an_upgrade_seals_what_earlier_versions_stored_in_plaintext(pg_cluster, broker, procs,
                                                                    workdir, tmp_path):
    """A database from before 0007_sealed_secrets (of the layout before the
    baseline) holds plaintext secrets. Migrating moves them out of the tables,
    the first service seals them, and deliveries go on with the same secret
    and auth value."""
    import shutil
    from hbtest.pg import REPO
    layout = REPO / "tests" / "fixtures" / "migrations-0008"
    old = tmp_path / "migrations-0006"
    old.mkdir()
    for f in sorted(layout.glob("000[1-6]_*.sql")):
        shutil.copy(f, old)
    name = pg_cluster.create_database("upgrade")
    try:
        pg_cluster.migrate(name, "up", migrations_dir=old)
        db_url = pg_cluster.url(name)
        secret = "whsec_" + base64.b64encode(os.urandom(24)).decode()
        auth = "Bearer before-0007-" + os.urandom(4).hex()
        receiver = Receiver(procs, workdir, secret=secret, auth=f"Authorization: {auth}")
        sub = sql(db_url, "SELECT hookbridge.register('old', %s, ARRAY['user.session.start'], "
                  "%s::jsonb)", receiver.url, json.dumps({"auth_header": "Authorization",
                                                         "auth_value": auth,
                                                         "secret": secret}))[0][0]
        sql(db_url, "UPDATE hookbridge.subscriptions SET verification = 'verified', "
            "status = 'active' WHERE id = %s", sub)
        assert sql(db_url, "SELECT auth_value FROM hookbridge.subscriptions") == [(auth,)]

        # That layout up to its end (0008), then today's (the baseline and sql/).
        pg_cluster.migrate(name, "up", migrations_dir=layout)
        pg_cluster.migrate(name, "up")
        assert sql(db_url, "SELECT auth_value FROM hookbridge.subscriptions") == [(None,)]
        assert sql(db_url, "SELECT secret FROM hookbridge.subscription_secrets") == [(None,)]
        assert sealed_state(db_url, sub) == ("pending", "pending")
        d = Dispatcher(procs, db_url, broker.bootstrap)
        d.wait_ready()
        wait_sealed(db_url, sub)
        produce(broker.bootstrap, [event("user.session.start")])
        wait_until(lambda: receiver.events(), 30, "the delivery")
        req, _ = receiver.events()[0]
        assert req["headers"]["authorization"] == auth and signature_valid(secret, req)
    finally:
        for p in procs.procs:
            p.stop()
        pg_cluster.drop_database(name)


def test_an_operators_open_transaction_does_not_stall_the_sealer(db_url, broker, procs):
    """Subscription A has a new secret waiting to be sealed while an
    operator's transaction holds A's row (an update not committed yet); B is
    registered meanwhile. The dispatcher seals B at once and stays ready,
    and seals A once the operator commits. Before, its sealer waited for
    A's lock: B stayed 'pending' (so not delivered to) and the dispatcher
    took no event for as long as the operator's transaction stayed open;
    and a statement changing many subscriptions in another order (SELECT
    verify(id) FROM ...) could deadlock with it."""
    a = sql(db_url, "SELECT hookbridge.register('a', 'https://a.example.com/h', "
            "ARRAY['user.session.start'])")[0][0]
    op = psycopg2.connect(db_url)
    try:
        with op.cursor() as cur:  # autocommit off: the row lock stays
            cur.execute("SELECT hookbridge.update(%s, name => 'a, renamed')", (a,))
        b = sql(db_url, "SELECT hookbridge.register('b', 'https://b.example.com/h', "
                "ARRAY['user.session.start'])")[0][0]
        assert sealed_state(db_url, a)[0] == "pending"
        d = Dispatcher(procs, db_url, broker.bootstrap)
        d.wait_ready()
        wait_sealed(db_url, b, auth=False)
        assert sealed_state(db_url, a)[0] == "pending", "sealed through the operator's lock?"
        op.commit()
    finally:
        op.close()
    wait_sealed(db_url, a, auth=False)

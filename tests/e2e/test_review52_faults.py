"""Review 52: attacks on reviews 48 (rotate_secret's grace from the commit),
49 (replay_dropped and pending retries) and 50 (the producer's stops).

Each check says what it did on main's binaries and sql/ (70c24cc)."""
import psycopg2

from test_delivery import sql


def test_a_rotation_under_set_constraints_all_immediate_does_not_fail(db_url):
    """A client that checks its constraints as it goes (SET CONSTRAINTS ALL
    IMMEDIATE, as Django's check_constraints and some migration tools run)
    rotates a secret: the rotation succeeds, the previous secret keeps its
    grace, and the transaction commits.

    On main (70c24cc): the deferred trigger fired at once, inside
    rotate_secret, and its own update fired it again, and again: "stack
    depth limit exceeded", the rotation refused."""
    sub = sql(db_url, "SELECT hookbridge.register('i', 'https://example.com/i', "
              "ARRAY['user.session.start'])")[0][0]
    conn = psycopg2.connect(db_url)
    try:
        with conn.cursor() as cur:
            cur.execute("SET CONSTRAINTS ALL IMMEDIATE")
            cur.execute("SELECT hookbridge.rotate_secret(%s, interval '1 hour')", (sub,))
        conn.commit()
    finally:
        conn.close()
    (left,), = sql(db_url, "SELECT extract(epoch FROM expires_at - now()) FROM "
                   "hookbridge.subscription_secrets WHERE subscription_id = %s "
                   "AND expires_at IS NOT NULL", sub)
    assert abs(float(left) - 3600) < 5, f"the previous secret's grace: {float(left):.1f} s left"

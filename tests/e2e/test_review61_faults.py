"""Review 61: subscription previews (hookbridge.preview(), feature 60) as
operators and hostile endpoints use them.

On 16b8028 (main when this review began) each test here fails: preview()'s
upkeep removed pending previews beyond a subscription's 20 newest, so a loop
of previews lost all but the last 20 (their ids named no row; never sent)."""
import psycopg2
import pytest

from test_delivery import sql


def service_sql(db_url, query, *args):
    """A statement as the dispatcher runs it (role hookbridge_service)."""
    with psycopg2.connect(db_url) as conn, conn.cursor() as cur:
        cur.execute("SET ROLE hookbridge_service")
        cur.execute(query, args)
        return cur.fetchall()


@pytest.mark.sql_only
def test_a_loop_of_previews_keeps_every_pending_one_until_it_is_sent(db_url):
    """docs/sql.md, preview: each call keeps the subscription's 20 newest
    previews and every one still pending. An operator's loop asks for 30
    while no dispatcher runs: all 30 wait for one (each id names its row),
    and once they are sent the next call trims the finished ones to 20."""
    sub = sql(db_url, "SELECT hookbridge.register('loop', 'https://example.com/h', %s)",
              ["user.session.start"])[0][0]
    ids = [sql(db_url, "SELECT hookbridge.preview(%s)", sub)[0][0] for _ in range(30)]
    rows = sql(db_url, "SELECT id::text, status FROM hookbridge.previews"
               " WHERE subscription_id = %s", sub)
    assert sorted(rows) == sorted((i, "pending") for i in ids)
    for i in ids:  # a dispatcher sends them
        claim = service_sql(db_url, "SELECT claim FROM hookbridge.claim_preview(%s)", i)[0][0]
        assert service_sql(db_url, "SELECT hookbridge.record_preview(%s, %s, 204, NULL, NULL,"
                           " 3, 'application/json', '{}')", i, claim) == [(True,)]
    last = sql(db_url, "SELECT hookbridge.preview(%s)", sub)[0][0]
    kept = sql(db_url, "SELECT id::text FROM hookbridge.previews WHERE subscription_id = %s"
               " ORDER BY requested_at", sub)
    assert [k for (k,) in kept] == ids[-19:] + [last]

-- 0009: an inbox value the sealer cannot seal is set aside, not retried
-- ahead of the others; and an index for the delivery log read newest first.
--
-- secret_inbox.seal_error: a value no service can seal (longer than a
-- sealed value may be, 1 MiB, which only a direct write to the plaintext
-- columns can give) made the sealer stop at it, and secrets_to_seal hands
-- the inbox out oldest first: every value behind it stayed unsealed (their
-- subscriptions got no delivery and no verification), each pass stopping at
-- the same row. Now the sealer records why (seal_refuse), the row's
-- plaintext is wiped, secrets_to_seal passes it over, and secret_status
-- shows the value 'unsealable' with the reason.
--
-- deliveries_time_idx: recent_deliveries read newest first across every
-- subscription (ORDER BY created_at DESC LIMIT n, what a dashboard asks)
-- sorted the whole week of the log (deliveries_sub_time_idx leads with the
-- subscription): 60,000 deliveries took 0.6 s for 50 rows. A partitioned
-- index: every partition gets its own, the ones maintain_delivery_log
-- creates later too (ATTACH PARTITION builds it), and the query is a merge of
-- the partitions' indexes that stops after n rows. One more index entry per
-- delivery (not per attempt). CREATE INDEX holds the log's writers while it
-- builds (a few seconds per million deliveries); IF NOT EXISTS lets you
-- build it beforehand without that (docs/operations.md, Upgrading).
--
-- sql/: sha256 19537bf0f7b7b11e50f8e433162b8954ecd2d9906c60b84957c8dab1250f4120
ALTER TABLE hookbridge.secret_inbox ADD COLUMN seal_error text;

COMMENT ON COLUMN hookbridge.secret_inbox.seal_error IS
    'Why no service could seal this value (seal_refuse); its plaintext is then wiped and the '
    'row is no longer handed out by secrets_to_seal. NULL: to be sealed, or sealed.';

CREATE INDEX IF NOT EXISTS deliveries_time_idx ON hookbridge.deliveries (created_at DESC);

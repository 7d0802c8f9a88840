-- 0009: an inbox value the sealer cannot seal is set aside, not retried
-- ahead of the others.
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
-- sql/: sha256 2171e68ac0c7dc76ccaad7a13910ddbb00e039c0127048bd4f8cecbf52fcec40
ALTER TABLE hookbridge.secret_inbox ADD COLUMN seal_error text;

COMMENT ON COLUMN hookbridge.secret_inbox.seal_error IS
    'Why no service could seal this value (seal_refuse); its plaintext is then wiped and the '
    'row is no longer handed out by secrets_to_seal. NULL: to be sealed, or sealed.';

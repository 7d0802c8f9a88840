-- 0013: a pending preview is no longer removed by the upkeep each
-- hookbridge.preview() does (sql/70_previews.sql). It kept the
-- subscription's 20 newest previews whatever their status, so an operator's
-- loop of previews (or 21 asked for while no dispatcher ran) removed the
-- older ones before a dispatcher took them: their ids, handed out, named no
-- row, and they were never sent (or sent and their outcome not recorded).
-- Now only the finished ones beyond the 20 newest go; a pending one stays
-- until it is sent (or is 7 days old).

COMMENT ON TABLE hookbridge.previews IS
    'Previews asked for with hookbridge.preview(): one sample event sent once to a subscription''s '
    'endpoint, and what it answered. Kept 7 days, and at most 20 per subscription besides those '
    'still pending.';

-- sql/: sha256 99a7a80d536bbbba72067f570fdcb5d4a914f2513b9fe7bbf9357317b965dda2

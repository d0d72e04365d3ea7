-- A key's UUID never changes once set; a row still without one gets one when inserted or when its
-- key changes, so a key updated ahead of the key backfill's cursor (moved behind it) is never left
-- without a UUID.
-- It reads no table, so it needs no privilege: SECURITY INVOKER.
-- Placeholders: function shadow generator
CREATE OR REPLACE FUNCTION {function}() RETURNS trigger
LANGUAGE plpgsql SECURITY INVOKER
AS $online_uuid$
BEGIN
    IF TG_OP = 'UPDATE' THEN
        NEW.{shadow} := coalesce(OLD.{shadow}, NEW.{shadow}, {generator});
    ELSE
        NEW.{shadow} := {generator};
    END IF;
    RETURN NEW;
END
$online_uuid$;

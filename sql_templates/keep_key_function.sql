-- A key's UUID never changes once set, and a row inserted with an explicit NULL still gets one.
-- It reads no table, so it needs no privilege: SECURITY INVOKER.
-- Placeholders: function shadow generator
CREATE OR REPLACE FUNCTION {function}() RETURNS trigger
LANGUAGE plpgsql SECURITY INVOKER
AS $online_uuid$
BEGIN
    IF TG_OP = 'UPDATE' THEN
        NEW.{shadow} := OLD.{shadow};
    ELSE
        NEW.{shadow} := {generator};
    END IF;
    RETURN NEW;
END
$online_uuid$;

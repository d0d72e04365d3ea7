-- Keeps a foreign key's shadow column equal to the referenced row's other key.
-- Before cutover: shadow = parent's UUID looked up by the integer FK.
-- After cutover: shadow = parent's retired integer looked up by the UUID FK (keeps rollback lossless).
-- Placeholders: function column shadow ref_table ref_column ref_shadow self_ref
CREATE OR REPLACE FUNCTION {function}() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $online_uuid$
BEGIN
    IF NEW.{column} IS NULL THEN
        NEW.{shadow} := NULL;
    {self_ref}ELSE
        NEW.{shadow} := (SELECT p.{ref_shadow} FROM {ref_table} AS p WHERE p.{ref_column} = NEW.{column});
    END IF;
    RETURN NEW;
END
$online_uuid$;

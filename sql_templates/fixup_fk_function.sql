-- Gives the parent's value to a shadow FK that its BEFORE trigger marked `missing` because it could
-- not see the parent (see sync_fk_function.sql). Queued only for such rows, with the FK's timing
-- (end of statement, or commit for a deferrable FK). Its constraint trigger fires before the RI
-- checks of the same row (name order), and its UPDATE makes a new row version
-- that the RI checks (of the original FK too) then check instead. A parent it still cannot see
-- leaves the marker (a moment's race only): verify reports the row, `verify --repair` rewrites it.
-- On a partitioned table (the trigger is cloned to every partition) a ctid names a row only within
-- its partition: `tableoid = TG_RELID` keeps the UPDATE to the partition the trigger fired on.
-- Placeholders: function table column shadow ref_table ref_column ref_shadow missing
CREATE OR REPLACE FUNCTION {function}() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $online_uuid$
BEGIN
    UPDATE {table} AS c SET {shadow} = p.{ref_shadow}
      FROM {ref_table} AS p
     WHERE c.ctid = NEW.ctid AND c.tableoid = TG_RELID AND c.{shadow} = {missing}
       AND p.{ref_column} = c.{column};
    RETURN NULL;
END
$online_uuid$;

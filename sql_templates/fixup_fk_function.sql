-- Deferred: fills a shadow FK left NULL because its parent row was written later in the same
-- transaction (deferrable FKs, self-references inserted out of order).
-- Placeholders: function table column shadow ref_table ref_column ref_shadow
CREATE OR REPLACE FUNCTION {function}() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $online_uuid$
BEGIN
    UPDATE {table} AS c SET {shadow} = p.{ref_shadow}
      FROM {ref_table} AS p
     WHERE c.ctid = NEW.ctid AND c.{shadow} IS NULL
       AND p.{ref_column} = c.{column} AND p.{ref_shadow} IS NOT NULL;
    RETURN NULL;
END
$online_uuid$;

-- The tool's triggers fire whatever session_replication_role is: rows a replication or bulk-load
-- tool writes as `replica` keep their shadows right too. Any trigger whose function lives in schema
-- online_uuid on these tables (forward or reverse, whichever the caller just created).
-- Placeholders: tables (a text[] literal of qualified table names)
DO $online_uuid$
DECLARE
    r record;
BEGIN
    FOR r IN
        SELECT t.tgrelid::pg_catalog.regclass AS rel, t.tgname
          FROM pg_catalog.pg_trigger t
          JOIN pg_catalog.pg_proc f ON f.oid OPERATOR(pg_catalog.=) t.tgfoid
          JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) f.pronamespace
         WHERE t.tgrelid OPERATOR(pg_catalog.=) ANY ({tables}::pg_catalog.regclass[])
           AND n.nspname OPERATOR(pg_catalog.=) 'online_uuid' AND NOT t.tgisinternal
           AND t.tgenabled OPERATOR(pg_catalog.<>) 'A'
    LOOP
        EXECUTE pg_catalog.format('ALTER TABLE %s ENABLE ALWAYS TRIGGER %I', r.rel, r.tgname);
    END LOOP;
END
$online_uuid$;

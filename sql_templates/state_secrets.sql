-- Derived UUIDs: one 32-byte random secret per migration, kept apart from the plan (which `plan`,
-- `status` and events show) and readable by the state schema's owner only. Nulled at finalize,
-- deleted with the migration at rollback. Also run on a state schema made before derived UUIDs.
-- Placeholders: schema (identifier).
CREATE TABLE IF NOT EXISTS {schema}.secrets (
    migration_id text PRIMARY KEY REFERENCES {schema}.migrations (id) ON DELETE CASCADE,
    secret bytea
);
REVOKE ALL ON {schema}.secrets FROM PUBLIC;

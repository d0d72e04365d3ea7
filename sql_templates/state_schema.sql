-- online-uuid state schema. Placeholders: schema (identifier), version (literal).
-- Everything a later run needs lives here, so any machine with the DSN can resume or report.
-- Every statement is idempotent: run again on an older state schema, it brings it up to this version.
CREATE SCHEMA IF NOT EXISTS {schema};

CREATE TABLE IF NOT EXISTS {schema}.meta (
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    schema_version integer NOT NULL
);
INSERT INTO {schema}.meta AS m (schema_version) VALUES ({version})
    ON CONFLICT (singleton) DO UPDATE SET schema_version = greatest(m.schema_version, excluded.schema_version);

CREATE TABLE IF NOT EXISTS {schema}.migrations (
    id text PRIMARY KEY,
    phase text NOT NULL,
    plan jsonb NOT NULL,
    options jsonb NOT NULL DEFAULT '{{}}',
    paused boolean NOT NULL DEFAULT false,
    throttle jsonb NOT NULL DEFAULT '{{}}',
    throttle_state jsonb NOT NULL DEFAULT '{{}}',
    barrier_at timestamptz,
    last_error text,
    cutover jsonb NOT NULL DEFAULT '{{}}',
    created_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    updated_at timestamptz NOT NULL DEFAULT clock_timestamp()
);

-- At most one unfinished migration per table.
CREATE TABLE IF NOT EXISTS {schema}.migration_tables (
    migration_id text NOT NULL REFERENCES {schema}.migrations (id) ON DELETE CASCADE,
    schema_name text NOT NULL,
    table_name text NOT NULL,
    active boolean NOT NULL DEFAULT true,
    PRIMARY KEY (migration_id, schema_name, table_name)
);
CREATE UNIQUE INDEX IF NOT EXISTS migration_tables_one_active
    ON {schema}.migration_tables (schema_name, table_name) WHERE active;

-- Steps done, keyed by a stable id so a rerun skips them.
CREATE TABLE IF NOT EXISTS {schema}.steps (
    migration_id text NOT NULL REFERENCES {schema}.migrations (id) ON DELETE CASCADE,
    step_id text NOT NULL,
    done_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (migration_id, step_id)
);

-- One row per shadow column to fill; the cursor moves in the same transaction as each batch.
CREATE TABLE IF NOT EXISTS {schema}.backfill (
    migration_id text NOT NULL REFERENCES {schema}.migrations (id) ON DELETE CASCADE,
    job_id text NOT NULL,
    kind text NOT NULL,
    schema_name text NOT NULL,
    table_name text NOT NULL,
    column_name text NOT NULL,
    shadow_name text NOT NULL,
    min_key bigint,
    max_key bigint,
    next_key bigint,
    rows_done bigint NOT NULL DEFAULT 0,
    rows_estimate bigint NOT NULL DEFAULT 0,
    batch_size integer,
    batches bigint NOT NULL DEFAULT 0,
    vacuumed_at_pct real NOT NULL DEFAULT 0,
    started_at timestamptz,
    finished_at timestamptz,
    updated_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (migration_id, job_id)
);

CREATE TABLE IF NOT EXISTS {schema}.events (
    id bigserial PRIMARY KEY,
    migration_id text NOT NULL REFERENCES {schema}.migrations (id) ON DELETE CASCADE,
    at timestamptz NOT NULL DEFAULT clock_timestamp(),
    kind text NOT NULL,
    detail jsonb NOT NULL DEFAULT '{{}}'
);

-- Derived UUIDs (version 2): one 32-byte random secret per migration, kept apart from the plan (which
-- `plan`, `status` and events show) and readable by the state schema's owner only. Nulled at
-- finalize, deleted with the migration at rollback.
CREATE TABLE IF NOT EXISTS {schema}.secrets (
    migration_id text PRIMARY KEY REFERENCES {schema}.migrations (id) ON DELETE CASCADE,
    secret bytea
);
REVOKE ALL ON {schema}.secrets FROM PUBLIC;

-- The latency budget's canary (version 2): one heartbeat row per running backfill, written by its
-- canary transaction and removed when the run ends.
CREATE TABLE IF NOT EXISTS {schema}.canary (
    migration_id text PRIMARY KEY,
    beats bigint NOT NULL,
    at timestamptz NOT NULL
);

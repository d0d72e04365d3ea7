-- UUID version 7 (RFC 9562) for servers before PostgreSQL 18, which has uuidv7() built in.
-- 48-bit Unix milliseconds, version 7, variant 10, the rest random. Placeholder: function
CREATE OR REPLACE FUNCTION {function}() RETURNS uuid
LANGUAGE sql VOLATILE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $online_uuid$
    SELECT encode(
        set_bit(
            set_bit(
                overlay(uuid_send(gen_random_uuid())
                        PLACING substring(int8send(floor(extract(epoch FROM clock_timestamp()) * 1000)::bigint) FROM 3)
                        FROM 1 FOR 6),
                52, 1),
            53, 1),
        'hex')::uuid
$online_uuid$;

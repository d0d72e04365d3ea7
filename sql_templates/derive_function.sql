-- Derived UUIDs: the UUID a pre-cutover row of one table gets, computed from its integer key.
-- uuid = the first 16 bytes of sha256(secret || label || int8send(id)), with version 4 (byte 6 high
-- nibble 0100) and the RFC 9562 variant (byte 8 high bits 10) set: a valid random-looking v4 UUID.
-- The secret is 32 random bytes per migration, the label the table's quoted schema-qualified name.
-- Two functions: {bytes_function} gives the 16 bytes, {function} the uuid made of them. Comparing
-- bytes (uuid_send(shadow) = bytes) skips the hex round trip into a uuid, which costs about half as
-- much as the sha256 itself: the invariant's CHECK, verify and the backfill's filter compare bytes.
-- Each is a single SQL expression, IMMUTABLE, STRICT, with no SET clause: the planner inlines them
-- (the uuid one, then the bytes one inside it) into the trigger's expression, the backfill's UPDATE,
-- the CHECK and verify's scan: no function call per row.
-- Every name, operator and type is schema-qualified, so no search_path is needed; the secret and the
-- label are hex text decoded by pg_catalog.decode (folded to constants when the function is planned).
-- Placeholders: function bytes_function secret label
CREATE OR REPLACE FUNCTION {bytes_function}(bigint) RETURNS bytea
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
AS $online_uuid$
    SELECT pg_catalog.set_bit(pg_catalog.set_bit(
        pg_catalog.set_bit(pg_catalog.set_bit(pg_catalog.set_bit(pg_catalog.set_bit(
            pg_catalog.substr(
                pg_catalog.sha256(pg_catalog.decode({secret}, 'hex') OPERATOR(pg_catalog.||)
                                  pg_catalog.decode({label}, 'hex') OPERATOR(pg_catalog.||)
                                  pg_catalog.int8send($1)),
                1, 16),
            52, 0), 53, 0), 54, 1), 55, 0),
        70, 0), 71, 1)
$online_uuid$;

CREATE OR REPLACE FUNCTION {function}(bigint) RETURNS uuid
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
AS $online_uuid$
    SELECT pg_catalog.encode({bytes_function}($1), 'hex')::pg_catalog.uuid
$online_uuid$;

-- Keeps a foreign key's shadow column equal to the referenced row's other key.
-- Before cutover: shadow = parent's UUID looked up by the integer FK.
-- After cutover: shadow = parent's retired integer looked up by the UUID FK (keeps rollback lossless).
-- A parent this trigger cannot see (inserted later in the transaction, by a CTE of the same statement
-- or by a row of the same INSERT, or committed by another session meanwhile) gives the `missing`
-- marker instead of NULL: it queues the fix-up (and only it does), and it keeps the NOT NULL proof
-- of cutover preparation satisfied until the fix-up, which fires before the RI checks, writes the
-- parent's value.
-- It runs on every write of the child, so it is one lookup INTO NEW and no other plpgsql expression
-- (that also spares plpgsql its per-transaction expression state).
-- SECURITY INVOKER when every role that writes the child may read the parent (a definer function
-- costs ~15% of an INSERT); otherwise SECURITY DEFINER with a pinned search_path. Every name and
-- operator is schema-qualified either way.
-- Placeholders: function column shadow ref_table ref_column ref_shadow missing self_ref self_ref_end security
CREATE OR REPLACE FUNCTION {function}() RETURNS trigger
LANGUAGE plpgsql {security}
AS $online_uuid$
BEGIN
    {self_ref}SELECT CASE WHEN k.v IS NULL THEN NULL WHEN p.{ref_column} IS NULL THEN {missing}
                ELSE p.{ref_shadow} END
      INTO NEW.{shadow}
      FROM (SELECT NEW.{column}) AS k (v)
      LEFT JOIN {ref_table} AS p ON p.{ref_column} OPERATOR(pg_catalog.=) k.v;
    {self_ref_end}RETURN NEW;
END
$online_uuid$;

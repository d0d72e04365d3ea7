-- Derived UUIDs: keeps a shadow column equal to derive(<integer column>) on every insert and update,
-- whatever the application (or an earlier trigger) wrote into it. For a key the derive function is
-- the table's own; for a foreign key, the parent's: the parent row is never read, so there is no
-- visibility question (same statement, same transaction, deferred FKs) and no privilege question.
-- derive() is an inlined SQL expression: no lookup, no function call, SECURITY INVOKER.
-- Placeholders: function shadow column derive
CREATE OR REPLACE FUNCTION {function}() RETURNS trigger
LANGUAGE plpgsql SECURITY INVOKER
AS $online_uuid$
BEGIN
    NEW.{shadow} := {derive}(NEW.{column});
    RETURN NEW;
END
$online_uuid$;

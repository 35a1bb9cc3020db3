-- tenancy.table_exec() / table_query(): work on a user table runs as the
-- less privileged of the requesting role and the table's owner, under
-- SECURITY_RESTRICTED_OPERATION (src/as_owner.c).
CREATE EXTENSION tenancy;
CREATE ROLE ao_owner;
CREATE ROLE ao_other;
CREATE ROLE ao_member IN ROLE ao_owner;
CREATE SCHEMA ao AUTHORIZATION ao_owner;
GRANT USAGE ON SCHEMA ao TO PUBLIC;
SET ROLE ao_owner;
CREATE TABLE ao.t (id int PRIMARY KEY, v int);
INSERT INTO ao.t SELECT g, g FROM generate_series(1, 5) g;
-- Who runs the code the table owner controls, and in what context.
CREATE FUNCTION ao.who(int) RETURNS int LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
    RAISE NOTICE 'who: current_user %, session_user is superuser %', current_user,
        (SELECT rolsuper FROM pg_roles WHERE rolname = session_user);
    RETURN $1;
END $$;
CREATE FUNCTION ao.make_temp() RETURNS int LANGUAGE plpgsql AS $$
BEGIN
    CREATE TEMP TABLE ao_trap (x int);
    RETURN 1;
END $$;
CREATE FUNCTION ao.set_role() RETURNS int LANGUAGE plpgsql AS $$
BEGIN
    SET ROLE NONE;
    RETURN 1;
END $$;
CREATE FUNCTION ao.set_work_mem() RETURNS text LANGUAGE sql AS
    $$SELECT set_config('work_mem', '7MB', false)$$;
GRANT SELECT, UPDATE ON ao.t TO ao_other;
RESET ROLE;

-- A superuser runs as the owner; the result is the first row as text.
SELECT tenancy.table_query('ao.t', NULL, 'SELECT current_user, ao.who(v), count(*) OVER () FROM ao.t WHERE id = $1', 3);
-- No row: NULL.
SELECT tenancy.table_query('ao.t', NULL, 'SELECT id FROM ao.t WHERE id > 100') IS NULL AS no_row;
-- Parameters keep their types; an untyped literal is text.
SELECT tenancy.table_query('ao.t', NULL, 'SELECT pg_typeof($1), pg_typeof($2), pg_typeof($3)', 1::bigint, ARRAY['a'], 'x');
SELECT tenancy.table_exec('ao.t', NULL, 'UPDATE ao.t SET v = v + $1 WHERE id <= $2', 10, 2) AS updated;
SELECT id, v FROM ao.t ORDER BY id;
-- Restricted: no temporary objects, no SET ROLE.
SELECT tenancy.table_query('ao.t', NULL, 'SELECT ao.make_temp()');
SELECT tenancy.table_query('ao.t', NULL, 'SELECT ao.set_role()');
-- Settings the statement changes are undone when it ends.
SHOW work_mem;
SELECT tenancy.table_query('ao.t', NULL, 'SELECT ao.set_work_mem()');
SHOW work_mem;
-- Back to the caller afterwards, and after an error.
SELECT current_user = session_user AS restored;
SELECT tenancy.table_exec('ao.t', NULL, 'SELECT 1/0');
SELECT current_user = session_user AS restored_after_error;

-- A role without the owner's privileges runs as itself.
SET ROLE ao_other;
SELECT tenancy.table_query('ao.t', NULL, 'SELECT current_user, count(*) FROM ao.t');
-- A member of the owner role runs as the owner.
SET ROLE ao_member;
SELECT tenancy.table_query('ao.t', NULL, 'SELECT current_user');
RESET ROLE;

-- as_role: a role the caller has the privileges of, downgraded to the owner.
SELECT tenancy.table_query('ao.t', 'ao_other', 'SELECT current_user');
SELECT tenancy.table_query('ao.t', 'ao_member', 'SELECT current_user');
-- A role the caller cannot become: 42501, nothing runs.
SET ROLE ao_other;
SELECT tenancy.table_exec('ao.t', 'ao_owner', 'UPDATE ao.t SET v = 0');
RESET ROLE;
SELECT count(*) FILTER (WHERE v = 0) AS zeroed FROM ao.t;

-- Row security: the owner sees every row of a table under FORCE ROW LEVEL
-- SECURITY (as referential integrity checks do); for another role, whom the
-- policies would filter, the statement fails (row_security is off) rather
-- than count or change only the rows it may see.
-- A statement over tables of several owners runs as the least privileged
-- of them: sql/security_owner_code.sql.
ALTER TABLE ao.t ENABLE ROW LEVEL SECURITY, FORCE ROW LEVEL SECURITY;
CREATE POLICY p ON ao.t USING (id = 1);
SELECT tenancy.table_query('ao.t', NULL, 'SELECT count(*) FROM ao.t') AS owner_count;
SELECT tenancy.table_query('ao.t', 'ao_other', 'SELECT count(*) FROM ao.t') AS other_count;

-- Errors.
SELECT tenancy.table_exec(NULL, NULL, 'SELECT 1');
SELECT tenancy.table_exec('ao.t', NULL, NULL);
SELECT tenancy.table_exec(12345678::regclass, NULL, 'SELECT 1');
-- An untyped NULL parameter is a text NULL.
SELECT tenancy.table_query('ao.t', NULL, 'SELECT pg_typeof($1), $1 IS NULL', NULL);

DROP SCHEMA ao CASCADE;
DROP ROLE ao_member, ao_other, ao_owner;
DROP EXTENSION tenancy;

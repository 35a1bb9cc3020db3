-- Issue 13, finding 1: the background worker and refresh_status() count a
-- table as its owner, under SECURITY_RESTRICTED_OPERATION (src/status.c,
-- src/as_owner.c), so code the owner put in an index predicate or an
-- index expression never runs as a superuser; tenancy.rls_record(),
-- executable by every role, registers only what enable_rls() would.
CREATE EXTENSION tenancy;

\ir wait_for.psql

CREATE ROLE sw_owner;   -- owns an ordinary table
CREATE ROLE sw_temp;    -- nothing but TEMP (which PUBLIC has)
CREATE ROLE sw_counter; -- may call refresh_status(), owns nothing
CREATE SCHEMA sw AUTHORIZATION sw_owner;
GRANT USAGE ON SCHEMA sw TO PUBLIC;

-- The trap: an IMMUTABLE function that calls one that tries to make its
-- owner a superuser, and writes down as whom it ran and what happened.
SET ROLE sw_owner;
CREATE TABLE sw.log (who name, outcome text);
GRANT INSERT ON sw.log TO PUBLIC;
CREATE FUNCTION sw.escalate() RETURNS boolean LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    BEGIN
        ALTER ROLE sw_owner SUPERUSER;
        INSERT INTO sw.log VALUES (current_user, 'became superuser');
    EXCEPTION WHEN OTHERS THEN
        INSERT INTO sw.log VALUES (current_user, 'refused: ' || SQLSTATE);
    END;
    RETURN true;
END $$;
CREATE FUNCTION sw.trap() RETURNS boolean LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
    RETURN sw.escalate();
END $$;
CREATE FUNCTION sw.trap_int() RETURNS int LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
    PERFORM sw.escalate();
    RETURN 0;
END $$;
CREATE TABLE sw.t (id int, tenant_id uuid);
INSERT INTO sw.t SELECT g, CASE WHEN g % 2 = 0 THEN '00000000-0000-0000-0000-000000000001'::uuid END
  FROM generate_series(1, 10) g;
-- a partial index whose predicate, and an expression index whose
-- expression, the planner folds (runs) when it plans a query on the table
CREATE INDEX sw_t_pred ON sw.t (id) WHERE sw.trap();
CREATE INDEX sw_t_expr ON sw.t ((id + sw.trap_int()));
-- the same under FORCE ROW LEVEL SECURITY, with a policy that hides rows
CREATE TABLE sw.forced (id int, tenant_id uuid);
INSERT INTO sw.forced SELECT g, NULL FROM generate_series(1, 7) g;
ALTER TABLE sw.forced ENABLE ROW LEVEL SECURITY;
ALTER TABLE sw.forced FORCE ROW LEVEL SECURITY;
CREATE POLICY hide ON sw.forced USING (id < 3);
-- registered by its owner through the bookkeeping function, like the
-- output of policy_sql() does
SELECT tenancy.rls_record('register', 'sw.forced', 'sw.forced', 'tenant_id', 'migrating');
RESET ROLE;
TRUNCATE sw.log;
-- the DBA registers the trapped table, as add_tenant_column() does
INSERT INTO tenancy.tables (relation) VALUES ('sw.t');

-- rls_record() refuses a temporary table, even from its owner: a role with
-- nothing but TEMP can create one with a trap of its own
SET ROLE sw_temp;
CREATE FUNCTION pg_temp.escalate() RETURNS boolean LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    BEGIN
        ALTER ROLE sw_temp SUPERUSER;
        INSERT INTO sw.log VALUES (current_user, 'became superuser');
    EXCEPTION WHEN OTHERS THEN
        INSERT INTO sw.log VALUES (current_user, 'refused: ' || SQLSTATE);
    END;
    RETURN true;
END $$;
CREATE FUNCTION pg_temp.trap() RETURNS boolean LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
    RETURN pg_temp.escalate();
END $$;
CREATE TEMP TABLE sw_tmp (id int, tenant_id uuid);
INSERT INTO sw_tmp VALUES (1, NULL);
CREATE INDEX ON sw_tmp (id) WHERE pg_temp.trap();
\set VERBOSITY terse
SELECT tenancy.rls_record('register', 'sw_tmp', 'sw_tmp', 'tenant_id', 'migrating');
-- nor a table of another owner
SELECT tenancy.rls_record('register', 'sw.t', 'sw.t', 'tenant_id', 'migrating');
RESET ROLE;
-- and the owner registers only what enable_rls() would: a table with a
-- tenant column of the key type, under itself or the table it is a
-- partition of
SET ROLE sw_owner;
CREATE TABLE sw.other (id int, tenant_id uuid);
CREATE TABLE sw.wrongtype (id int, tenant_id int);
CREATE VIEW sw.v AS SELECT * FROM sw.other;
CREATE SEQUENCE sw.s;
SELECT tenancy.rls_record('register', 'sw.other', 'sw.other', 'no_such_column', 'migrating');
SELECT tenancy.rls_record('register', 'sw.wrongtype', 'sw.wrongtype', 'tenant_id', 'migrating');
SELECT tenancy.rls_record('register', 'sw.v', 'sw.v', 'tenant_id', 'migrating');
SELECT tenancy.rls_record('register', 'sw.s', 'sw.s', 'tenant_id', 'migrating');
SELECT tenancy.rls_record('register', 'sw.other', 'sw.forced', 'tenant_id', 'migrating');
RESET ROLE;
\set VERBOSITY default
SELECT relation, root, column_name, mode FROM tenancy.rls_tables ORDER BY relation::text;
SELECT relation, column_name, stage FROM tenancy.tables ORDER BY relation::text;

-- A fresh session (the relcache of this one holds the folded predicate):
-- refresh_status() as a superuser counts as the owner, whose ALTER ROLE
-- is refused.
\c
\ir wait_for.psql
SELECT relation, unmigrated, method FROM tenancy.refresh_status('sw.t');
SELECT rolname, rolsuper FROM pg_roles WHERE rolname IN ('sw_owner', 'sw_temp') ORDER BY 1;
SELECT DISTINCT who, outcome FROM sw.log ORDER BY 1, 2;

-- FORCE ROW LEVEL SECURITY: a role that may count, and has the owner's
-- privileges, counts every row (SECURITY_NOFORCE_RLS) instead of failing
-- on the policy
GRANT sw_owner TO sw_counter;
GRANT EXECUTE ON FUNCTION tenancy.refresh_status(regclass) TO sw_counter;
GRANT SELECT ON tenancy.tables TO sw_counter;
GRANT SELECT, INSERT, UPDATE, DELETE ON tenancy.migration_status TO sw_counter;
SET ROLE sw_counter;
SELECT relation, unmigrated, total_rows, method FROM tenancy.refresh_status('sw.forced');
RESET ROLE;

-- The worker, in a process of its own, counts as the owner too.
TRUNCATE sw.log;
CREATE TEMP TABLE seen AS SELECT clock_timestamp() AS at;
SELECT pg_temp.wait_for($$(SELECT bool_and(checked_at > seen.at) FROM tenancy.migration_status, seen
    WHERE relation IN ('sw.t'::regclass, 'sw.forced'::regclass))$$) AS worker_counted;
SELECT relation, unmigrated, method FROM tenancy.migration_status
 WHERE relation IN ('sw.t'::regclass, 'sw.forced'::regclass) ORDER BY relation::text;
SELECT rolname, rolsuper FROM pg_roles WHERE rolname IN ('sw_owner', 'sw_temp') ORDER BY 1;
SELECT DISTINCT who, outcome FROM sw.log ORDER BY 1, 2;

-- clean up
DELETE FROM tenancy.tables WHERE relation::text LIKE 'sw.%';
DELETE FROM tenancy.rls_tables WHERE relation::text LIKE 'sw.%';
DELETE FROM tenancy.migration_status WHERE relation::text LIKE 'sw.%';
DROP SCHEMA sw CASCADE;
REVOKE ALL ON tenancy.tables, tenancy.migration_status FROM sw_counter;
REVOKE ALL ON FUNCTION tenancy.refresh_status(regclass) FROM sw_counter;
DROP ROLE sw_owner, sw_temp, sw_counter;
DROP EXTENSION tenancy;

-- Backfill jobs cannot be forged, and a job's code never runs with more
-- rights than its creator's or the table owner's (issue 13, findings 1 and 2).
CREATE EXTENSION tenancy;
\set SHOW_CONTEXT never
SELECT tenancy.create_tenant('acme', 'Acme', '00000000-0000-0000-0000-0000000000a1') IS NOT NULL AS created;
SELECT tenancy.set_implicit_tenant('acme') IS NOT NULL AS implicit;

CREATE ROLE sbf_owner;
CREATE ROLE sbf_migrator;
CREATE ROLE sbf_admin SUPERUSER;
CREATE ROLE sbf_other;
CREATE SCHEMA sbf AUTHORIZATION sbf_owner;
GRANT USAGE ON SCHEMA sbf TO PUBLIC;
-- Who ran the attacker's code.
CREATE TABLE sbf.marks (who name, super boolean, what text);
GRANT SELECT, INSERT ON sbf.marks TO PUBLIC;
-- The migration role's function: records who runs it, and makes the
-- migration role a superuser when it runs as one.
CREATE FUNCTION sbf.evil(id int) RETURNS uuid LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    INSERT INTO sbf.marks SELECT current_user, r.rolsuper, 'evil' FROM pg_catalog.pg_roles r
     WHERE r.rolname OPERATOR(pg_catalog.=) current_user;
    IF (SELECT r.rolsuper FROM pg_catalog.pg_roles r WHERE r.rolname OPERATOR(pg_catalog.=) current_user) THEN
        ALTER ROLE sbf_migrator SUPERUSER;
    END IF;
    RETURN '00000000-0000-0000-0000-0000000000a1';
END $$;
ALTER FUNCTION sbf.evil(int) OWNER TO sbf_migrator;
-- The table owner's trap: an expression index on the tenant column
-- evaluated for every row a batch writes.
CREATE FUNCTION sbf.trap(k uuid) RETURNS uuid LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
    IF k IS NOT NULL THEN
        RAISE NOTICE 'trap: current_user %, superuser %', current_user,
            (SELECT r.rolsuper FROM pg_catalog.pg_roles r WHERE r.rolname OPERATOR(pg_catalog.=) current_user);
    END IF;
    RETURN k;
END $$;
ALTER FUNCTION sbf.trap(uuid) OWNER TO sbf_owner;

SET ROLE sbf_owner;
CREATE TABLE sbf.t (id int PRIMARY KEY, tenant_id uuid);
INSERT INTO sbf.t SELECT g FROM generate_series(1, 3) g;
CREATE TABLE sbf.t2 (id int PRIMARY KEY, tenant_id uuid);
INSERT INTO sbf.t2 SELECT g FROM generate_series(1, 3) g;
CREATE TABLE sbf.t3 (id int PRIMARY KEY, tenant_id uuid);
INSERT INTO sbf.t3 SELECT g FROM generate_series(1, 2) g;
CREATE INDEX t3_trap ON sbf.t3 (sbf.trap(tenant_id));
GRANT SELECT, UPDATE ON sbf.t, sbf.t2 TO sbf_migrator;
RESET ROLE;

-- The migration role has the grants the README lists, and may queue jobs.
-- (The table owner too, for (e).)
GRANT USAGE ON SCHEMA tenancy TO sbf_migrator, sbf_owner, sbf_other;
GRANT SELECT ON tenancy.tenants TO sbf_migrator, sbf_owner;
GRANT SELECT ON tenancy.backfill_jobs TO sbf_migrator, sbf_owner, sbf_other;
GRANT SELECT ON tenancy.tables TO sbf_migrator, sbf_owner;
GRANT EXECUTE ON FUNCTION tenancy.tables_register(regclass, name, text),
    tenancy.tables_set_stage(regclass, text, text) TO sbf_migrator, sbf_owner;
GRANT EXECUTE ON FUNCTION tenancy.tenant_key(text), tenancy.lookup_tenant(text),
    tenancy.backfill_job_insert(regclass, name, text, text, text, text, jsonb),
    tenancy.backfill_job_update(bigint, jsonb) TO sbf_migrator, sbf_owner, sbf_other;
GRANT EXECUTE ON PROCEDURE tenancy.backfill TO sbf_migrator, sbf_owner;
GRANT EXECUTE ON FUNCTION tenancy.backfill_try_lock(regclass), tenancy.backfill_unlock(regclass),
    tenancy.preallocate_wal(bigint) TO sbf_migrator, sbf_owner;
GRANT EXECUTE ON FUNCTION tenancy.queue_backfill TO sbf_migrator;

-- (a) No direct writes to the job table.
SET ROLE sbf_migrator;
INSERT INTO tenancy.backfill_jobs (relation, column_name, source_kind, source, value_sql, search_path)
VALUES ('sbf.t2', 'tenant_id', 'tenant', '00000000-0000-0000-0000-0000000000a1', 'NULL', 'public');
-- A job of its own, queued through the API, records its creator.
SELECT tenancy.queue_backfill('sbf.t', source => 'sbf.evil(t.id)') > 0 AS queued;
UPDATE tenancy.backfill_jobs SET search_path = 'sbf' WHERE relation = 'sbf.t'::regclass;
DELETE FROM tenancy.backfill_jobs WHERE relation = 'sbf.t'::regclass;
RESET ROLE;
SELECT relation, source_kind, source, created_by, state FROM tenancy.backfill_jobs ORDER BY id;

-- (b) A forged row claiming a superuser creator and running the attacker's
-- function cannot be planted, neither directly nor through the helpers.
SET ROLE sbf_migrator;
INSERT INTO tenancy.backfill_jobs (relation, column_name, source_kind, source, value_sql, search_path, created_by)
VALUES ('sbf.t2', 'tenant_id', 'tenant', '00000000-0000-0000-0000-0000000000a1', 'sbf.evil(t.id)', 'public',
        10::regrole);
SELECT tenancy.backfill_job_update(j.id, '{"created_by": "sbf_admin"}') FROM tenancy.backfill_jobs j
 WHERE j.relation = 'sbf.t'::regclass;
SELECT tenancy.backfill_job_update(j.id, '{"source": "sbf.evil(t.id) "}') FROM tenancy.backfill_jobs j
 WHERE j.relation = 'sbf.t'::regclass;
-- value_sql and batch_sql show what ran; they are never run (the run in
-- (c) would fail on this one).
SELECT tenancy.backfill_job_update(j.id, '{"value_sql": "(1/0)::uuid", "batch_sql": "SELECT 1/0"}')::text = '' AS updated
  FROM tenancy.backfill_jobs j WHERE j.relation = 'sbf.t'::regclass;
-- Nor can a role without the privileges of the creator or of the table owner.
SET ROLE sbf_other;
SELECT tenancy.backfill_job_update(j.id, '{"state": "done"}') FROM tenancy.backfill_jobs j
 WHERE j.relation = 'sbf.t'::regclass;
RESET ROLE;
SELECT relation, source_kind, source, created_by, state FROM tenancy.backfill_jobs ORDER BY id;
-- The superuser backfills t2 with the implicit tenant: nothing of the
-- migration role's runs.
CALL tenancy.backfill('sbf.t2');
SELECT count(*) AS evil_ran FROM sbf.marks;

-- (c) A superuser resuming the migration role's job runs its source as the
-- migration role, not as a superuser.
CALL tenancy.backfill('sbf.t');
SELECT who, super, count(*) FROM sbf.marks GROUP BY who, super;
SELECT rolsuper AS migrator_became_superuser FROM pg_roles WHERE rolname = 'sbf_migrator';
SELECT count(*) FILTER (WHERE tenant_id IS NULL) AS left_null FROM sbf.t;
ALTER ROLE sbf_migrator NOSUPERUSER;

-- (d) The table owner's trap runs as the owner when a superuser backfills.
CALL tenancy.backfill('sbf.t3');
SELECT count(*) FILTER (WHERE tenant_id IS NULL) AS left_null FROM sbf.t3;

-- (e) A role resuming a job it did not create runs it as the creator only
-- with the creator's privileges: the table owner cannot run the migration
-- role's job (42501); nor can another superuser run a superuser's job.
UPDATE sbf.t SET tenant_id = NULL WHERE id = 1;
SET ROLE sbf_migrator;
SELECT tenancy.queue_backfill('sbf.t', source => 'sbf.evil(t.id)') > 0 AS queued;
SET ROLE sbf_owner;
CALL tenancy.backfill('sbf.t');
SET ROLE sbf_admin;
UPDATE sbf.t2 SET tenant_id = NULL WHERE id = 1;
SELECT tenancy.queue_backfill('sbf.t2') > 0 AS queued;
RESET ROLE;
CALL tenancy.backfill('sbf.t2');
SELECT relation, created_by, state FROM tenancy.backfill_jobs WHERE state <> 'done' ORDER BY id;
SELECT who, super, count(*) FROM sbf.marks GROUP BY who, super;

DROP SCHEMA sbf CASCADE;
DROP EXTENSION tenancy;
DROP OWNED BY sbf_migrator, sbf_owner, sbf_other;
DROP ROLE sbf_owner, sbf_migrator, sbf_admin, sbf_other;

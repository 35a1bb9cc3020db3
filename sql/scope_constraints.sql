-- scope_constraints_sql(): tenant-scoped unique constraints and composite
-- (tenant, key) foreign keys, run with \gexec; then cross-tenant references
-- are refused and uniqueness holds per tenant.
CREATE EXTENSION tenancy;
SELECT tenancy.create_tenant('acme', 'Acme', '11111111-1111-1111-1111-111111111111') IS NOT NULL AS created;
SELECT tenancy.create_tenant('globex', 'Globex', '22222222-2222-2222-2222-222222222222') IS NOT NULL AS created;
CREATE TABLE ready_scope_project (
    id        bigserial PRIMARY KEY,
    tenant_id uuid NOT NULL,
    code      text NOT NULL UNIQUE,
    slug      text
);
CREATE UNIQUE INDEX ready_scope_project_slug ON ready_scope_project (lower(slug)) WHERE slug IS NOT NULL;
CREATE TABLE ready_scope_task (
    id          bigserial PRIMARY KEY,
    tenant_id   uuid NOT NULL,
    project_id  bigint NOT NULL REFERENCES ready_scope_project (id) ON DELETE CASCADE,
    parent_task bigint REFERENCES ready_scope_task (id) ON DELETE SET NULL
);
INSERT INTO ready_scope_project (tenant_id, code, slug) VALUES
    ('11111111-1111-1111-1111-111111111111', 'A', 'alpha'),
    ('22222222-2222-2222-2222-222222222222', 'B', 'beta');
INSERT INTO ready_scope_task (tenant_id, project_id, parent_task) VALUES
    ('11111111-1111-1111-1111-111111111111', 1, NULL),
    ('11111111-1111-1111-1111-111111111111', 1, 1);
INSERT INTO tenancy.tables (relation) VALUES ('ready_scope_project'), ('ready_scope_task');

-- Before: a cross-tenant reference and a cross-tenant duplicate are accepted.
BEGIN;
INSERT INTO ready_scope_task (tenant_id, project_id) VALUES ('22222222-2222-2222-2222-222222222222', 1);
SELECT count(*) AS cross_tenant FROM tenancy.verify() WHERE check_name = 'cross_tenant_reference' AND status = 'failure';
ROLLBACK;
\set VERBOSITY sqlstate
INSERT INTO ready_scope_project (tenant_id, code) VALUES ('22222222-2222-2222-2222-222222222222', 'A');
\set VERBOSITY default

-- verify() names both: the unique constraint, and the unique index on an
-- expression (no column list to show); the bigserial primary key is a
-- surrogate key and passes.
SELECT status, detail FROM tenancy.verify('ready_scope_project') WHERE check_name = 'unique_scope' ORDER BY detail;

-- The plan, for review.
SELECT step, relation, action, sql FROM tenancy.scope_constraints_plan();
SELECT step, action, undo_sql FROM tenancy.scope_constraints_plan();
-- One table: its own constraints and the parent index its foreign keys need.
SELECT step, relation, action FROM tenancy.scope_constraints_plan('ready_scope_task');

-- The replace step refuses to drop the old foreign key while the new one
-- is missing (a step that failed in \gexec without ON_ERROR_STOP).
SELECT sql FROM tenancy.scope_constraints_plan('ready_scope_task') WHERE action = 'replace_foreign_key' AND sql ~ 'project' \gexec
SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint
 WHERE conrelid = 'ready_scope_task'::regclass AND contype = 'f' ORDER BY conname;

-- Run it.
\set ON_ERROR_STOP on
SELECT * FROM tenancy.scope_constraints_sql() \gexec
\set ON_ERROR_STOP off
\d ready_scope_project
\d ready_scope_task
SELECT relation, step FROM tenancy.contract_log ORDER BY id;

-- Nothing left to do, and the report agrees.
SELECT count(*) AS steps FROM tenancy.scope_constraints_plan();
SELECT check_name, relation, status FROM tenancy.verify()
 WHERE check_name IN ('unique_scope', 'foreign_key_scope', 'cross_tenant_reference');

-- After: a cross-tenant reference is refused ...
\set VERBOSITY sqlstate
INSERT INTO ready_scope_task (tenant_id, project_id) VALUES ('22222222-2222-2222-2222-222222222222', 1);
UPDATE ready_scope_task SET tenant_id = '22222222-2222-2222-2222-222222222222' WHERE id = 1;
\set VERBOSITY default
INSERT INTO ready_scope_task (tenant_id, project_id) VALUES ('22222222-2222-2222-2222-222222222222', 1);
-- ... a code is unique per tenant, not across tenants ...
INSERT INTO ready_scope_project (tenant_id, code, slug) VALUES ('22222222-2222-2222-2222-222222222222', 'A', 'ALPHA');
\set VERBOSITY sqlstate
INSERT INTO ready_scope_project (tenant_id, code) VALUES ('22222222-2222-2222-2222-222222222222', 'A');
INSERT INTO ready_scope_project (tenant_id, code, slug) VALUES ('22222222-2222-2222-2222-222222222222', 'C', 'Beta');
\set VERBOSITY default
-- ... and the referential actions still work (SET NULL leaves the tenant).
DELETE FROM ready_scope_task WHERE id = 1;
SELECT id, tenant_id, parent_task FROM ready_scope_task ORDER BY id;
DELETE FROM ready_scope_project WHERE id = 1;
SELECT count(*) AS tasks_left FROM ready_scope_task;

-- A partitioned table: no concurrent build, no USING INDEX; the constraint is rebuilt in one step.
CREATE TABLE ready_scope_event (tenant_id uuid NOT NULL, day date NOT NULL, code text NOT NULL,
                                UNIQUE (code, day)) PARTITION BY RANGE (day);
CREATE TABLE ready_scope_event_2026 PARTITION OF ready_scope_event FOR VALUES FROM ('2026-01-01') TO ('2027-01-01');
INSERT INTO tenancy.tables (relation) VALUES ('ready_scope_event');
SELECT step, action, sql FROM tenancy.scope_constraints_plan('ready_scope_event');
\set ON_ERROR_STOP on
SELECT * FROM tenancy.scope_constraints_sql('ready_scope_event') \gexec
\set ON_ERROR_STOP off
SELECT pg_get_constraintdef(oid) FROM pg_constraint WHERE conrelid = 'ready_scope_event'::regclass AND contype = 'u';
INSERT INTO ready_scope_event VALUES ('11111111-1111-1111-1111-111111111111', '2026-05-01', 'x'),
                                     ('22222222-2222-2222-2222-222222222222', '2026-05-01', 'x');
DELETE FROM tenancy.tables WHERE relation = 'ready_scope_event'::regclass;
DROP TABLE ready_scope_event;

-- Errors.
\set VERBOSITY sqlstate
SELECT * FROM tenancy.scope_constraints_sql('pg_class');
\set VERBOSITY default

DROP EXTENSION tenancy CASCADE;
DROP TABLE ready_scope_task, ready_scope_project;

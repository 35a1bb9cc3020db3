-- Identity backfill: memberships, personal tenants for users who own
-- resources (shadow organizations), the membership-checked tenant switch,
-- and the two identity checks of the readiness report.
CREATE EXTENSION tenancy;
SELECT tenancy.create_tenant('acme', 'Acme', '11111111-1111-1111-1111-111111111111') IS NOT NULL AS created;
SELECT tenancy.create_tenant('taken', 'Taken', '22222222-2222-2222-2222-222222222222') IS NOT NULL AS created;

-- Memberships.
SELECT tenancy.add_member('acme', 'alice', 'owner');
SELECT tenancy.add_member('11111111-1111-1111-1111-111111111111', 'bob');
SELECT tenancy.add_member('acme', 'bob', 'viewer') IS NOT NULL AS role_changed;
SELECT t.slug, m.user_key, m.role FROM tenancy.memberships m JOIN tenancy.tenants t ON t.id = m.tenant ORDER BY 1, 2;
SELECT tenancy.remove_member('acme', 'bob') AS removed, tenancy.remove_member('acme', 'bob') AS again;
\set VERBOSITY sqlstate
SELECT tenancy.add_member('acme', 'carol', 'superuser');
SELECT tenancy.add_member('nope', 'carol');
SELECT tenancy.add_member('acme', NULL);
SELECT tenancy.remove_member('nope', 'carol');
\set VERBOSITY default
SELECT tenancy.add_member('acme', 'carol', 'superuser');
-- Deleting a tenant deletes its memberships.
SELECT tenancy.create_tenant('gone', 'Gone', '99999999-9999-9999-9999-999999999999') IS NOT NULL AS created;
SELECT tenancy.add_member('gone', 'alice') IS NOT NULL AS added;
DELETE FROM tenancy.tenants WHERE slug = 'gone';
SELECT count(*) AS memberships FROM tenancy.memberships WHERE user_key = 'alice';

-- A single-tenant product: users, and the resources they own.
CREATE TABLE ready_identity_users (id text PRIMARY KEY, full_name text);
CREATE TABLE ready_identity_projects (id int PRIMARY KEY, owner_id text REFERENCES ready_identity_users (id));
CREATE TABLE ready_identity_files (id int PRIMARY KEY, uploaded_by text);
INSERT INTO ready_identity_users VALUES
    ('dave', 'Dave'),              -- owns a project
    ('Erin@Example.com', 'Erin'),  -- owns a file; not a valid slug as is
    ('frank', NULL),               -- owns a project, no name
    ('grace', 'Grace'),            -- owns nothing
    ('taken', 'Tom');              -- owns a project; slug user-taken exists, not his
INSERT INTO ready_identity_projects VALUES (1, 'dave'), (2, 'dave'), (3, 'frank'), (4, 'taken');
INSERT INTO ready_identity_files VALUES (1, 'Erin@Example.com');
SELECT tenancy.create_tenant('user-taken', 'Someone else', '33333333-3333-3333-3333-333333333333') IS NOT NULL AS created;

-- Before: nothing recorded, so the report says the check has not run.
SELECT check_name, status, detail FROM tenancy.verify() WHERE check_name = 'user_without_tenant';

SELECT * FROM tenancy.create_personal_tenants('ready_identity_users', 'id', 'full_name',
    '{ready_identity_projects,ready_identity_files}', '{owner_id,uploaded_by}');
SELECT t.slug, t.name, m.user_key, m.role
  FROM tenancy.tenants t LEFT JOIN tenancy.memberships m ON m.tenant = t.id
 ORDER BY t.slug, m.user_key;
-- Idempotent.
SELECT * FROM tenancy.create_personal_tenants('ready_identity_users', 'id', 'full_name',
    '{ready_identity_projects,ready_identity_files}', '{owner_id,uploaded_by}');
SELECT count(*) AS tenants FROM tenancy.tenants;
SELECT users, key_column, name_column, resource, owner_column, slug_prefix FROM tenancy.identity_sources ORDER BY resource::text;

-- user_without_tenant: "taken" owns a project but belongs to no tenant.
SELECT check_name, relation, status, rows_affected, detail FROM tenancy.verify() WHERE check_name = 'user_without_tenant';
SELECT tenancy.add_member('user-taken', 'taken', 'member') IS NOT NULL AS added;
SELECT check_name, relation, status, rows_affected, detail FROM tenancy.verify() WHERE check_name = 'user_without_tenant';
-- A new user with a resource: the fix re-runs the helper.
INSERT INTO ready_identity_users VALUES ('heidi', 'Heidi');
INSERT INTO ready_identity_files VALUES (2, 'heidi');
SELECT check_name, relation, status, rows_affected, fix FROM tenancy.verify() WHERE check_name = 'user_without_tenant';
SELECT fix FROM tenancy.verify() WHERE check_name = 'user_without_tenant' AND status <> 'ok' \gexec
SELECT check_name, relation, status, rows_affected FROM tenancy.verify() WHERE check_name = 'user_without_tenant';

-- tenant_without_owner: "taken" and "user-taken" have no owner.
SELECT check_name, relation, status, rows_affected, detail, fix FROM tenancy.verify() WHERE check_name = 'tenant_without_owner';
SELECT tenancy.add_member('taken', 'alice', 'owner') IS NOT NULL AS added;
SELECT tenancy.add_member('user-taken', 'taken', 'owner') IS NOT NULL AS added;
SELECT check_name, relation, status, rows_affected, detail FROM tenancy.verify() WHERE check_name = 'tenant_without_owner';

-- Errors of the helper.
\set VERBOSITY sqlstate
SELECT * FROM tenancy.create_personal_tenants('ready_identity_users', 'id', 'full_name', '{ready_identity_projects}', '{}');
SELECT * FROM tenancy.create_personal_tenants('ready_identity_users', 'id', 'full_name', '{}', '{}');
SELECT * FROM tenancy.create_personal_tenants('ready_identity_users', 'id', 'full_name', '{ready_identity_projects}', '{owner_id}', 'Bad_');
SELECT * FROM tenancy.create_personal_tenants('ready_identity_users', 'nope', 'full_name', '{ready_identity_projects}', '{owner_id}');
SELECT * FROM tenancy.create_personal_tenants('ready_identity_users', 'id', 'full_name', '{ready_identity_projects}', '{nope}');
SELECT * FROM tenancy.create_personal_tenants(NULL, 'id', 'full_name', '{ready_identity_projects}', '{owner_id}');
\set VERBOSITY default
SELECT * FROM tenancy.create_personal_tenants('ready_identity_users', 'id', 'full_name', '{ready_identity_projects}', '{nope}');

-- Two keys wanting one slug (a key crafted to match another's hashed
-- slug): neither joins the other's tenant.
CREATE TABLE ready_identity_members (login text PRIMARY KEY);
CREATE TABLE ready_identity_notes (id int PRIMARY KEY, author text);
INSERT INTO ready_identity_members VALUES ('X'), ('x-' || left(md5('X'), 8));
INSERT INTO ready_identity_notes VALUES (1, 'X'), (2, 'x-' || left(md5('X'), 8));
SELECT * FROM tenancy.create_personal_tenants('ready_identity_members', 'login', 'login',
                                              '{ready_identity_notes}', '{author}', 'ws-');
SELECT count(*) AS ws_tenants FROM tenancy.tenants WHERE slug LIKE 'ws-%';
DELETE FROM tenancy.identity_sources WHERE users = 'ready_identity_members'::regclass;
DROP TABLE ready_identity_notes, ready_identity_members;

-- set_tenant_as(): a member may switch, anyone else is refused (42501).
BEGIN;
SELECT tenancy.set_tenant_as('dave', 'user-dave') IS NOT NULL AS switched;
SELECT t.slug FROM tenancy.tenants t WHERE t.id::text = tenancy.current_tenant_text();
COMMIT;
SELECT tenancy.current_tenant_text() IS NULL AS cleared_at_commit;
SELECT tenancy.set_tenant_as('alice', 'acme', is_local => false) = '11111111-1111-1111-1111-111111111111' AS session_level;
SELECT tenancy.current_tenant_text();
SELECT tenancy.clear_tenant();
\set VERBOSITY sqlstate
SELECT tenancy.set_tenant_as('dave', 'acme');
SELECT tenancy.set_tenant_as('dave', 'no-such-tenant');
SELECT tenancy.set_tenant_as(NULL, 'acme');
SELECT tenancy.suspend_tenant('user-dave');
SELECT tenancy.set_tenant_as('dave', 'user-dave');
\set VERBOSITY default
SELECT tenancy.set_tenant_as('dave', 'acme');
SELECT tenancy.current_tenant_text() IS NULL AS unchanged;

-- An application role needs no access to memberships.
CREATE ROLE ready_identity_app;
SET ROLE ready_identity_app;
BEGIN;
SELECT tenancy.set_tenant_as('alice', 'acme') IS NOT NULL AS switched;
ROLLBACK;
\set VERBOSITY sqlstate
SELECT count(*) FROM tenancy.memberships;
SELECT tenancy.add_member('acme', 'ready_identity_app', 'owner');
\set VERBOSITY default
RESET ROLE;

DROP EXTENSION tenancy CASCADE;
DROP TABLE ready_identity_projects, ready_identity_files, ready_identity_users;
DROP ROLE ready_identity_app;

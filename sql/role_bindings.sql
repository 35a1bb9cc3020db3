-- Bindings a role cannot override: a legacy role bound to a tenant with
-- bind_role() cannot set, clear or rebind its own tenant, persistently
-- (ALTER ROLE itself ... SET) or in the session; a superuser can.
CREATE EXTENSION tenancy;
\set SHOW_CONTEXT never
\set VERBOSITY terse
\set ON_ERROR_ROLLBACK on
SELECT tenancy.create_tenant('rb-old', 'Original', 'aaaaaaaa-0000-0000-0000-0000000000a1') IS NOT NULL AS created;
SELECT tenancy.create_tenant('rb-new', 'Other', 'bbbbbbbb-0000-0000-0000-0000000000b2') IS NOT NULL AS created;
CREATE ROLE rb_owner;
CREATE ROLE rb_legacy LOGIN;
GRANT CREATE ON SCHEMA public TO rb_owner;
SET ROLE rb_owner;
CREATE TABLE rb_docs (id int PRIMARY KEY, tenant_id uuid DEFAULT tenancy.current_tenant(), body text);
INSERT INTO rb_docs VALUES
    (1, 'aaaaaaaa-0000-0000-0000-0000000000a1', 'mine'),
    (2, 'bbbbbbbb-0000-0000-0000-0000000000b2', 'theirs');
GRANT SELECT, INSERT ON rb_docs TO rb_legacy;
SELECT tenancy.enable_rls('rb_docs') IS NOT NULL AS enabled;
RESET ROLE;

SELECT tenancy.set_implicit_tenant('rb-old') IS NOT NULL AS implicit;
SELECT tenancy.add_member('rb-new', 'rb-user', 'member') IS NOT NULL AS member;
SELECT tenancy.bind_role_sql('rb_legacy');
SELECT tenancy.bind_role('rb_legacy') IS NOT NULL AS bound;
SELECT role, tenant FROM tenancy.role_bindings;
-- Not readable by the application.
SELECT has_table_privilege('rb_legacy', 'tenancy.role_bindings', 'SELECT') AS legacy_reads_bindings;

\c - rb_legacy
SELECT tenancy.current_tenant_text() AS bound_tenant;
SELECT id, body FROM rb_docs ORDER BY id;
-- The finding: the role rebinds itself persistently.
ALTER ROLE rb_legacy IN DATABASE contrib_regression SET tenancy.tenant_id = 'bbbbbbbb-0000-0000-0000-0000000000b2';
ALTER ROLE rb_legacy SET tenancy.tenant_id = 'bbbbbbbb-0000-0000-0000-0000000000b2';
-- ... or for the session, the transaction, a function call.
SET tenancy.tenant_id = 'bbbbbbbb-0000-0000-0000-0000000000b2';
BEGIN;
SET LOCAL tenancy.tenant_id = 'bbbbbbbb-0000-0000-0000-0000000000b2';
SELECT id, body FROM rb_docs ORDER BY id;
COMMIT;
SELECT set_config('tenancy.tenant_id', 'bbbbbbbb-0000-0000-0000-0000000000b2', false);
BEGIN;
SELECT tenancy.set_tenant('rb-new');
COMMIT;
BEGIN;
SELECT tenancy.set_tenant_as('rb-user', 'rb-new');
SELECT tenancy.current_tenant_text() AS after_set_tenant_as;
COMMIT;
SELECT tenancy.clear_tenant();
SET tenancy.tenant_id = '';
-- Its own tenant again is no change, and allowed.
SET tenancy.tenant_id = 'aaaaaaaa-0000-0000-0000-0000000000a1';
RESET tenancy.tenant_id;
DISCARD ALL;
SELECT tenancy.current_tenant_text() AS still_bound;
SELECT id, body FROM rb_docs ORDER BY id;
INSERT INTO rb_docs (id, body) VALUES (3, 'new row');

-- A new session: still the bound tenant, still its own rows.
\c - rb_legacy
SELECT tenancy.current_tenant_text() AS next_session;
SELECT id, body FROM rb_docs ORDER BY id;

-- A superuser changes the binding; the bound role follows it.
\c - postgres
SELECT tenancy.bind_role('rb_legacy', 'rb-new') IS NOT NULL AS rebound;
SELECT role, tenant FROM tenancy.role_bindings;
SET tenancy.tenant_id = 'aaaaaaaa-0000-0000-0000-0000000000a1';
SELECT tenancy.current_tenant_text() AS superuser_sets;
RESET tenancy.tenant_id;
\c - rb_legacy
SELECT tenancy.current_tenant_text() AS rebound_tenant;
SELECT id, body FROM rb_docs ORDER BY id;
SET tenancy.tenant_id = 'aaaaaaaa-0000-0000-0000-0000000000a1';

-- Unbound: the role is an ordinary role again.
\c - postgres
SELECT tenancy.unbind_role('rb_legacy');
SELECT count(*) AS bindings FROM tenancy.role_bindings;
\c - rb_legacy
SELECT tenancy.current_tenant_text() IS NULL AS unbound;
BEGIN;
SELECT tenancy.set_tenant('rb-old');
SELECT id, body FROM rb_docs ORDER BY id;
COMMIT;

\c - postgres
ALTER ROLE rb_legacy IN DATABASE contrib_regression RESET ALL;
ALTER ROLE rb_legacy RESET ALL;
DROP TABLE rb_docs;
REVOKE CREATE ON SCHEMA public FROM rb_owner;
DROP ROLE rb_owner;
DROP ROLE rb_legacy;
DROP EXTENSION tenancy CASCADE;

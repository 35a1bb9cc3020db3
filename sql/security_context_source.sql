-- tenancy.context_source = token: for roles that are not superusers, no
-- route but the extension's own verified setter sets tenancy.tenant_id
-- (42501, nothing changes); clearing still works; role and database
-- defaults are ignored with a WARNING at login.  Connection options:
-- test/context_source.sh.
CREATE EXTENSION tenancy;
\set SHOW_CONTEXT never
\set VERBOSITY terse
\set ON_ERROR_ROLLBACK on
SELECT tenancy.create_tenant('cs-a', 'A', 'aaaaaaaa-0000-0000-0000-0000000000c1') IS NOT NULL AS created;
SELECT tenancy.create_tenant('cs-b', 'B', 'bbbbbbbb-0000-0000-0000-0000000000c2') IS NOT NULL AS created;
CREATE ROLE cs_app LOGIN;
CREATE ROLE cs_owner;
GRANT CREATE ON SCHEMA public TO cs_owner;
SET ROLE cs_owner;
CREATE TABLE cs_docs (id int PRIMARY KEY, tenant_id uuid DEFAULT tenancy.current_tenant(), body text);
INSERT INTO cs_docs VALUES (1, 'aaaaaaaa-0000-0000-0000-0000000000c1', 'a'),
                           (2, 'bbbbbbbb-0000-0000-0000-0000000000c2', 'b');
GRANT SELECT ON cs_docs TO cs_app;
SELECT tenancy.enable_rls('cs_docs') IS NOT NULL AS enabled;
RESET ROLE;
-- A function with a SET clause, created before token mode.
CREATE FUNCTION cs_in_b() RETURNS text LANGUAGE sql
    SET tenancy.tenant_id = 'bbbbbbbb-0000-0000-0000-0000000000c2'
    AS $$ SELECT tenancy.current_tenant_text() $$;
SELECT tenancy.add_member('cs-b', 'cs-user', 'member') IS NOT NULL AS member;
-- Tenant defaults: the role's (it may set its own) and the database's.
ALTER ROLE cs_app SET tenancy.tenant_id = 'bbbbbbbb-0000-0000-0000-0000000000c2';
ALTER DATABASE contrib_regression SET tenancy.tenant_id = 'bbbbbbbb-0000-0000-0000-0000000000c2';

SHOW tenancy.context_source;
-- Superuser-only to change.
SET ROLE cs_app;
SET tenancy.context_source = 'token';
RESET ROLE;
ALTER ROLE cs_app IN DATABASE contrib_regression SET tenancy.context_source = 'token';

-- Both defaults are ignored at login, with a WARNING each.
\c - cs_app
SHOW tenancy.context_source;
SELECT tenancy.current_tenant_text() IS NULL AS no_default_tenant;
SELECT count(*) AS rows_seen FROM cs_docs;
SET tenancy.tenant_id = 'bbbbbbbb-0000-0000-0000-0000000000c2';
BEGIN;
SET LOCAL tenancy.tenant_id = 'bbbbbbbb-0000-0000-0000-0000000000c2';
COMMIT;
SELECT set_config('tenancy.tenant_id', 'bbbbbbbb-0000-0000-0000-0000000000c2', false);
SELECT set_config('tenancy.tenant_id', 'bbbbbbbb-0000-0000-0000-0000000000c2', true);
BEGIN;
SELECT tenancy.set_tenant('cs-b');
COMMIT;
SELECT tenancy.set_tenant('cs-b', is_local => false);
-- set_tenant_as() runs as the extension's owner (SECURITY DEFINER): the
-- caller, not the owner, decides.
BEGIN;
SELECT tenancy.set_tenant_as('cs-user', 'cs-b');
SELECT tenancy.current_tenant_text() IS NULL AS no_tenant_after_set_tenant_as;
COMMIT;
SELECT cs_in_b();
SET tenancy.context_source = 'any';
SELECT tenancy.current_tenant_text() IS NULL AS still_no_tenant, count(*) AS rows_seen FROM cs_docs;
-- Clearing works from every route.
SELECT tenancy.clear_tenant();
SET tenancy.tenant_id = '';
SELECT set_config('tenancy.tenant_id', '', false) AS cleared;
RESET tenancy.tenant_id;
DISCARD ALL;
-- A default the role stores for itself takes no effect either.
ALTER ROLE cs_app IN DATABASE contrib_regression SET tenancy.tenant_id = 'aaaaaaaa-0000-0000-0000-0000000000c1';
\c - cs_app
SELECT tenancy.current_tenant_text() IS NULL AS defaults_ignored;

-- A superuser still sets the tenant any way.
\c - postgres
SET tenancy.context_source = 'token';
SET tenancy.tenant_id = 'bbbbbbbb-0000-0000-0000-0000000000c2';
SELECT tenancy.current_tenant_text() AS superuser_set;
BEGIN;
SELECT tenancy.set_tenant('cs-a');
COMMIT;
SELECT cs_in_b() AS superuser_function_set;
RESET tenancy.tenant_id;

-- A key accepted while the mode was "any" counts as unset once it is token.
SET tenancy.context_source = 'any';
SET ROLE cs_app;
SET tenancy.tenant_id = 'aaaaaaaa-0000-0000-0000-0000000000c1';
SELECT count(*) AS rows_under_any FROM cs_docs;
RESET ROLE;
SET tenancy.context_source = 'token';
SET ROLE cs_app;
SELECT tenancy.current_tenant_text() IS NULL AS unset_under_token, count(*) AS rows_seen FROM cs_docs;
RESET ROLE;
RESET tenancy.tenant_id;

-- Token mode from the database's settings, which PostgreSQL applies after
-- the role's: the check reads the defaults that will apply, so the role's
-- and the database's tenant defaults are ignored with a WARNING all the same.
ALTER ROLE cs_app IN DATABASE contrib_regression RESET tenancy.context_source;
ALTER DATABASE contrib_regression SET tenancy.context_source = 'token';
\c - cs_app
SHOW tenancy.context_source;
SELECT tenancy.current_tenant_text() IS NULL AS unset_under_token, count(*) AS rows_seen FROM cs_docs;

-- Back to "any": the role's routes work again.
\c - postgres
ALTER DATABASE contrib_regression RESET tenancy.context_source;
ALTER DATABASE contrib_regression RESET tenancy.tenant_id;
ALTER ROLE cs_app RESET tenancy.tenant_id;
\c - cs_app
BEGIN;
SELECT tenancy.set_tenant('cs-a');
SELECT id, body FROM cs_docs ORDER BY id;
COMMIT;

\c - postgres
ALTER ROLE cs_app RESET ALL;
ALTER ROLE cs_app IN DATABASE contrib_regression RESET ALL;
ALTER DATABASE contrib_regression RESET tenancy.tenant_id;
DROP FUNCTION cs_in_b();
DROP TABLE cs_docs;
REVOKE CREATE ON SCHEMA public FROM cs_owner;
DROP ROLE cs_owner;
DROP ROLE cs_app;
DROP EXTENSION tenancy CASCADE;

-- The legacy code path: a role bound to the implicit tenant starts every
-- session with it, and RESET / DISCARD ALL return to it.
CREATE EXTENSION tenancy;
SELECT tenancy.create_tenant('original', 'Original customer', 'aaaaaaaa-0000-0000-0000-000000000001');
SELECT tenancy.create_tenant('newco', 'New customer', 'bbbbbbbb-0000-0000-0000-000000000002');
CREATE ROLE bind_role_legacy LOGIN;
CREATE ROLE "bind_role Odd""Name" LOGIN;

-- No implicit tenant yet.
SELECT tenancy.bind_role_sql('bind_role_legacy');
SELECT tenancy.set_implicit_tenant('original');
SELECT tenancy.bind_role_sql('bind_role_legacy');
SELECT tenancy.bind_role_sql('"bind_role Odd""Name"', 'newco');
SELECT tenancy.bind_role_sql('bind_role_legacy', 'nobody');
SELECT tenancy.bind_role_sql('bind_role_nobody');
SELECT tenancy.bind_role('bind_role_legacy');
SELECT tenancy.bind_role('"bind_role Odd""Name"', 'newco');
SELECT r.rolname, s.setconfig
  FROM pg_db_role_setting s JOIN pg_roles r ON r.oid = s.setrole
 WHERE s.setdatabase = (SELECT oid FROM pg_database WHERE datname = current_database())
   AND r.rolname LIKE 'bind_role%' ORDER BY 1;

-- The guard is on for the legacy role: its bound default is not a "session
-- tenant set by the client" and stays usable.
ALTER ROLE bind_role_legacy IN DATABASE contrib_regression SET tenancy.allow_session_tenant = off;

\c - bind_role_legacy
SELECT tenancy.current_tenant_text() AS bound_default;
BEGIN;
SELECT tenancy.set_tenant('newco');
SELECT tenancy.current_tenant_text();
COMMIT;
SELECT tenancy.current_tenant_text() AS back_to_default;
RESET tenancy.tenant_id;
SELECT tenancy.current_tenant_text() AS after_reset;
DISCARD ALL;
SELECT tenancy.current_tenant_text() AS after_discard_all;
SET tenancy.tenant_id = 'bbbbbbbb-0000-0000-0000-000000000002';
SELECT tenancy.current_tenant_text() AS after_refused_set;
SELECT tenancy.clear_tenant();
SELECT tenancy.current_tenant_text() AS after_refused_clear;
-- An application role can read and set its tenant, but not change the registry.
SELECT tenancy.create_tenant('mine', 'Mine');
UPDATE tenancy.tenants SET status = 'suspended';
SELECT count(*) FROM tenancy.tenants;
SELECT tenancy.bind_role('bind_role_legacy', 'newco');

\c - "bind_role Odd""Name"
SELECT tenancy.current_tenant_text() AS bound_to_newco;

\c - postgres
SELECT tenancy.unbind_role('bind_role_legacy');
SELECT tenancy.unbind_role('"bind_role Odd""Name"');
ALTER ROLE bind_role_legacy IN DATABASE contrib_regression RESET ALL;
\c - bind_role_legacy
SELECT tenancy.current_tenant() IS NULL AS unbound;
\c - postgres
DROP ROLE bind_role_legacy;
DROP ROLE "bind_role Odd""Name";
DROP EXTENSION tenancy CASCADE;

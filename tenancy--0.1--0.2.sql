-- tenancy--0.1--0.2.sql: upgrade from the released 0.1 to 0.2 (unreleased,
-- editable until 0.2 is released).  Every change to the SQL sources
-- (src/*.sql) since v0.1 is written here as well, so that ALTER EXTENSION
-- tenancy UPDATE gives what a fresh install of 0.2 gives (test/upgrade.sh
-- compares the two).  Read the database's key type from the registry
-- (pg_attribute of tenancy.tenants.id), never from tenancy.tenant_type.

\echo Use "ALTER EXTENSION tenancy UPDATE TO '0.2'" to load this file. \quit

-- Signed tenant tokens (src/token.sql).
CREATE FUNCTION tenancy.set_tenant_token(token text, is_local boolean DEFAULT true) RETURNS text
    AS 'MODULE_PATHNAME', 'tenancy_set_tenant_token'
    LANGUAGE C VOLATILE PARALLEL UNSAFE;
COMMENT ON FUNCTION tenancy.set_tenant_token(text, boolean) IS 'verify a signed tenant token (JWT) and set the tenant from its claim, for the transaction (default) or the session; returns the key';

CREATE FUNCTION tenancy.current_user_key() RETURNS text
    AS 'MODULE_PATHNAME', 'tenancy_current_user_key'
    LANGUAGE C STABLE PARALLEL SAFE;
COMMENT ON FUNCTION tenancy.current_user_key() IS 'sub claim of the tenant token that set the current tenant; NULL otherwise';

-- src/token.sql: signed tenant tokens, current_user_key() (C: token.c).
------------------------------------------------------------------------------
-- Signed tenant tokens (C: token.c)
------------------------------------------------------------------------------

CREATE FUNCTION tenancy.set_tenant_token(token text, is_local boolean DEFAULT true) RETURNS text
    AS 'MODULE_PATHNAME', 'tenancy_set_tenant_token'
    LANGUAGE C VOLATILE PARALLEL UNSAFE;
COMMENT ON FUNCTION tenancy.set_tenant_token(text, boolean) IS 'verify a signed tenant token (JWT) and set the tenant from its claim, for the transaction (default) or the session; returns the key';

CREATE FUNCTION tenancy.current_user_key() RETURNS text
    AS 'MODULE_PATHNAME', 'tenancy_current_user_key'
    LANGUAGE C STABLE PARALLEL SAFE;
COMMENT ON FUNCTION tenancy.current_user_key() IS 'sub claim of the tenant token that set the current tenant; NULL otherwise';

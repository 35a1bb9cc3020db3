-- src/tenant_key.sql: tenant key types (C: tenant_key.c).

------------------------------------------------------------------------------
-- Tenant keys
------------------------------------------------------------------------------

-- Loads the module, so tenancy.tenant_type is defined from here on.
CREATE FUNCTION tenancy.key_type() RETURNS pg_catalog.regtype
    AS 'MODULE_PATHNAME', 'tenancy_key_type'
    LANGUAGE C STABLE PARALLEL SAFE;
COMMENT ON FUNCTION tenancy.key_type() IS 'type of tenant keys (tenancy.tenant_type)';

CREATE FUNCTION tenancy.normalize_key(key text) RETURNS text
    AS 'MODULE_PATHNAME', 'tenancy_normalize_key'
    LANGUAGE C STRICT STABLE PARALLEL SAFE;
COMMENT ON FUNCTION tenancy.normalize_key(text) IS 'canonical text of a tenant key; 22P02 when malformed';

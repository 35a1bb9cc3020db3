-- src/registry.sql: the tenant registry: tenants, slugs, status, the implicit tenant (C: registry.c).

------------------------------------------------------------------------------
-- Tenant registry
------------------------------------------------------------------------------

-- The key column takes the key type in force at CREATE EXTENSION time.
DO $do$
DECLARE
    keytype text := pg_catalog.format_type(tenancy.key_type(), NULL);
BEGIN
    IF keytype = 'bigint' THEN
        CREATE SEQUENCE tenancy.tenant_key_seq;
        PERFORM pg_catalog.pg_extension_config_dump('tenancy.tenant_key_seq', '');
    END IF;
    EXECUTE pg_catalog.format($sql$
        CREATE TABLE tenancy.tenants (
            id          %s PRIMARY KEY,
            slug        text NOT NULL UNIQUE
                        CONSTRAINT tenants_slug_format
                        CHECK (slug OPERATOR(pg_catalog.~) '^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$'),
            name        text NOT NULL,
            status      text NOT NULL DEFAULT 'active'
                        CONSTRAINT tenants_status_check
                        CHECK (status OPERATOR(pg_catalog.=) ANY (ARRAY['active', 'suspended'])),
            is_implicit boolean NOT NULL DEFAULT false,
            created_at  timestamptz NOT NULL DEFAULT pg_catalog.now()
        )$sql$, keytype);
END
$do$;

CREATE UNIQUE INDEX tenants_one_implicit ON tenancy.tenants (is_implicit) WHERE is_implicit;

-- set_tenant() and lookup_tenant() take a key or a slug, the key first, so
-- no name may mean two tenants.  A slug shaped like a key of the registry's
-- key type would be read as a key (the rule of tenant_key_shaped() in C,
-- spelled for slugs): refused.  With text keys every slug is also a valid
-- key: a slug that is another tenant's key, or a key that is another
-- tenant's slug, is refused.
CREATE FUNCTION tenancy.tenants_check_names() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    keytype text := pg_typeof(NEW.id)::text;
BEGIN
    IF (keytype = 'bigint' AND NEW.slug ~ '^[0-9]+$')
       OR (keytype = 'uuid' AND NEW.slug ~ '^[0-9a-f-]{32,}$') THEN
        RAISE EXCEPTION 'tenant slug "%" has the form of a % tenant key', NEW.slug, keytype
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = 'tenancy.set_tenant() would read it as a key, never as a slug.',
                  HINT = CASE keytype WHEN 'bigint' THEN 'Use a slug with at least one letter or hyphen.'
                                      ELSE 'Use a slug shorter than 32 characters, or with a letter beyond f.' END;
    END IF;
    IF keytype = 'text' THEN
        IF EXISTS (SELECT 1 FROM tenancy.tenants t WHERE t.id::text = NEW.slug AND t.id::text <> NEW.id::text) THEN
            RAISE EXCEPTION 'tenant slug "%" is the key of another tenant', NEW.slug
                USING ERRCODE = 'unique_violation',
                      DETAIL = 'Keys are looked up before slugs: the slug would name the other tenant.',
                      HINT = 'Choose another slug.';
        END IF;
        IF EXISTS (SELECT 1 FROM tenancy.tenants t WHERE t.slug = NEW.id::text AND t.slug <> NEW.slug) THEN
            RAISE EXCEPTION 'tenant key "%" is the slug of another tenant', NEW.id
                USING ERRCODE = 'unique_violation',
                      DETAIL = 'Keys are looked up before slugs: the key would shadow the other tenant''s slug.',
                      HINT = 'Choose another key.';
        END IF;
    END IF;
    RETURN NEW;
END
$$;
CREATE TRIGGER tenants_check_names
    BEFORE INSERT OR UPDATE OF id, slug ON tenancy.tenants
    FOR EACH ROW EXECUTE FUNCTION tenancy.tenants_check_names();
REVOKE ALL ON FUNCTION tenancy.tenants_check_names() FROM PUBLIC;
COMMENT ON TABLE tenancy.tenants IS 'tenant registry: key, slug, name, status; at most one implicit tenant';
SELECT pg_catalog.pg_extension_config_dump('tenancy.tenants', '');

CREATE FUNCTION tenancy.registry_changed() RETURNS trigger
    AS 'MODULE_PATHNAME', 'tenancy_registry_changed'
    LANGUAGE C;
CREATE TRIGGER tenants_changed
    AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON tenancy.tenants
    FOR EACH STATEMENT EXECUTE FUNCTION tenancy.registry_changed();

CREATE FUNCTION tenancy.lookup_tenant(tenant text, OUT id text, OUT slug text, OUT status text)
    AS 'MODULE_PATHNAME', 'tenancy_lookup_tenant'
    LANGUAGE C STRICT STABLE;
COMMENT ON FUNCTION tenancy.lookup_tenant(text) IS 'key, slug and status of a tenant named by key or slug; NULL when unknown';

-- The key of a registered tenant named by key or slug, or 42704.
CREATE FUNCTION tenancy.tenant_key(tenant text) RETURNS text
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    k text := (tenancy.lookup_tenant(tenant)).id;
BEGIN
    IF k IS NULL THEN
        RAISE EXCEPTION 'tenant "%" does not exist', tenant
            USING ERRCODE = 'undefined_object',
                  HINT = 'Register it with tenancy.create_tenant().';
    END IF;
    RETURN k;
END
$$;
COMMENT ON FUNCTION tenancy.tenant_key(text) IS 'key of a registered tenant named by key or slug';

CREATE FUNCTION tenancy.create_tenant(slug text, name text, id text DEFAULT NULL)
RETURNS text
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    keytype text := format_type(tenancy.key_type(), NULL);
    k text;
BEGIN
    IF slug IS NULL OR name IS NULL THEN
        RAISE EXCEPTION 'slug and name must not be null' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    IF slug !~ '^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$' THEN
        RAISE EXCEPTION 'invalid tenant slug "%"', slug
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = 'A slug is 1 to 63 lower-case letters, digits and inner hyphens.',
                  HINT = 'For example: acme-corp.';
    END IF;
    IF id IS NOT NULL THEN
        k := tenancy.normalize_key(id);
    ELSIF keytype = 'uuid' THEN
        k := gen_random_uuid()::text;
    ELSIF keytype = 'bigint' THEN
        k := pg_catalog.nextval(pg_catalog.to_regclass('tenancy.tenant_key_seq'))::text;   -- bigint keys only
    ELSE
        k := slug;
    END IF;
    EXECUTE format('INSERT INTO tenancy.tenants (id, slug, name) VALUES (CAST($1 AS %s), $2, $3)', keytype)
        USING k, slug, name;
    RETURN k;
END
$$;
COMMENT ON FUNCTION tenancy.create_tenant(text, text, text) IS 'register a tenant; returns its key';

CREATE FUNCTION tenancy.suspend_tenant(tenant text) RETURNS void
LANGUAGE sql SET search_path = pg_catalog, pg_temp AS $$
    UPDATE tenancy.tenants SET status = 'suspended' WHERE id::text = tenancy.tenant_key(tenant);
$$;
COMMENT ON FUNCTION tenancy.suspend_tenant(text) IS 'refuse set_tenant() for this tenant';

CREATE FUNCTION tenancy.activate_tenant(tenant text) RETURNS void
LANGUAGE sql SET search_path = pg_catalog, pg_temp AS $$
    UPDATE tenancy.tenants SET status = 'active' WHERE id::text = tenancy.tenant_key(tenant);
$$;
COMMENT ON FUNCTION tenancy.activate_tenant(text) IS 'make a suspended tenant active again';

CREATE FUNCTION tenancy.set_implicit_tenant(tenant text) RETURNS text
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    k text := tenancy.tenant_key(tenant);
BEGIN
    UPDATE tenancy.tenants SET is_implicit = false WHERE is_implicit AND id::text <> k;
    UPDATE tenancy.tenants SET is_implicit = true WHERE id::text = k AND NOT is_implicit;
    RETURN k;
END
$$;
COMMENT ON FUNCTION tenancy.set_implicit_tenant(text) IS 'mark the tenant that owns the single-tenant data';

CREATE FUNCTION tenancy.implicit_tenant() RETURNS text
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT id::text FROM tenancy.tenants WHERE is_implicit;
$$;
COMMENT ON FUNCTION tenancy.implicit_tenant() IS 'key of the implicit tenant, or NULL';

-- Is the current tenant the implicit one?  The migrating-mode policies let
-- only the implicit tenant change rows whose tenant is still NULL; they call
-- this once per statement (an uncorrelated sub-select), as any role the
-- policy applies to.  It reads the registry through the backend's cache, as
-- set_tenant() does (src/registry.c), so it stays executable by PUBLIC.
CREATE FUNCTION tenancy.is_implicit_tenant() RETURNS boolean
    AS 'MODULE_PATHNAME', 'tenancy_is_implicit_tenant'
    LANGUAGE C STABLE;
COMMENT ON FUNCTION tenancy.is_implicit_tenant() IS 'true when the current tenant is the implicit tenant';

------------------------------------------------------------------------------
-- Privileges: application roles use the context functions; the registry
-- and its helpers are for the extension owner and those it grants.
------------------------------------------------------------------------------

REVOKE ALL ON TABLE tenancy.tenants FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION
    tenancy.registry_changed(),
    tenancy.lookup_tenant(text),
    tenancy.tenant_key(text),
    tenancy.create_tenant(text, text, text),
    tenancy.suspend_tenant(text),
    tenancy.activate_tenant(text),
    tenancy.set_implicit_tenant(text)
FROM PUBLIC;

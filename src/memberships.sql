-- src/memberships.sql: memberships, personal tenants, set_tenant_as().

-- Who may act in which tenant.  The tenant column takes the key type.
DO $do$
BEGIN
    EXECUTE pg_catalog.format($sql$
        CREATE TABLE tenancy.memberships (
            tenant     %s NOT NULL REFERENCES tenancy.tenants (id) ON DELETE CASCADE,
            user_key   text NOT NULL,
            role       text NOT NULL DEFAULT 'member'
                       CONSTRAINT memberships_role_check
                       CHECK (role OPERATOR(pg_catalog.=) ANY (ARRAY['owner', 'admin', 'member', 'viewer'])),
            created_at timestamptz NOT NULL DEFAULT pg_catalog.now(),
            PRIMARY KEY (tenant, user_key)
        )$sql$, pg_catalog.format_type(tenancy.key_type(), NULL));
END
$do$;
CREATE INDEX memberships_user_key ON tenancy.memberships (user_key);
COMMENT ON TABLE tenancy.memberships IS 'tenant memberships: user key and role (owner, admin, member, viewer)';
SELECT pg_catalog.pg_extension_config_dump('tenancy.memberships', '');
REVOKE ALL ON TABLE tenancy.memberships FROM PUBLIC;

-- The users and resource tables create_personal_tenants() was run with, so
-- verify() can find users with resources but no tenant.
CREATE TABLE tenancy.identity_sources (
    users        regclass NOT NULL,
    key_column   name NOT NULL,
    name_column  name NOT NULL,
    resource     regclass NOT NULL,
    owner_column name NOT NULL,
    slug_prefix  text NOT NULL,
    PRIMARY KEY (users, resource, owner_column)
);
COMMENT ON TABLE tenancy.identity_sources IS 'users and resource tables given to create_personal_tenants()';
SELECT pg_catalog.pg_extension_config_dump('tenancy.identity_sources', '');
REVOKE ALL ON TABLE tenancy.identity_sources FROM PUBLIC;

------------------------------------------------------------------------------
-- Identity backfill: memberships, personal tenants, membership-checked switch
------------------------------------------------------------------------------

CREATE FUNCTION tenancy.add_member(tenant text, user_key text, role text DEFAULT 'member')
RETURNS text
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    k text;
BEGIN
    IF tenant IS NULL OR user_key IS NULL OR role IS NULL THEN
        RAISE EXCEPTION 'tenant, user_key and role must not be null' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    IF role NOT IN ('owner', 'admin', 'member', 'viewer') THEN
        RAISE EXCEPTION 'invalid membership role "%"', role
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'A role is one of owner, admin, member, viewer.';
    END IF;
    k := tenancy.tenant_key(tenant);
    -- plpgsql_check: VOLATILE: it writes tenancy.memberships.
    EXECUTE format('INSERT INTO tenancy.memberships AS m (tenant, user_key, role) VALUES (CAST($1 AS %s), $2, $3)'
                   ' ON CONFLICT (tenant, user_key) DO UPDATE SET role = excluded.role',
                   format_type(tenancy.key_type(), NULL))
        USING k, user_key, role;
    RETURN k;
END
$$;
COMMENT ON FUNCTION tenancy.add_member(text, text, text) IS 'make a user a member of a tenant (or change its role); returns the tenant key';

CREATE FUNCTION tenancy.remove_member(tenant text, user_key text) RETURNS boolean
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    k text := tenancy.tenant_key(tenant);
BEGIN
    DELETE FROM tenancy.memberships m WHERE m.tenant::text = k AND m.user_key = remove_member.user_key;
    RETURN FOUND;
END
$$;
COMMENT ON FUNCTION tenancy.remove_member(text, text) IS 'remove a membership; false when there was none';

-- The shadow-organization pattern: every user who owns at least one row of
-- the resource tables gets a personal tenant (slug <prefix><user key>) with
-- the user as owner.  Idempotent: a user who already owns the tenant of that
-- slug is left alone; a slug taken by another tenant (or wanted by two
-- users at once) is a conflict, reported and skipped, never joined.
CREATE FUNCTION tenancy.create_personal_tenants(
    users regclass, key_column name, name_column name,
    resource_tables regclass[], owner_columns name[],
    slug_prefix text DEFAULT 'user-',
    OUT users_with_resources bigint, OUT tenants_created bigint,
    OUT owners_added bigint, OUT conflicts bigint)
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    keytype text := format_type(tenancy.key_type(), NULL);
    owners  text[] := '{}'::text[];
    people  jsonb;
    keygen  text;
    slugx   text;
BEGIN
    IF users IS NULL OR key_column IS NULL OR name_column IS NULL OR resource_tables IS NULL
       OR owner_columns IS NULL OR slug_prefix IS NULL THEN
        RAISE EXCEPTION 'arguments must not be null' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    IF cardinality(resource_tables) = 0 OR cardinality(resource_tables) <> cardinality(owner_columns) THEN
        RAISE EXCEPTION 'resource_tables and owner_columns must have the same, non-zero length'
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'Give one owner column per resource table, in the same order.';
    END IF;
    IF slug_prefix !~ '^([a-z0-9][a-z0-9-]{0,19})?$' THEN
        RAISE EXCEPTION 'invalid slug prefix "%"', slug_prefix
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = 'A slug prefix is up to 20 lower-case letters, digits and hyphens, starting with a letter or digit.';
    END IF;
    FOR i IN 1 .. 2 LOOP
        PERFORM 1 FROM pg_attribute a
         WHERE a.attrelid = users AND a.attname = (ARRAY[key_column, name_column])[i]
           AND a.attnum > 0 AND NOT a.attisdropped;
        IF NOT FOUND THEN
            RAISE EXCEPTION 'column "%" of % does not exist', (ARRAY[key_column, name_column])[i], users
                USING ERRCODE = 'undefined_column';
        END IF;
    END LOOP;
    FOR i IN 1 .. cardinality(resource_tables) LOOP
        PERFORM 1 FROM pg_attribute a
         WHERE a.attrelid = resource_tables[i] AND a.attname = owner_columns[i]
           AND a.attnum > 0 AND NOT a.attisdropped;
        IF NOT FOUND THEN
            RAISE EXCEPTION 'column "%" of % does not exist', owner_columns[i], resource_tables[i]
                USING ERRCODE = 'undefined_column';
        END IF;
    END LOOP;

    -- Each table is read as its owner (tenancy.table_query()), one table per
    -- statement: the code a table owner controls (triggers, index
    -- expressions and predicates, policies) never runs with the caller's
    -- rights nor with another table owner's.  Keys meet as text.
    FOR i IN 1 .. cardinality(resource_tables) LOOP
        -- plpgsql_check: the table through %s of regclass (quoted by its output), the column through %I.
        owners := owners || coalesce((tenancy.table_query(resource_tables[i], NULL,
                      format('SELECT pg_catalog.array_agg(DISTINCT o.%1$I::pg_catalog.text) FROM %2$s o WHERE o.%1$I IS NOT NULL',
                             owner_columns[i], resource_tables[i])))[1]::text[], '{}');
    END LOOP;
    -- plpgsql_check: the table through %s of regclass, columns through %I, the owner keys as a parameter.
    people := coalesce((tenancy.table_query(users, NULL,
                  format('SELECT pg_catalog.jsonb_agg(pg_catalog.jsonb_build_array(u.%1$I::pg_catalog.text, u.%2$I::pg_catalog.text))'
                         ' FROM %3$s u WHERE u.%1$I IS NOT NULL AND u.%1$I::pg_catalog.text OPERATOR(pg_catalog.=) ANY ($1::pg_catalog.text[])',
                         key_column, name_column, users),
                  owners))[1]::jsonb, '[]');

    keygen := CASE keytype WHEN 'uuid' THEN 'pg_catalog.gen_random_uuid()'
                           WHEN 'bigint' THEN 'pg_catalog.nextval(''tenancy.tenant_key_seq'')'
                           ELSE 'c.slug' END;
    -- A key that is already a valid slug fragment is used as is; anything
    -- else (upper case, e-mail addresses, long keys) gets a hash suffix so
    -- that two users never map to one slug.
    slugx := format($x$CASE WHEN u.k ~ '^[a-z0-9]([a-z0-9-]*[a-z0-9])?$' AND length(%1$L || u.k) <= 63
                          THEN %1$L || u.k
                          ELSE left(%1$L || trim(both '-' FROM regexp_replace(lower(u.k), '[^a-z0-9]+', '-', 'g')), 54)
                               || CASE WHEN trim(both '-' FROM regexp_replace(lower(u.k), '[^a-z0-9]+', '-', 'g')) = '' AND %1$L = '' THEN '' ELSE '-' END
                               || left(md5(u.k), 8) END$x$,
                    slug_prefix);

    -- plpgsql_check: the slug expression and key generator are built above (the prefix through %L); the users as a parameter.
    EXECUTE format($q$
        WITH c AS (
            SELECT s.*, count(*) OVER (PARTITION BY s.slug) AS sharing
            FROM (SELECT u.k AS user_key, coalesce(u.n, u.k) AS name, %1$s AS slug
                  FROM (SELECT e.v ->> 0 AS k, e.v ->> 1 AS n FROM jsonb_array_elements($1) e(v)) u) s
        ),
        ins AS (
            INSERT INTO tenancy.tenants (id, slug, name)
            SELECT %2$s, c.slug, c.name FROM c
            WHERE c.sharing = 1
              AND NOT EXISTS (SELECT 1 FROM tenancy.tenants t WHERE t.slug = c.slug)
            ON CONFLICT DO NOTHING
            RETURNING id, slug
        ),
        own AS (
            INSERT INTO tenancy.memberships (tenant, user_key, role)
            SELECT ins.id, c.user_key, 'owner' FROM ins JOIN c ON c.slug = ins.slug
            ON CONFLICT DO NOTHING
            RETURNING 1
        )
        SELECT (SELECT count(*) FROM c),
               (SELECT count(*) FROM ins),
               (SELECT count(*) FROM own),
               (SELECT count(*) FROM c
                 WHERE NOT EXISTS (SELECT 1 FROM ins WHERE ins.slug = c.slug)
                   AND NOT EXISTS (SELECT 1 FROM tenancy.tenants t JOIN tenancy.memberships m
                                     ON m.tenant = t.id AND m.role = 'owner'
                                   WHERE t.slug = c.slug AND m.user_key = c.user_key))
        $q$, slugx, keygen)
        INTO users_with_resources, tenants_created, owners_added, conflicts USING people;

    INSERT INTO tenancy.identity_sources AS s (users, key_column, name_column, resource, owner_column, slug_prefix)
    SELECT create_personal_tenants.users, create_personal_tenants.key_column, create_personal_tenants.name_column,
           x.res, x.col, create_personal_tenants.slug_prefix
    FROM unnest(resource_tables, owner_columns) x(res, col)
    ON CONFLICT ON CONSTRAINT identity_sources_pkey
    DO UPDATE SET key_column = excluded.key_column, name_column = excluded.name_column,
                  slug_prefix = excluded.slug_prefix;

    IF conflicts > 0 THEN
        RAISE WARNING '% users were skipped: the slug of their personal tenant is held by a tenant they do not own, or wanted by another user', conflicts
            USING HINT = 'tenancy.verify() lists them as user_without_tenant; add them with tenancy.add_member() or use another slug_prefix.';
    END IF;
END
$$;
COMMENT ON FUNCTION tenancy.create_personal_tenants(regclass, name, name, regclass[], name[], text)
    IS 'create a personal tenant, owned by the user, for each user who owns resources (idempotent)';

-- set_tenant() for an acting user: refuses (42501) a tenant the user is not
-- a member of.  SECURITY DEFINER so that application roles need no access
-- to tenancy.memberships.
CREATE FUNCTION tenancy.set_tenant_as(user_key text, tenant text, is_local boolean DEFAULT true)
RETURNS text
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    k text;
BEGIN
    IF user_key IS NULL OR tenant IS NULL OR is_local IS NULL THEN
        RAISE EXCEPTION 'user_key, tenant and is_local must not be null' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    k := tenancy.tenant_key(tenant);
    IF NOT EXISTS (SELECT 1 FROM tenancy.memberships m
                   WHERE m.user_key = set_tenant_as.user_key AND m.tenant::text = k) THEN
        RAISE EXCEPTION 'user "%" is not a member of tenant "%"', user_key, tenant
            USING ERRCODE = 'insufficient_privilege',
                  HINT = 'Add the membership with tenancy.add_member().';
    END IF;
    RETURN tenancy.set_tenant(k, is_local);
END
$$;
COMMENT ON FUNCTION tenancy.set_tenant_as(text, text, boolean) IS 'set the current tenant for an acting user; 42501 unless the user is a member';
REVOKE EXECUTE ON FUNCTION
    tenancy.add_member(text, text, text),
    tenancy.remove_member(text, text),
    tenancy.create_personal_tenants(regclass, name, name, regclass[], name[], text)
FROM PUBLIC;
GRANT EXECUTE ON FUNCTION tenancy.set_tenant_as(text, text, boolean) TO PUBLIC;

-- tenancy--0.1--0.2.sql: upgrade from the released 0.1 to 0.2 (unreleased,
-- editable until 0.2 is released).  Every change to the SQL sources
-- (src/*.sql) since v0.1 is written here as well, so that ALTER EXTENSION
-- tenancy UPDATE gives what a fresh install of 0.2 gives (test/upgrade.sh
-- compares the two).  Read the database's key type from the registry
-- (pg_attribute of tenancy.tenants.id), never from tenancy.tenant_type.

\echo Use "ALTER EXTENSION tenancy UPDATE TO '0.2'" to load this file. \quit

------------------------------------------------------------------------------
-- Bindings a role cannot override (src/context.sql)
------------------------------------------------------------------------------

-- The bindings, recorded by the extension: a bound role's sessions get
-- this tenant and no other (context.c refuses any other, and clearing, for
-- the role itself), whatever the role does to its own settings.
CREATE TABLE tenancy.role_bindings (
    role regrole PRIMARY KEY,
    tenant text NOT NULL
);
COMMENT ON TABLE tenancy.role_bindings IS 'roles bound to a tenant in this database (bind_role()); read by the tenant_id check';
REVOKE ALL ON TABLE tenancy.role_bindings FROM PUBLIC;
SELECT pg_catalog.pg_extension_config_dump('tenancy.role_bindings', '');
CREATE TRIGGER role_bindings_changed
    AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON tenancy.role_bindings
    FOR EACH STATEMENT EXECUTE FUNCTION tenancy.registry_changed();

-- squawk: ignore require-lock-timeout: ALTER ROLE ... SET locks no table, and bind_role() runs this text itself (SET lines would change its caller's session)
-- squawk: ignore require-statement-timeout: as above
CREATE OR REPLACE FUNCTION tenancy.bind_role_sql(role regrole, tenant text DEFAULT NULL) RETURNS text
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    k text := CASE WHEN tenant IS NULL THEN tenancy.implicit_tenant() ELSE tenancy.tenant_key(tenant) END;
    rolname name := (SELECT r.rolname FROM pg_roles r WHERE r.oid = role);
    stmt text := '';
BEGIN
    IF k IS NULL THEN
        RAISE EXCEPTION 'no tenant given and no implicit tenant is set'
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = 'Call tenancy.set_implicit_tenant() first, or name the tenant.';
    END IF;
    -- Role settings are applied before database settings: bind the key type
    -- at the same level, ahead of the key, so the key is parsed with it.
    IF current_setting('tenancy.tenant_type') <> 'uuid' THEN
        stmt := format('ALTER ROLE %I IN DATABASE %I SET tenancy.tenant_type = %L;' || chr(10),
                       rolname, current_database(), current_setting('tenancy.tenant_type'));
    END IF;
    -- The binding first: the ALTER ROLE below is then checked against it.
    RETURN format('INSERT INTO tenancy.role_bindings (role, tenant) VALUES (%L, %L)'
                  ' ON CONFLICT (role) DO UPDATE SET tenant = excluded.tenant;' || chr(10),
                  role::text, k)
        || stmt || format('ALTER ROLE %I IN DATABASE %I SET tenancy.tenant_id = %L;',
                          rolname, current_database(), k);
END
$$;
COMMENT ON FUNCTION tenancy.bind_role_sql(regrole, text) IS 'the statements bind_role() would run (the binding, then the ALTER ROLE defaults)';

CREATE OR REPLACE FUNCTION tenancy.unbind_role(role regrole) RETURNS text
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    stmt text := format('DELETE FROM tenancy.role_bindings WHERE role = %L::pg_catalog.regrole;' || chr(10)
                        || 'ALTER ROLE %I IN DATABASE %I RESET tenancy.tenant_id;',
                        role::text,
                        (SELECT r.rolname FROM pg_roles r WHERE r.oid = role), current_database());
BEGIN
    -- plpgsql_check: VOLATILE: ALTER ROLE.
    EXECUTE stmt;
    RETURN stmt;
END
$$;

-- Signed tenant tokens (src/token.sql).
CREATE FUNCTION tenancy.set_tenant_token(token text, is_local boolean DEFAULT true) RETURNS text
    AS 'MODULE_PATHNAME', 'tenancy_set_tenant_token'
    LANGUAGE C VOLATILE PARALLEL UNSAFE;
COMMENT ON FUNCTION tenancy.set_tenant_token(text, boolean) IS 'verify a signed tenant token (JWT) and set the tenant from its claim, for the transaction (default) or the session; returns the key';

CREATE FUNCTION tenancy.current_user_key() RETURNS text
    AS 'MODULE_PATHNAME', 'tenancy_current_user_key'
    LANGUAGE C STABLE PARALLEL SAFE;
COMMENT ON FUNCTION tenancy.current_user_key() IS 'sub claim of the tenant token that set the current tenant; NULL otherwise';

------------------------------------------------------------------------------
-- issue 17: staged modes and shadow counters on Citus (src/rls.sql,
-- src/verify.sql, src/citus_shadow.sql)
------------------------------------------------------------------------------

-- On a Citus table the implicit-tenant test is a plain call: Citus cannot
-- propagate a policy holding a sub-select to the shards ("unexpected
-- non-SELECT command in SubLink"), and on each shard the call is as cheap,
-- being evaluated only for the rows whose tenant is NULL.
CREATE FUNCTION tenancy.rls_citus_distributed(tbl regclass) RETURNS boolean
    AS 'MODULE_PATHNAME', 'tenancy_rls_citus_distributed'
    LANGUAGE C STABLE STRICT PARALLEL SAFE;
COMMENT ON FUNCTION tenancy.rls_citus_distributed(regclass) IS 'true when Citus lists the table in its metadata on this node (distributed, reference or Citus-local); false without Citus';

CREATE OR REPLACE FUNCTION tenancy.rls_legacy_stmts(qualified text, column_name name, roles text, mode text)
RETURNS text[]
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT CASE WHEN mode = 'migrating' THEN ARRAY[
        format('CREATE POLICY tenancy_policy_legacy_read ON %s AS PERMISSIVE FOR SELECT TO %s USING (%I IS NULL)',
               qualified, roles, column_name),
        format('CREATE POLICY tenancy_policy_legacy_update ON %s AS PERMISSIVE FOR UPDATE TO %s USING (%I IS NULL AND %s) WITH CHECK (%I IS NULL AND %s)',
               qualified, roles, column_name, imp, column_name, imp),
        format('CREATE POLICY tenancy_policy_legacy_delete ON %s AS PERMISSIVE FOR DELETE TO %s USING (%I IS NULL AND %s)',
               qualified, roles, column_name, imp)]
    ELSE '{}'::text[] END
      FROM (SELECT CASE WHEN tenancy.rls_citus_distributed(qualified::regclass)
                        THEN 'tenancy.is_implicit_tenant()'
                        ELSE '(SELECT tenancy.is_implicit_tenant())' END AS imp) i;
$$;

-- verify(): null_tenant and cross_tenant_reference counted shard by shard on Citus.
CREATE OR REPLACE FUNCTION tenancy.verify_null_tenant(rel regclass, tenant_col name, max_rows bigint)
RETURNS TABLE (check_name text, relation regclass, status text, rows_affected bigint,
               detail text, fix text)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
SET row_security = off
AS $$
#variable_conflict use_column
DECLARE
    lim     text := coalesce(max_rows::text, 'ALL');
    n       bigint;
    atleast text;
BEGIN
    relation := rel;
    n := CASE WHEN tenancy.rls_citus_distributed(rel)   -- on Citus: shard by shard (citus_shadow.sql)
              THEN tenancy.citus_null_tenants(rel, tenant_col, lim, max_rows)
              ELSE (tenancy.table_query(rel, NULL,
                        format('SELECT count(*) FROM (SELECT 1 FROM %s WHERE %I IS NULL LIMIT %s) s', rel, tenant_col, lim)))[1]::bigint END;
    atleast := CASE WHEN n = max_rows THEN 'at least ' ELSE '' END;
    check_name := 'null_tenant'; rows_affected := n;
    IF n > 0 THEN
        status := 'failure';
        detail := format('%s%s rows have no tenant: policies hide them and NOT NULL cannot be enforced; fill them with tenancy.backfill() or an UPDATE',
                         atleast, n);
        fix := format('CALL tenancy.backfill(%L);', rel::text);
    ELSE
        status := 'ok'; detail := 'every row has a tenant'; fix := NULL;
    END IF;
    RETURN NEXT;
END
$$;

CREATE OR REPLACE FUNCTION tenancy.verify_cross_tenant_reference(rel regclass, tenant_col name, tenant_type oid, max_rows bigint, conflicted text[])
RETURNS TABLE (check_name text, relation regclass, status text, rows_affected bigint,
               detail text, fix text)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
SET row_security = off
AS $$
#variable_conflict use_column
DECLARE
    lim     text := coalesce(max_rows::text, 'ALL');
    n       bigint;
    cnt     bigint;
    txt     text;
    txt2    text;
    cond    text;
    atleast text;
    bad     integer;
    f       record;
BEGIN
    relation := rel;
    check_name := 'cross_tenant_reference'; bad := 0; cnt := 0;
    -- (keys declared on partitions count the rows of their partition)
    FOR f IN
        SELECT c.conname, c.conrelid AS child, c.partition, c.confrelid AS parent, pt.column_name AS pcol,
               pa.atttypid AS ptype,
               (SELECT string_agg(format('x.%I = p.%I', k.ck, k.pk), ' AND ' ORDER BY k.i)
                FROM unnest(c.cols, c.refcols) WITH ORDINALITY AS k(ck, pk, i)) AS joincond
        FROM tenancy.foreign_keys(rel) c
        JOIN tenancy.tables pt ON pt.relation = c.confrelid
        JOIN pg_attribute pa ON pa.attrelid = c.confrelid AND pa.attname = pt.column_name
                            AND pa.attnum > 0 AND NOT pa.attisdropped
    LOOP
        cnt := cnt + 1;
        relation := f.child;
        cond := CASE WHEN f.ptype = tenant_type THEN format('x.%I <> p.%I', tenant_col, f.pcol)
                     ELSE format('x.%I::text <> p.%I::text', tenant_col, f.pcol) END;
        -- Under a LIMIT the planner bets on a nested loop that finds the
        -- first rows early; with few or no violations that probes the
        -- parent once per child row.  A hash join reads each table once.
        txt := current_setting('enable_nestloop');
        PERFORM set_config('enable_nestloop', 'off', true);
        txt2 := format('SELECT count(*) FROM (SELECT 1 FROM %s x JOIN %s p ON %s WHERE %s LIMIT %s) s',
                       f.child, f.parent, f.joincond, cond, lim);
        BEGIN
            IF tenancy.rls_citus_distributed(f.child) THEN
                -- on Citus: each shard of the child joined with the shard
                -- of the parent beside it (colocated, or a reference table)
                n := tenancy.citus_cross_tenant_references(f.child, f.parent, f.joincond, cond, lim, max_rows);
            ELSE
                n := (tenancy.table_query(f.child, NULL, txt2))[1]::bigint;
            END IF;
        EXCEPTION WHEN insufficient_privilege THEN
            BEGIN
                IF tenancy.rls_citus_distributed(f.child) THEN
                    -- the shard counts ran as the least privileged already
                    RAISE;
                END IF;
                n := (tenancy.table_query(f.parent, NULL, txt2))[1]::bigint;
            EXCEPTION WHEN insufficient_privilege THEN
                n := NULL; txt2 := SQLERRM;
            END;
        END;
        PERFORM set_config('enable_nestloop', txt, true);
        IF n IS NULL THEN
            bad := bad + 1;
            status := 'warning'; rows_affected := NULL;
            detail := format('cannot count the references through %I: neither the owner of %s nor the owner of %s can read both tables (%s)',
                             f.conname, f.child, f.parent, txt2);
            fix := format('GRANT SELECT ON %s TO %I;', f.parent,
                          (SELECT pg_get_userbyid(cl.relowner) FROM pg_class cl WHERE cl.oid = f.child));
            IF txt2 LIKE 'statement reads tables of owners that do not share their privileges%' THEN
                fix := NULL;    -- no role may read both without lending one owner's rights to the other's code
            END IF;
            RETURN NEXT;
        ELSIF n > 0 THEN
            bad := bad + 1;
            atleast := CASE WHEN n = max_rows THEN 'at least ' ELSE '' END;
            status := 'failure'; rows_affected := n;
            detail := format('%s%s rows %sreference through %I a row of %s that belongs to another tenant: once enforced, the reference dangles; the suggested fix gives each row the tenant of its parent (review it)',
                             atleast, n, CASE WHEN f.partition IS NOT NULL THEN format('of partition %s ', f.partition) ELSE '' END,
                             f.conname, f.parent);
            fix := format('UPDATE %s x SET %I = p.%I FROM %s p WHERE %s AND %s;',
                          f.child, tenant_col, f.pcol, f.parent, f.joincond, cond);
            IF f.conname = ANY (conflicted) THEN
                -- the parents disagree for some rows (conflicting_parents)
                detail := format('%s%s rows %sreference through %I a row of %s that belongs to another tenant: once enforced, the reference dangles; for some of these rows the parents disagree with each other (see conflicting_parents), so no fix is suggested: decide those rows first',
                                 atleast, n, CASE WHEN f.partition IS NOT NULL THEN format('of partition %s ', f.partition) ELSE '' END,
                                 f.conname, f.parent);
                fix := NULL;
            END IF;
            RETURN NEXT;
        END IF;
    END LOOP;
    relation := rel;
    IF bad = 0 THEN
        status := 'ok'; rows_affected := 0; fix := NULL;
        detail := CASE WHEN cnt = 0 THEN 'no foreign key to a registered table'
                       ELSE format('%s foreign keys to registered tables, every reference within one tenant', cnt) END;
        RETURN NEXT;
    END IF;
END
$$;

-- verify(): shadow_divergence reads every node's counters on Citus.
CREATE OR REPLACE FUNCTION tenancy.verify_shadow_divergence(rel regclass)
RETURNS TABLE (check_name text, relation regclass, status text, rows_affected bigint,
               detail text, fix text)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
SET row_security = off
AS $$
#variable_conflict use_column
DECLARE
    n bigint;
    m bigint;
BEGIN
    relation := rel;
    check_name := 'shadow_divergence'; rows_affected := NULL; fix := NULL;
    BEGIN
        SELECT coalesce(sum(s.rows_hidden), 0)::bigint, coalesce(sum(s.writes_refused), 0)::bigint
          INTO n, m FROM tenancy.shadow_stats s WHERE s.relation = rel;
        IF tenancy.rls_citus_distributed(rel) THEN
            -- on Citus the workers count the shards (citus_shadow.sql)
            SELECT coalesce(sum(s.rows_hidden), 0)::bigint, coalesce(sum(s.writes_refused), 0)::bigint
              INTO n, m FROM tenancy.cluster_shadow_stats s WHERE s.relation = rel;
        END IF;
        rows_affected := n + m;
        IF n + m > 0 THEN
            status := 'failure';
            detail := format('shadow mode counted %s rows the policy would hide and %s writes it would refuse: find the code path that runs without the right tenant, fix it, then reset the counters',
                             n, m);
            fix := format('SELECT tenancy.%s(%L);',
                          CASE WHEN tenancy.rls_citus_distributed(rel) THEN 'reset_cluster_shadow_stats'
                               ELSE 'reset_shadow_stats' END, rel::text);
        ELSIF (SELECT d.rows_dropped FROM tenancy.shadow_stats_dropped() d) > 0 THEN
            -- the counters were full: this table's divergences may be missing
            status := 'failure'; rows_affected := NULL;
            detail := format('shadow counters incomplete: %s rows of tables past tenancy.shadow_max_tables were not counted, so divergences may be missing: raise tenancy.shadow_max_tables (restart), reset the counters and run the workload again',
                             (SELECT d.rows_dropped FROM tenancy.shadow_stats_dropped() d));
            fix := 'SELECT tenancy.reset_shadow_stats();';
        ELSE
            status := 'ok'; detail := 'no shadow divergence counted';
        END IF;
    EXCEPTION
        WHEN object_not_in_prerequisite_state      -- not preloaded: no counters
          OR external_routine_exception THEN          -- a Citus worker did not answer
            status := 'warning'; rows_affected := NULL;
            detail := format('shadow counters unavailable: %s', SQLERRM);
            fix := NULL;
    END;
    RETURN NEXT;
END
$$;

------------------------------------------------------------------------------
-- On a Citus cluster, the shards of a distributed table live on the
-- workers: what a query on the coordinator reads of them went through each
-- worker's copy of the policy, as the connecting role.  Counts that must
-- see every row (unmigrated rows, cross-tenant references) therefore run on
-- each shard through tenancy.table_query() on its worker (as the owner,
-- without FORCE ROW LEVEL SECURITY, as on one node), and are summed here.
-- Shadow-mode divergences are counted by the workers (citus_shadow.c) and
-- gathered here per table.  Citus's functions are called through dynamic
-- SQL: they do not exist where Citus is not installed.
------------------------------------------------------------------------------

-- Sums, over the shards of rel, of the bigint columns of the one-row query
-- tpl run on each shard.  tpl is a format() string: %1$s is rel's shard,
-- %2$s the colocated shard of other (a literal % is written %%).  Each
-- shard is counted once, on its first active placement.  Runs as the
-- caller, and table_query() on the worker as the less privileged of the
-- caller and the shards' owners: executable by PUBLIC (as are the verify()
-- helpers below, which only count), like table_query() itself.
CREATE FUNCTION tenancy.citus_shard_sums(rel regclass, tpl text, other regclass DEFAULT NULL)
RETURNS bigint[]
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    cmd text;
    sums bigint[];
    v bigint[];
    shard bigint;
    ok boolean;
    res text;
    host text;
    port integer;
BEGIN
    IF NOT tenancy.rls_citus_distributed(rel) THEN
        RAISE EXCEPTION 'table % is not a Citus table', rel
            USING ERRCODE = 'wrong_object_type',
                  HINT = 'Count it with an ordinary query.';
    END IF;
    -- Citus formats cmd with the shard names (%1$L, %2$L); the worker then
    -- formats tpl with them as regclass.
    cmd := 'SELECT pg_catalog.array_to_string(tenancy.table_query(%1$L::pg_catalog.regclass, NULL, '
        || 'pg_catalog.format(' || replace(quote_literal(tpl), '%', '%%') || ', %1$L::pg_catalog.regclass, '
        || CASE WHEN other IS NULL THEN '%1$L' ELSE '%2$L' END || '::pg_catalog.regclass)), '','')';
    -- plpgsql_check: dynamic: Citus's functions are absent where Citus is not installed; only names go in, through %I.
    -- plpgsql_check: VOLATILE: the commands run on the workers.
    FOR shard, ok, res, host, port IN EXECUTE CASE WHEN other IS NULL THEN
        format('SELECT DISTINCT ON (p.shardid) p.shardid, p.success, p.result, p.nodename, p.nodeport
                  FROM pg_catalog.%I($1, $3) p ORDER BY p.shardid, p.nodename, p.nodeport',
               'run_command_on_placements')
      ELSE
        format('SELECT DISTINCT ON (p.shardid1) p.shardid1, p.success, p.result, p.nodename, p.nodeport
                  FROM pg_catalog.%I($1, $2, $3) p ORDER BY p.shardid1, p.nodename, p.nodeport',
               'run_command_on_colocated_placements')
      END USING rel, other, cmd
    LOOP
        IF NOT ok THEN
            RAISE EXCEPTION 'cannot count shard % of % on %:%', shard, rel, host, port
                USING ERRCODE = 'external_routine_exception',
                      DETAIL = res;
        END IF;
        v := string_to_array(res, ',')::bigint[];
        sums := CASE WHEN sums IS NULL THEN v
                     ELSE ARRAY(SELECT a + b FROM unnest(sums, v) u(a, b)) END;
    END LOOP;
    RETURN sums;
END
$$;
COMMENT ON FUNCTION tenancy.citus_shard_sums(regclass, text, regclass) IS 'sums over the shards of a Citus table of a one-row counting query run on each shard as its owner (tenancy.table_query() on the worker)';

-- The shadow counters of every node, per table: on the coordinator, the
-- workers' counts of the shards (under the distributed table each worker's
-- copy of the policy names) added to its own.
CREATE FUNCTION tenancy.read_cluster_shadow_stats(
    OUT relation regclass, OUT rows_checked bigint, OUT rows_hidden bigint,
    OUT writes_refused bigint, OUT last_divergence timestamptz, OUT nodes integer)
RETURNS SETOF record
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    ok boolean;
    res text;
    host text;
    port integer;
    stats jsonb;
BEGIN
    stats := (SELECT coalesce(jsonb_agg(jsonb_build_object(
                      'rel', format('%I.%I', n.nspname, c.relname), 'checked', s.rows_checked,
                      'hidden', s.rows_hidden, 'refused', s.writes_refused, 'last', s.last_divergence)), '[]'::jsonb)
                FROM tenancy.read_shadow_stats() s
                JOIN pg_class c ON c.oid = s.relation JOIN pg_namespace n ON n.oid = c.relnamespace);
    IF to_regclass('pg_catalog.pg_dist_node') IS NOT NULL THEN
        -- plpgsql_check: dynamic: Citus's function is absent where Citus is not installed; a constant command.
        FOR host, port, ok, res IN EXECUTE format('SELECT nodename, nodeport, success, result FROM pg_catalog.%I($1)',
                                                  'run_command_on_workers') USING
                    $q$SELECT coalesce(pg_catalog.jsonb_agg(pg_catalog.jsonb_build_object(
                          'rel', pg_catalog.format('%I.%I', n.nspname, c.relname), 'checked', s.rows_checked,
                          'hidden', s.rows_hidden, 'refused', s.writes_refused, 'last', s.last_divergence)), '[]')
                        FROM tenancy.read_shadow_stats() s
                        JOIN pg_catalog.pg_class c ON c.oid OPERATOR(pg_catalog.=) s.relation
                        JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) c.relnamespace$q$ LOOP
            IF NOT ok THEN
                RAISE EXCEPTION 'cannot read the shadow counters of worker %:%', host, port
                    USING ERRCODE = 'external_routine_exception',
                          DETAIL = res;
            END IF;
            stats := stats || res::jsonb;
        END LOOP;
    END IF;
    RETURN QUERY
    SELECT to_regclass(e->>'rel'), sum((e->>'checked')::bigint)::bigint, sum((e->>'hidden')::bigint)::bigint,
           sum((e->>'refused')::bigint)::bigint, max((e->>'last')::timestamptz), count(*)::integer
      FROM jsonb_array_elements(stats) e
     WHERE to_regclass(e->>'rel') IS NOT NULL
     GROUP BY 1;
END
$$;

CREATE VIEW tenancy.cluster_shadow_stats AS
    SELECT relation, rows_checked, rows_hidden, writes_refused, last_divergence, nodes
      FROM tenancy.read_cluster_shadow_stats();
COMMENT ON VIEW tenancy.cluster_shadow_stats IS 'tenancy.shadow_stats of every node of a Citus cluster (this node and its workers), summed per table: distributed tables count on the workers that hold their shards';

CREATE FUNCTION tenancy.reset_cluster_shadow_stats(tbl regclass DEFAULT NULL) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    ok boolean;
    res text;
    host text;
    port integer;
BEGIN
    PERFORM tenancy.reset_shadow_stats(tbl);
    IF to_regclass('pg_catalog.pg_dist_node') IS NOT NULL THEN
        -- plpgsql_check: dynamic: Citus's function is absent where Citus is not installed; the name goes through %I/%L.
        FOR host, port, ok, res IN EXECUTE format('SELECT nodename, nodeport, success, result FROM pg_catalog.%I($1)',
                                                  'run_command_on_workers') USING
                    format('SELECT tenancy.reset_shadow_stats(%s)',
                           CASE WHEN tbl IS NULL THEN 'NULL'
                                ELSE format('%L::pg_catalog.regclass',
                                            (SELECT format('%I.%I', n.nspname, c.relname)
                                               FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                                              WHERE c.oid = tbl)) END) LOOP
            IF NOT ok THEN
                RAISE EXCEPTION 'cannot reset the shadow counters of worker %:%', host, port
                    USING ERRCODE = 'external_routine_exception',
                          DETAIL = res;
            END IF;
        END LOOP;
    END IF;
END
$$;
COMMENT ON FUNCTION tenancy.reset_cluster_shadow_stats(regclass) IS 'reset the shadow counters of a table, or of every table, on this node and every Citus worker';

-- verify()'s null_tenant on a Citus table: rows whose tenant is NULL, at
-- most lim ('ALL' or a number) per shard, at most max_rows in all.
CREATE FUNCTION tenancy.citus_null_tenants(rel regclass, tenant_col name, lim text, max_rows bigint)
RETURNS bigint
LANGUAGE sql SET search_path = pg_catalog, pg_temp AS $$
    SELECT least((tenancy.citus_shard_sums(rel,
                     format('SELECT count(*) FROM (SELECT 1 FROM %%1$s WHERE %s IS NULL LIMIT %s) s',
                            replace(quote_ident(tenant_col), '%', '%%'), lim)))[1], max_rows);
$$;
COMMENT ON FUNCTION tenancy.citus_null_tenants(regclass, name, text, bigint) IS 'verify() check null_tenant on a Citus table: rows without a tenant, counted on each shard';

-- verify()'s cross_tenant_reference on a Citus child table: its references
-- through one foreign key (joincond, with x the child and p the parent)
-- whose tenants differ (cond), counted shard by shard.  Citus allows a
-- foreign key of a distributed table only to a colocated distributed table
-- (then each child shard is joined with the parent shard beside it) or to
-- a reference table (then with the parent's shard on the same node).
CREATE FUNCTION tenancy.citus_cross_tenant_references(child regclass, parent regclass, joincond text,
                                                      cond text, lim text, max_rows bigint)
RETURNS bigint
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    colocated boolean;
    refshard text;
    body text := replace(format(' p ON %s WHERE %s LIMIT %s) s', joincond, cond, lim), '%', '%%');
BEGIN
    IF NOT tenancy.rls_citus_distributed(child) OR NOT tenancy.rls_citus_distributed(parent) THEN
        RAISE EXCEPTION 'tables % and % are not both Citus tables', child, parent
            USING ERRCODE = 'wrong_object_type',
                  HINT = 'Count the references with an ordinary query.';
    END IF;
    -- plpgsql_check: dynamic: Citus's catalog and functions are absent where Citus is not installed; only names go in, through %I.
    EXECUTE format('SELECT pg_catalog.%I($1, $2)', 'distributed_tables_colocated') INTO colocated USING child, parent;
    IF colocated THEN
        RETURN least((tenancy.citus_shard_sums(child,
                        'SELECT count(*) FROM (SELECT 1 FROM %1$s x JOIN %2$s' || body, parent))[1], max_rows);
    END IF;
    -- plpgsql_check: as above; the shard name is quoted by Citus's shard_name().
    EXECUTE format($f$SELECT pg_catalog.shard_name(d.logicalrelid, s.shardid)
                        FROM pg_catalog.%I d JOIN pg_catalog.%I s USING (logicalrelid)
                       WHERE d.logicalrelid = $1 AND d.partmethod = 'n' AND d.repmodel = 't'$f$,
                   'pg_dist_partition', 'pg_dist_shard')
        INTO refshard USING parent;
    IF refshard IS NULL THEN
        RAISE EXCEPTION 'table % references %, which is neither colocated with it nor a reference table', child, parent
            USING ERRCODE = 'feature_not_supported',
                  HINT = 'Citus allows such a foreign key only to a colocated distributed table or a reference table.';
    END IF;
    RETURN least((tenancy.citus_shard_sums(child,
                    'SELECT count(*) FROM (SELECT 1 FROM %1$s x JOIN ' || replace(refshard, '%', '%%') || body))[1],
                 max_rows);
END
$$;
COMMENT ON FUNCTION tenancy.citus_cross_tenant_references(regclass, regclass, text, text, text, bigint) IS 'verify() check cross_tenant_reference on a Citus table: the references of one foreign key between tenants, counted on each shard';

REVOKE ALL ON TABLE tenancy.cluster_shadow_stats FROM PUBLIC;
REVOKE ALL ON FUNCTION tenancy.read_cluster_shadow_stats() FROM PUBLIC;
REVOKE ALL ON FUNCTION tenancy.reset_cluster_shadow_stats(regclass) FROM PUBLIC;
GRANT SELECT ON TABLE tenancy.cluster_shadow_stats TO pg_read_all_stats;
GRANT EXECUTE ON FUNCTION tenancy.read_cluster_shadow_stats() TO pg_read_all_stats;
-- issue 18: ro-paths (what each path sees, dashboards): src/path_stats.sql and src/report.sql
-- src/path_stats.sql: what each code path sees (C: path_stats.c).  The
-- shadow-mode counts split by path (legacy: no tenant, or a tenant from a
-- default such as a role binding; new: set_tenant(), a token, SET), role and
-- tenant, and a bounded sample of recent divergences with their query ids.

CREATE FUNCTION tenancy.read_path_stats(
    OUT relation regclass, OUT path text, OUT role regrole, OUT xacts bigint,
    OUT reads bigint, OUT rows_read bigint, OUT rows_hidden bigint,
    OUT rows_written bigint, OUT writes_refused bigint, OUT last_divergence timestamptz)
RETURNS SETOF record
    AS 'MODULE_PATHNAME', 'tenancy_read_path_stats'
    LANGUAGE C VOLATILE;

CREATE VIEW tenancy.path_stats AS
    SELECT relation, path, role, xacts, reads, rows_read, rows_hidden,
           rows_written, writes_refused, last_divergence
      FROM tenancy.read_path_stats()
     WHERE relation IS NOT NULL;
COMMENT ON VIEW tenancy.path_stats IS 'shadow-mode counts per table, code path (legacy/new) and role of this database (needs shared_preload_libraries)';

CREATE VIEW tenancy.path_activity AS
    SELECT path, xacts, rows_read, rows_hidden, rows_written, writes_refused, last_divergence
      FROM tenancy.read_path_stats()
     WHERE relation IS NULL;
COMMENT ON VIEW tenancy.path_activity IS 'per code path (legacy/new) of this database: transactions, rows read and written, rows enforce mode would hide, writes it would refuse, over the tables in shadow mode (needs shared_preload_libraries)';

CREATE FUNCTION tenancy.read_tenant_path_stats(
    OUT path text, OUT tenant text, OUT xacts bigint, OUT rows_read bigint, OUT rows_hidden bigint, OUT rows_written bigint,
    OUT writes_refused bigint, OUT score bigint, OUT last_divergence timestamptz)
RETURNS SETOF record
    AS 'MODULE_PATHNAME', 'tenancy_read_tenant_path_stats'
    LANGUAGE C VOLATILE;

CREATE VIEW tenancy.tenant_path_stats AS
    SELECT path, tenant, xacts, rows_read, rows_hidden, rows_written,
           writes_refused, score, last_divergence
      FROM tenancy.read_tenant_path_stats();
COMMENT ON VIEW tenancy.tenant_path_stats IS 'shadow-mode counts per code path and current tenant (NULL: none) of this database: the tenancy.path_stats_tenants highest scores (needs shared_preload_libraries)';

CREATE FUNCTION tenancy.read_path_divergences(
    OUT seq bigint, OUT at timestamptz, OUT relation regclass, OUT operation text,
    OUT path text, OUT role regrole, OUT tenant text, OUT row_tenant text,
    OUT query_id bigint)
RETURNS SETOF record
    AS 'MODULE_PATHNAME', 'tenancy_read_path_divergences'
    LANGUAGE C VOLATILE;

CREATE VIEW tenancy.path_divergences AS
    SELECT seq, at, relation, operation, path, role, tenant, row_tenant, query_id
      FROM tenancy.read_path_divergences();
COMMENT ON VIEW tenancy.path_divergences IS 'recent shadow-mode divergences of this database (the first of each statement per table, path, role and tenant), oldest first; query_id as in pg_stat_statements (needs shared_preload_libraries)';

CREATE FUNCTION tenancy.path_stats_dropped(
    OUT rows_dropped bigint, OUT divergences_dropped bigint, OUT tenants_evicted bigint,
    OUT tenant_rows_evicted bigint, OUT tenant_divergences_evicted bigint,
    OUT samples_taken bigint, OUT samples_overwritten bigint)
    AS 'MODULE_PATHNAME', 'tenancy_path_stats_dropped'
    LANGUAGE C VOLATILE;
COMMENT ON FUNCTION tenancy.path_stats_dropped() IS 'cluster-wide: what the bounded path counters could not keep (rows and divergences of a full tenancy.path_stats_max hash, tenants evicted with their counts, divergence samples overwritten)';

CREATE FUNCTION tenancy.reset_path_stats() RETURNS void
    AS 'MODULE_PATHNAME', 'tenancy_reset_path_stats'
    LANGUAGE C VOLATILE;
COMMENT ON FUNCTION tenancy.reset_path_stats() IS 'reset the path counters, tenants and divergence samples of this database, and what path_stats_dropped() shows';

-- Tenant keys and role names: not for PUBLIC.  pg_read_all_stats (and so
-- pg_monitor) reads; resetting is for superusers and whom they grant it.
REVOKE ALL ON TABLE tenancy.path_stats, tenancy.path_activity,
    tenancy.tenant_path_stats, tenancy.path_divergences FROM PUBLIC;
REVOKE ALL ON FUNCTION tenancy.read_path_stats(), tenancy.read_tenant_path_stats(),
    tenancy.read_path_divergences(), tenancy.path_stats_dropped(),
    tenancy.reset_path_stats() FROM PUBLIC;
GRANT SELECT ON TABLE tenancy.path_stats, tenancy.path_activity,
    tenancy.tenant_path_stats, tenancy.path_divergences TO pg_read_all_stats;
GRANT EXECUTE ON FUNCTION tenancy.read_path_stats(), tenancy.read_tenant_path_stats(),
    tenancy.read_path_divergences(), tenancy.path_stats_dropped() TO pg_read_all_stats;

-- src/report.sql: the migration's state on one screen: a view for the
-- dashboards (monitoring/postgres_exporter.yml) and tenancy.report() for
-- psql users.  Divergences come from the path counters (path_stats.sql).

-- Per registered table: stage, row security mode, rollout, what is left to
-- migrate, the backfill, and the shadow divergences by path.  The rollout
-- column stays NULL until per-tenant rollout records one.
CREATE VIEW tenancy.migration_overview AS
SELECT t.relation,
       t.stage,
       r.mode,
       NULL::text AS rollout,
       s.unmigrated,
       s.total_rows,
       s.percent_migrated,
       s.rate_per_s AS migrated_per_s,
       b.state AS backfill_state,
       b.percent AS backfill_percent,
       b.rows_done AS backfill_rows_done,
       b.rows_per_s AS backfill_rows_per_s,
       coalesce(d.legacy_hidden, 0) AS legacy_rows_hidden,
       coalesce(d.legacy_refused, 0) AS legacy_writes_refused,
       coalesce(d.new_hidden, 0) AS new_rows_hidden,
       coalesce(d.new_refused, 0) AS new_writes_refused,
       GREATEST(t.registered_at, r.enabled_at, c.last_step) AS last_change
  FROM tenancy.tables t
  LEFT JOIN tenancy.rls_tables r ON r.relation OPERATOR(pg_catalog.=) t.relation
  LEFT JOIN tenancy.migration_status s ON s.relation OPERATOR(pg_catalog.=) t.relation
  LEFT JOIN LATERAL (
        SELECT p.state, p.percent, p.rows_done, p.rows_per_s
          FROM tenancy.backfill_progress p
         WHERE p.relation OPERATOR(pg_catalog.=) t.relation
         ORDER BY p.id DESC LIMIT 1) b ON true
  LEFT JOIN LATERAL (
        SELECT max(GREATEST(l.done_at, l.undone_at)) AS last_step
          FROM tenancy.contract_log l
         WHERE l.relation OPERATOR(pg_catalog.=) t.relation) c ON true
  LEFT JOIN LATERAL (
        SELECT sum(p.rows_hidden) FILTER (WHERE p.path OPERATOR(pg_catalog.=) 'legacy')::bigint AS legacy_hidden,
               sum(p.writes_refused) FILTER (WHERE p.path OPERATOR(pg_catalog.=) 'legacy')::bigint AS legacy_refused,
               sum(p.rows_hidden) FILTER (WHERE p.path OPERATOR(pg_catalog.=) 'new')::bigint AS new_hidden,
               sum(p.writes_refused) FILTER (WHERE p.path OPERATOR(pg_catalog.=) 'new')::bigint AS new_refused
          FROM tenancy.read_path_stats() p
         WHERE p.relation OPERATOR(pg_catalog.=) t.relation) d ON true;
COMMENT ON VIEW tenancy.migration_overview IS 'per registered table: stage, mode, rollout, unmigrated rows, backfill, shadow divergences by path, last change (needs shared_preload_libraries)';

CREATE FUNCTION tenancy.report()
RETURNS TABLE (relation regclass, stage text, mode text, rollout text,
               unmigrated bigint, backfill text, legacy_divergences bigint,
               new_divergences bigint, last_change timestamptz)
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT o.relation, o.stage, o.mode, o.rollout, o.unmigrated,
           CASE WHEN o.backfill_state IS NULL THEN NULL
                ELSE o.backfill_state || coalesce(' ' || o.backfill_percent || '%', '') END,
           o.legacy_rows_hidden + o.legacy_writes_refused,
           o.new_rows_hidden + o.new_writes_refused,
           o.last_change
      FROM tenancy.migration_overview o
     ORDER BY o.relation::text COLLATE "C"
$$;
COMMENT ON FUNCTION tenancy.report() IS 'the whole migration on one screen: per table stage, mode, rollout, unmigrated rows, backfill, divergences by path (rows hidden + writes refused), last change';

REVOKE ALL ON TABLE tenancy.migration_overview FROM PUBLIC;
REVOKE ALL ON FUNCTION tenancy.report() FROM PUBLIC;
GRANT SELECT ON TABLE tenancy.migration_overview TO pg_read_all_stats;
GRANT EXECUTE ON FUNCTION tenancy.report() TO pg_read_all_stats;

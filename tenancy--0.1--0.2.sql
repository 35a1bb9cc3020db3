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

-- issue 18: deprecation (src/deprecation.sql, all new objects)

------------------------------------------------------------------------------
-- Deprecation of the legacy path.  A legacy role (bound with bind_role() to
-- the implicit tenant) is first deprecated: each of its transactions is
-- counted in shared memory and writes a WARNING to the server log (never to
-- its client) at most once per tenancy.deprecation_warning_interval.  Once it
-- has not run for tenancy.retire_after it is retired: its binding goes, its
-- sessions must name their tenant (tenancy.require_tenant), and when it was
-- the last role bound to the implicit tenant the tenant columns lose the
-- implicit default (and derived tables their derivation, except those the
-- DBA keeps).  Each step is previewable, recorded in tenancy.contract_log
-- with its undo, and undone by undeprecate_role() / unretire_role().
------------------------------------------------------------------------------

CREATE TABLE tenancy.role_deprecations (
    role           regrole PRIMARY KEY,
    tenant         text NOT NULL,
    deprecated_at  timestamptz NOT NULL DEFAULT pg_catalog.now(),
    deprecated_by  name NOT NULL DEFAULT session_user,
    deprecate_log  bigint,
    retired_at     timestamptz,
    retired_by     name,
    retire_forced  boolean,
    retire_log     bigint[]
);
COMMENT ON TABLE tenancy.role_deprecations IS 'legacy roles deprecated (deprecate_role()) and retired (retire_role()); read by deprecation.c';
REVOKE ALL ON TABLE tenancy.role_deprecations FROM PUBLIC;
SELECT pg_catalog.pg_extension_config_dump('tenancy.role_deprecations', '');
CREATE TRIGGER role_deprecations_changed
    AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON tenancy.role_deprecations
    FOR EACH STATEMENT EXECUTE FUNCTION tenancy.registry_changed();

-- A retired role gets no binding again until unretire_role().
CREATE FUNCTION tenancy.role_bindings_check_retired() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    d record;
BEGIN
    SELECT r.retired_at, r.retired_by INTO d FROM tenancy.role_deprecations r
     WHERE r.role = NEW.role AND r.retired_at IS NOT NULL;
    IF FOUND THEN
        RAISE EXCEPTION 'role "%" is retired from the legacy path', NEW.role
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  DETAIL = format('It was retired at %s by %s: its tenant binding is refused.', d.retired_at, d.retired_by),
                  HINT = 'Set the tenant per request with tenancy.set_tenant(), or undo the retirement with tenancy.unretire_role().';
    END IF;
    RETURN NEW;
END
$$;
CREATE TRIGGER role_bindings_check_retired
    BEFORE INSERT OR UPDATE ON tenancy.role_bindings
    FOR EACH ROW EXECUTE FUNCTION tenancy.role_bindings_check_retired();

-- Counters of this database's deprecated roles (shared memory; empty when
-- tenancy is not preloaded), and since when they count.
CREATE FUNCTION tenancy.deprecation_activity(
    OUT role oid, OUT transactions bigint, OUT warnings bigint,
    OUT last_run timestamptz, OUT last_application_name text,
    OUT last_warning timestamptz, OUT counting_since timestamptz)
RETURNS SETOF record
    AS 'MODULE_PATHNAME', 'tenancy_deprecation_activity'
    LANGUAGE C VOLATILE;
COMMENT ON FUNCTION tenancy.deprecation_activity() IS 'transactions of deprecated roles in this database since the server started (needs shared_preload_libraries)';

CREATE FUNCTION tenancy.deprecation_watch(OUT counting_since timestamptz, OUT retire_after interval)
    AS 'MODULE_PATHNAME', 'tenancy_deprecation_watch'
    LANGUAGE C STABLE;
COMMENT ON FUNCTION tenancy.deprecation_watch() IS 'since when deprecated roles are counted (NULL when not preloaded), and tenancy.retire_after';

CREATE VIEW tenancy.deprecated_roles AS
SELECT d.role, d.tenant, d.deprecated_at, d.deprecated_by,
       coalesce(a.transactions, 0) AS transactions,
       coalesce(a.warnings, 0) AS warnings,
       a.last_run, a.last_application_name, a.last_warning,
       GREATEST(d.deprecated_at, w.counting_since) AS watched_since,
       pg_catalog.now() OPERATOR(pg_catalog.-)
           coalesce(a.last_run, GREATEST(d.deprecated_at, w.counting_since)) AS quiet_for,
       w.retire_after,
       d.retired_at IS NULL AND w.counting_since IS NOT NULL
           AND pg_catalog.now() OPERATOR(pg_catalog.-)
               coalesce(a.last_run, GREATEST(d.deprecated_at, w.counting_since))
               OPERATOR(pg_catalog.>=) w.retire_after AS retirable,
       d.retired_at, d.retired_by, d.retire_forced
  FROM tenancy.role_deprecations d
  CROSS JOIN tenancy.deprecation_watch() w
  LEFT JOIN tenancy.deprecation_activity() a ON a.role OPERATOR(pg_catalog.=) d.role::oid;
COMMENT ON VIEW tenancy.deprecated_roles IS 'deprecated legacy roles: when each last ran, from which application, and whether it may be retired';
REVOKE ALL ON TABLE tenancy.deprecated_roles FROM PUBLIC;
GRANT SELECT ON TABLE tenancy.deprecated_roles TO pg_read_all_stats;

-- The default of a tenant column once the legacy path is retired: the
-- current tenant, and an error for a write that names none.  Executable by
-- PUBLIC: it runs in the writers' INSERTs, and reads nothing.
CREATE FUNCTION tenancy.tenant_required() RETURNS text
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    -- plpgsql_check: STABLE, not IMMUTABLE: an INSERT's planner would fold an IMMUTABLE call, and raise for every row.
    RAISE EXCEPTION 'no tenant is set'
        USING ERRCODE = 'not_null_violation',
              DETAIL = 'The legacy path is retired: the tenant column no longer defaults to the implicit tenant.',
              HINT = 'Set the tenant of the transaction with tenancy.set_tenant(), or write the tenant column.';
END
$$;
COMMENT ON FUNCTION tenancy.tenant_required() IS 'raises: the default of tenant columns after retire_role() refuses a write without a tenant';

-- A comment that stays one in a generated script: each line of text after
-- '-- ' (a name with a line break cannot end the comment and start a
-- statement).
CREATE FUNCTION tenancy.sql_comment(text) RETURNS text
LANGUAGE sql IMMUTABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT '-- ' || regexp_replace($1, '\r\n|[\r\n]', chr(10) || '-- ', 'g');
$$;

-- The role's deprecation, checked: a role bound to the implicit tenant.
CREATE FUNCTION tenancy.deprecation_check(role regrole) RETURNS text
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_variable
DECLARE
    bound text;
    k text := tenancy.implicit_tenant();
BEGIN
    IF role IS NULL THEN
        RAISE EXCEPTION 'role must not be null' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    SELECT b.tenant INTO bound FROM tenancy.role_bindings b WHERE b.role = role;
    IF bound IS NULL THEN
        RAISE EXCEPTION 'role "%" is not bound to a tenant', role
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  DETAIL = 'Only a legacy role, bound with tenancy.bind_role() to the implicit tenant, can be deprecated.',
                  HINT = 'Roles that set their tenant per request are on the new path already.';
    END IF;
    IF k IS NULL OR bound <> k THEN
        RAISE EXCEPTION 'role "%" is bound to tenant "%", not to the implicit tenant', role, bound
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  DETAIL = 'The legacy path is the implicit tenant''s: a role bound to another tenant is a tenant''s own role.',
                  HINT = 'Call tenancy.unbind_role() when that role is no longer needed.';
    END IF;
    RETURN bound;
END
$$;

CREATE FUNCTION tenancy.deprecate_role_sql(role regrole) RETURNS text
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_variable
DECLARE
    bound text := tenancy.deprecation_check(role);
BEGIN
    IF EXISTS (SELECT 1 FROM tenancy.role_deprecations d WHERE d.role = role) THEN
        RETURN '';
    END IF;
    RETURN format('INSERT INTO tenancy.role_deprecations (role, tenant) VALUES (%L, %L);', role::text, bound)
        || chr(10) || tenancy.sql_comment(format('undo: SELECT tenancy.undeprecate_role(%L);', role::text));
END
$$;
COMMENT ON FUNCTION tenancy.deprecate_role_sql(regrole) IS 'what deprecate_role() would do, and how to undo it (empty: already deprecated)';

CREATE FUNCTION tenancy.deprecate_role(role regrole) RETURNS text
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_variable
DECLARE
    stmt text := tenancy.deprecate_role_sql(role);
    bound text := tenancy.deprecation_check(role);
    id bigint;
BEGIN
    IF stmt = '' THEN
        RAISE NOTICE 'role "%" is already deprecated, nothing to do', role;
        RETURN NULL;
    END IF;
    id := tenancy.log_step('tenancy.role_deprecations'::regclass, 'deprecate_role',
                           format('INSERT INTO tenancy.role_deprecations (role, tenant) VALUES (%L, %L)', role::text, bound),
                           format('SELECT tenancy.undeprecate_role(%L)', role::text));
    INSERT INTO tenancy.role_deprecations (role, tenant, deprecate_log) VALUES (role, bound, id);
    RETURN stmt;
END
$$;
COMMENT ON FUNCTION tenancy.deprecate_role(regrole) IS 'deprecate a legacy role bound to the implicit tenant: its transactions are counted and logged (server log only); returns what it did';

CREATE FUNCTION tenancy.undeprecate_role(role regrole) RETURNS text
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_variable
DECLARE
    d tenancy.role_deprecations;
BEGIN
    IF role IS NULL THEN
        RAISE EXCEPTION 'role must not be null' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    SELECT * INTO d FROM tenancy.role_deprecations r WHERE r.role = role;
    IF NOT FOUND THEN
        RAISE NOTICE 'role "%" is not deprecated, nothing to do', role;
        RETURN NULL;
    END IF;
    IF d.retired_at IS NOT NULL THEN
        RAISE EXCEPTION 'role "%" is retired', role
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  DETAIL = format('It was retired at %s by %s.', d.retired_at, d.retired_by),
                  HINT = 'Call tenancy.unretire_role() first.';
    END IF;
    DELETE FROM tenancy.role_deprecations r WHERE r.role = role;
    UPDATE tenancy.contract_log l SET undone_at = now() WHERE l.id = d.deprecate_log AND l.undone_at IS NULL;
    RETURN format('DELETE FROM tenancy.role_deprecations WHERE role = %L::pg_catalog.regrole;', role::text);
END
$$;
COMMENT ON FUNCTION tenancy.undeprecate_role(regrole) IS 'undo deprecate_role() (not once retired: unretire_role() first)';

-- The retirement's steps, in order, each with its undo.  The table steps
-- come only when no other role is still bound to the implicit tenant: they
-- end the legacy path for every table.
CREATE FUNCTION tenancy.retire_role_steps(role regrole, keep_derived regclass[] DEFAULT '{}')
RETURNS TABLE (relation regclass, step text, sql text, undo_sql text)
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_variable
DECLARE
    k text := tenancy.implicit_tenant();
    rolname name := (SELECT r.rolname FROM pg_roles r WHERE r.oid = role);
    db name := current_database();
    bound text;
    t record;
    kept regclass;
    implicit_default text;
BEGIN
    IF role IS NULL THEN
        RAISE EXCEPTION 'role must not be null' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    IF NOT EXISTS (SELECT 1 FROM tenancy.role_deprecations d WHERE d.role = role) THEN
        RAISE EXCEPTION 'role "%" is not deprecated', role
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  DETAIL = 'A role is retired only after it has been deprecated and watched.',
                  HINT = 'Call tenancy.deprecate_role() first.';
    END IF;
    FOREACH kept IN ARRAY coalesce(keep_derived, '{}') LOOP
        IF NOT EXISTS (SELECT 1 FROM tenancy.derived_tenants d WHERE d.relation = kept) THEN
            RAISE EXCEPTION 'table "%" has no derived tenant', kept
                USING ERRCODE = 'invalid_parameter_value',
                      HINT = 'keep_derived names tables of tenancy.derived_tenants whose derivation stays.';
        END IF;
    END LOOP;
    SELECT b.tenant INTO bound FROM tenancy.role_bindings b WHERE b.role = role;
    IF bound IS NOT NULL THEN
        relation := 'tenancy.role_bindings'; step := 'retire_role_unbind';
        sql := format('ALTER ROLE %I IN DATABASE %I RESET tenancy.tenant_id', rolname, db);
        undo_sql := format('ALTER ROLE %I IN DATABASE %I SET tenancy.tenant_id = %L', rolname, db, bound);
        RETURN NEXT;
        sql := format('DELETE FROM tenancy.role_bindings WHERE role = %L::pg_catalog.regrole', role::text);
        undo_sql := format('INSERT INTO tenancy.role_bindings (role, tenant) VALUES (%L, %L)', role::text, bound);
        RETURN NEXT;
    END IF;
    relation := 'tenancy.role_bindings'; step := 'retire_role_require_tenant';
    sql := format('ALTER ROLE %I IN DATABASE %I SET tenancy.require_tenant = on', rolname, db);
    undo_sql := format('ALTER ROLE %I IN DATABASE %I RESET tenancy.require_tenant', rolname, db);
    RETURN NEXT;
    IF k IS NOT NULL AND NOT EXISTS (SELECT 1 FROM tenancy.role_bindings b
                                      WHERE b.tenant = k AND b.role <> role) THEN
        -- The implicit default: what add_tenant_column() set.
        implicit_default := tenancy.tenant_default_sql();
        FOR t IN
            SELECT tt.relation AS rel, tt.column_name AS col, pg_get_expr(ad.adbin, ad.adrelid) AS dflt
              FROM tenancy.tables tt
              JOIN pg_attribute a ON a.attrelid = tt.relation AND a.attname = tt.column_name AND NOT a.attisdropped
              JOIN pg_attrdef ad ON ad.adrelid = a.attrelid AND ad.adnum = a.attnum
             WHERE pg_get_expr(ad.adbin, ad.adrelid) = implicit_default
             ORDER BY tt.relation::text
        LOOP
            relation := t.rel; step := 'retire_role_default';
            -- A derived table the DBA keeps gets the accessor alone: its
            -- trigger, which runs after the default, derives the tenant.
            sql := format('ALTER TABLE %s ALTER COLUMN %I SET DEFAULT %s', t.rel, t.col,
                          CASE WHEN t.rel = ANY (coalesce(keep_derived, '{}')) THEN tenancy.tenant_accessor()
                               ELSE format('COALESCE(%s, (tenancy.tenant_required())::%s)', tenancy.tenant_accessor(),
                                           tenancy.type_sql(tenancy.key_type())) END);
            undo_sql := format('ALTER TABLE %s ALTER COLUMN %I SET DEFAULT %s', t.rel, t.col, t.dflt);
            RETURN NEXT;
        END LOOP;
        FOR t IN
            SELECT d.relation AS rel, d.column_name AS col, d.source_kind, d.source
              FROM tenancy.derived_tenants d
             WHERE d.relation <> ALL (coalesce(keep_derived, '{}'))
             ORDER BY d.relation::text
        LOOP
            relation := t.rel; step := 'retire_role_underive';
            sql := format('SELECT tenancy.underive_tenant(%L::pg_catalog.regclass)', t.rel::text);
            undo_sql := format('SELECT tenancy.derive_tenant(%L::pg_catalog.regclass, %s => %L, column_name => %L)',
                               t.rel::text, CASE t.source_kind WHEN 'expression' THEN 'source' ELSE 'via' END,
                               t.source, t.col);
            RETURN NEXT;
        END LOOP;
    END IF;
    relation := 'tenancy.role_deprecations'; step := 'retire_role';
    sql := format('UPDATE tenancy.role_deprecations SET retired_at = pg_catalog.now(), retired_by = session_user'
                  ' WHERE role = %L::pg_catalog.regrole', role::text);
    undo_sql := format('UPDATE tenancy.role_deprecations SET retired_at = NULL, retired_by = NULL, retire_forced = NULL,'
                       ' retire_log = NULL WHERE role = %L::pg_catalog.regrole', role::text);
    RETURN NEXT;
END
$$;

-- Why the role may not be retired yet (NULL: it may).
CREATE FUNCTION tenancy.retire_refusal(role regrole, OUT errcode text, OUT message text, OUT detail text)
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_variable
DECLARE
    r tenancy.deprecated_roles;
BEGIN
    SELECT * INTO r FROM tenancy.deprecated_roles d WHERE d.role = role;
    IF r.watched_since IS NULL THEN
        errcode := '55000';
        message := 'retiring a role requires tenancy to be loaded via shared_preload_libraries';
        detail := 'Without it no transaction of the role is counted, so nothing shows that it has stopped.';
    ELSIF r.last_run IS NOT NULL AND r.quiet_for < r.retire_after THEN
        errcode := '55006';
        message := format('role "%s" ran a transaction within tenancy.retire_after', role);
        detail := format('Its last transaction was at %s (%s ago) from application_name "%s"; tenancy.retire_after is %s.',
                         r.last_run, date_trunc('second', r.quiet_for), r.last_application_name, r.retire_after);
    ELSIF r.quiet_for < r.retire_after THEN
        errcode := '55000';
        message := format('role "%s" has not been watched for tenancy.retire_after yet', role);
        detail := format('It has not run since %s (its deprecation or the server''s start, whichever is later), %s ago; tenancy.retire_after is %s.',
                         r.watched_since, date_trunc('second', r.quiet_for), r.retire_after);
    END IF;
END
$$;

-- squawk: ignore require-lock-timeout: each ALTER TABLE runs under lock_timeout when retire_role() runs it; a preview run with \gexec gets it from preview_wrap()
CREATE FUNCTION tenancy.retire_role_sql(role regrole, keep_derived regclass[] DEFAULT '{}') RETURNS text
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_variable
DECLARE
    steps text;
    undo text;
    refusal record;
BEGIN
    IF EXISTS (SELECT 1 FROM tenancy.role_deprecations d WHERE d.role = role AND d.retired_at IS NOT NULL) THEN
        RETURN '';
    END IF;
    SELECT string_agg(s.sql || ';', chr(10) ORDER BY s.n), string_agg(s.undo_sql || ';', chr(10) ORDER BY s.n DESC)
      INTO steps, undo
      FROM tenancy.retire_role_steps(role, keep_derived) WITH ORDINALITY s(relation, step, sql, undo_sql, n);
    refusal := tenancy.retire_refusal(role);
    RETURN CASE WHEN refusal.message IS NOT NULL
                THEN tenancy.sql_comment('refused now: ' || refusal.message || ' (force => true overrides)') || chr(10)
                ELSE '' END
        || tenancy.preview_wrap(steps) || chr(10)
        || tenancy.sql_comment('undo: SELECT tenancy.unretire_role(' || quote_literal(role::text) || '), which runs:' || chr(10) || undo);
END
$$;
COMMENT ON FUNCTION tenancy.retire_role_sql(regrole, regclass[]) IS 'what retire_role() would run, and how to undo it (empty: already retired)';

-- One recorded step, under a short lock_timeout with retries.
CREATE FUNCTION tenancy.deprecation_run(relation regclass, step text, sql text, undo_sql text,
                                        lock_timeout interval, max_attempts integer) RETURNS bigint
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_variable
DECLARE
    saved text := current_setting('lock_timeout');
BEGIN
    FOR attempt IN 1 .. max_attempts LOOP
        BEGIN
            PERFORM set_config('lock_timeout', ceil(extract(epoch FROM lock_timeout) * 1000)::text || 'ms', true);
            -- plpgsql_check: VOLATILE: DDL from retire_role_steps()/the log, names through %I/%s of regclass, values through %L.
            EXECUTE sql;
            PERFORM set_config('lock_timeout', saved, true);
            EXIT;
        EXCEPTION WHEN lock_not_available THEN
            IF attempt = max_attempts THEN
                RAISE EXCEPTION 'could not lock "%" after % attempts', relation, max_attempts
                    USING ERRCODE = 'lock_not_available',
                          DETAIL = format('Step %s did not run; nothing of this call was kept.', step),
                          HINT = 'Long transactions on the table hold it; retry later or raise lock_timeout.';
            END IF;
            PERFORM pg_sleep_for(tenancy.backoff_delay(attempt, '10ms', '2s'));
        END;
    END LOOP;
    IF undo_sql IS NULL THEN
        RETURN NULL;
    END IF;
    RETURN tenancy.log_step(relation, step, sql, undo_sql);
END
$$;

CREATE FUNCTION tenancy.retire_role(role regrole, keep_derived regclass[] DEFAULT '{}', force boolean DEFAULT false,
                                    lock_timeout interval DEFAULT '100ms', max_attempts integer DEFAULT 50)
RETURNS text
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_variable
DECLARE
    s record;
    refusal record;
    ids bigint[] := '{}'::bigint[];
    script text := '';
BEGIN
    IF force IS NULL OR lock_timeout IS NULL OR lock_timeout <= interval '0' OR max_attempts IS NULL OR max_attempts < 1 THEN
        RAISE EXCEPTION 'force must not be null, lock_timeout must be positive and max_attempts at least 1'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF EXISTS (SELECT 1 FROM tenancy.role_deprecations d WHERE d.role = role AND d.retired_at IS NOT NULL) THEN
        RAISE NOTICE 'role "%" is already retired, nothing to do', role;
        RETURN NULL;
    END IF;
    -- Checks role and keep_derived first.
    PERFORM count(*) FROM tenancy.retire_role_steps(role, keep_derived);
    -- The deprecation row, locked: two retirements of one role serialise.
    PERFORM 1 FROM tenancy.role_deprecations d WHERE d.role = role FOR UPDATE;
    refusal := tenancy.retire_refusal(role);
    IF refusal.message IS NOT NULL THEN
        IF NOT force THEN
            RAISE EXCEPTION '%', refusal.message
                USING ERRCODE = refusal.errcode, DETAIL = refusal.detail,
                      HINT = 'Wait until the role has been quiet for tenancy.retire_after (tenancy.deprecated_roles shows it), or pass force => true (recorded).';
        END IF;
        RAISE WARNING 'retiring role "%" by force: %', role, refusal.message USING DETAIL = refusal.detail;
    END IF;
    FOR s IN SELECT * FROM tenancy.retire_role_steps(role, keep_derived) LOOP
        ids := ids || tenancy.deprecation_run(s.relation, s.step, s.sql, s.undo_sql, lock_timeout, max_attempts);
        script := script || s.sql || ';' || chr(10);
    END LOOP;
    UPDATE tenancy.role_deprecations d SET retire_log = ids, retire_forced = refusal.message IS NOT NULL
     WHERE d.role = role;
    RETURN script;
END
$$;
COMMENT ON FUNCTION tenancy.retire_role(regrole, regclass[], boolean, interval, integer) IS 'retire a deprecated legacy role once it has not run for tenancy.retire_after: unbind it, make its sessions name a tenant, and (last one) drop the implicit defaults; returns the DDL run';

CREATE FUNCTION tenancy.unretire_role(role regrole, lock_timeout interval DEFAULT '100ms', max_attempts integer DEFAULT 50)
RETURNS text
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_variable
DECLARE
    l record;
    ids bigint[];
    script text := '';
BEGIN
    IF role IS NULL OR lock_timeout IS NULL OR lock_timeout <= interval '0' OR max_attempts IS NULL OR max_attempts < 1 THEN
        RAISE EXCEPTION 'role must not be null, lock_timeout must be positive and max_attempts at least 1'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    SELECT d.retire_log INTO ids FROM tenancy.role_deprecations d
     WHERE d.role = role AND d.retired_at IS NOT NULL FOR UPDATE;
    IF NOT FOUND THEN
        RAISE NOTICE 'role "%" is not retired, nothing to do', role;
        RETURN NULL;
    END IF;
    -- Newest first; a step a table's rollback has undone already is skipped.
    FOR l IN SELECT c.id, c.relation, c.step, c.undo_sql FROM tenancy.contract_log c
              WHERE c.id = ANY (ids) AND c.undone_at IS NULL ORDER BY c.id DESC LOOP
        PERFORM tenancy.deprecation_run(l.relation, 'undo ' || l.step, l.undo_sql, NULL, lock_timeout, max_attempts);
        UPDATE tenancy.contract_log c SET undone_at = now() WHERE c.id = l.id;
        script := script || l.undo_sql || ';' || chr(10);
    END LOOP;
    RETURN script;
END
$$;
COMMENT ON FUNCTION tenancy.unretire_role(regrole, interval, integer) IS 'undo retire_role(): the binding, the defaults and derivations it removed; the role stays deprecated';

REVOKE EXECUTE ON FUNCTION
    tenancy.deprecation_activity(),
    tenancy.deprecate_role_sql(regrole),
    tenancy.deprecate_role(regrole),
    tenancy.undeprecate_role(regrole),
    tenancy.retire_role_steps(regrole, regclass[]),
    tenancy.retire_refusal(regrole),
    tenancy.retire_role_sql(regrole, regclass[]),
    tenancy.deprecation_run(regclass, text, text, text, interval, integer),
    tenancy.retire_role(regrole, regclass[], boolean, interval, integer),
    tenancy.unretire_role(regrole, interval, integer)
FROM PUBLIC;
GRANT EXECUTE ON FUNCTION tenancy.deprecation_activity() TO pg_read_all_stats;

-- issue 19: erase (src/erase.sql, all new objects)

------------------------------------------------------------------------------
-- Erasing a tenant.  CALL tenancy.erase_tenant(tenant) deletes the tenant's
-- rows from every registered table, children before parents (the foreign
-- keys between registered tables), in small batches each committed on its
-- own, sized by the backfill's batch engine (tenancy.backfill_next_size():
-- a target duration per batch, backing off on lock timeouts), throttled by
-- a pause between batches, with its progress in tenancy.tenant_erasures /
-- tenancy.erase_progress.  Interrupted, it resumes where it stopped (a
-- batch deletes whatever of the tenant's rows are left).  It ends with a
-- count check: no row of the tenant may remain.  Refused while the tenant
-- is active (suspend it first: nothing new arrives through set_tenant()),
-- for the implicit tenant, and while a publication's row filter on one of
-- the tables names the tenant (a move in progress: the deletes would
-- replicate and empty the target).
------------------------------------------------------------------------------

-- The erasures: when and by whom, recorded with the tenant registry.
CREATE TABLE tenancy.tenant_erasures (
    tenant        text PRIMARY KEY,
    slug          text NOT NULL,
    state         text NOT NULL
                  CONSTRAINT tenant_erasures_state_check
                  CHECK (state OPERATOR(pg_catalog.=) ANY (ARRAY['running', 'done'])),
    started_at    timestamptz NOT NULL DEFAULT pg_catalog.now(),
    started_by    name NOT NULL DEFAULT session_user,
    resumed_at    timestamptz,
    finished_at   timestamptz,
    finished_by   name,
    pid           integer,
    rows_deleted  bigint NOT NULL DEFAULT 0,
    batches       bigint NOT NULL DEFAULT 0
);
COMMENT ON TABLE tenancy.tenant_erasures IS 'tenants erased with erase_tenant(): state, who started and finished it, when, rows deleted';
REVOKE ALL ON TABLE tenancy.tenant_erasures FROM PUBLIC;
SELECT pg_catalog.pg_extension_config_dump('tenancy.tenant_erasures', '');

CREATE TABLE tenancy.tenant_erasure_tables (
    tenant        text NOT NULL REFERENCES tenancy.tenant_erasures (tenant) ON DELETE CASCADE,
    relation      regclass NOT NULL,
    ord           integer NOT NULL,
    rows_deleted  bigint NOT NULL DEFAULT 0,
    batches       bigint NOT NULL DEFAULT 0,
    batch_size    integer,
    last_batch_ms numeric,
    done_at       timestamptz,
    PRIMARY KEY (tenant, relation)
);
COMMENT ON TABLE tenancy.tenant_erasure_tables IS 'per table of an erasure: its place in the order, rows deleted, when it was done';
REVOKE ALL ON TABLE tenancy.tenant_erasure_tables FROM PUBLIC;
SELECT pg_catalog.pg_extension_config_dump('tenancy.tenant_erasure_tables', '');

CREATE VIEW tenancy.erase_progress AS
SELECT e.tenant, e.slug, e.state, t.ord, t.relation, t.rows_deleted, t.batches, t.batch_size,
       t.last_batch_ms, t.done_at, e.started_at, e.started_by, e.finished_at, e.finished_by,
       e.state OPERATOR(pg_catalog.=) 'running'
           AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_stat_activity a WHERE a.pid OPERATOR(pg_catalog.=) e.pid)
           AS interrupted
  FROM tenancy.tenant_erasures e
  JOIN tenancy.tenant_erasure_tables t ON t.tenant OPERATOR(pg_catalog.=) e.tenant;
COMMENT ON VIEW tenancy.erase_progress IS 'erasures per table, in erase order; interrupted: left running by a backend that is gone';
REVOKE ALL ON TABLE tenancy.erase_progress FROM PUBLIC;

-- Registered tables (not partitions, not shared), children before parents:
-- a table's level is the longest chain of registered tables referencing it.
CREATE FUNCTION tenancy.erase_order()
RETURNS TABLE (ord integer, relation regclass, column_name name)
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    WITH RECURSIVE t AS (
        SELECT r.relation, r.column_name FROM tenancy.tables r
         WHERE NOT EXISTS (SELECT 1 FROM tenancy.shared_tables s WHERE s.relation = r.relation)
    ), edge AS (          -- child references parent, both registered
        SELECT DISTINCT c.conrelid AS child, c.confrelid AS parent
          FROM pg_constraint c
         WHERE c.contype = 'f' AND c.conrelid <> c.confrelid AND c.conparentid = 0
           AND c.conrelid IN (SELECT t.relation FROM t) AND c.confrelid IN (SELECT t.relation FROM t)
    ), lvl (rel, level) AS (
        SELECT t.relation::oid, 0 FROM t
        UNION ALL
        SELECT e.parent, l.level + 1 FROM lvl l JOIN edge e ON e.child = l.rel
         WHERE l.level < (SELECT count(*) FROM t)      -- a cycle stops here
    )
    SELECT (row_number() OVER (ORDER BY max(l.level), t.relation::text))::integer, t.relation, t.column_name
      FROM t JOIN lvl l ON l.rel = t.relation
     GROUP BY t.relation, t.column_name
     ORDER BY 1;
$$;
COMMENT ON FUNCTION tenancy.erase_order() IS 'registered tables in the order erase_tenant() deletes from them: children before parents';

-- Publications whose row filter on a registered table (or a partition of
-- one) names the tenant's key: a move of that tenant (issue 19) in
-- progress.  Read from the catalog alone, so it holds without the move's
-- own bookkeeping.
CREATE FUNCTION tenancy.erase_blockers(tenant text)
RETURNS TABLE (publication name, relation regclass, row_filter text)
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT p.pubname, pr.prrelid::regclass, pg_get_expr(pr.prqual, pr.prrelid)
      FROM pg_publication_rel pr
      JOIN pg_publication p ON p.oid = pr.prpubid
     WHERE pr.prqual IS NOT NULL
       AND strpos(pg_get_expr(pr.prqual, pr.prrelid), tenancy.tenant_key(tenant)) > 0
       AND (pr.prrelid IN (SELECT t.relation FROM tenancy.tables t)
            OR pr.prrelid IN (SELECT a.relid FROM tenancy.tables t,
                                     LATERAL pg_partition_tree(t.relation) a WHERE a.level > 0))
     ORDER BY 1, 2::text;
$$;
COMMENT ON FUNCTION tenancy.erase_blockers(text) IS 'publications whose row filter names the tenant: erase_tenant() refuses while any exists';

-- One batch's statement for a table that holds rows (a leaf: partitioned
-- tables are erased partition by partition): deletes at most $2 of the
-- tenant's rows ($1), found first (by the tenant column's index, where the
-- contract phase built one), then deleted by a TID scan.
CREATE FUNCTION tenancy.erase_batch_sql(rel regclass, column_name name) RETURNS text
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT format('DELETE FROM ONLY %1$s WHERE ctid OPERATOR(pg_catalog.=) ANY (ARRAY('
                  'SELECT t.ctid FROM ONLY %1$s t WHERE t.%2$I OPERATOR(pg_catalog.=) CAST($1 AS %3$s) LIMIT $2))',
                  rel, column_name, tenancy.type_sql(tenancy.key_type()));
$$;

-- The tables that hold a registered table's rows: itself, or the leaf
-- partitions of a partitioned one.
CREATE FUNCTION tenancy.erase_leaves(rel regclass) RETURNS SETOF regclass
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT x.relid FROM (
        SELECT p.relid::regclass AS relid, p.level FROM pg_partition_tree(rel) p WHERE p.isleaf
        UNION ALL
        SELECT rel, 0 WHERE NOT EXISTS (SELECT 1 FROM pg_partition_tree(rel))) x
     ORDER BY x.level, x.relid::text;
$$;

-- The tenant's rows left in a table.
CREATE FUNCTION tenancy.erase_remaining(rel regclass, column_name name, k text) RETURNS bigint
LANGUAGE sql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
    SELECT (tenancy.table_query(rel, NULL,
                format('SELECT count(*) FROM %s t WHERE t.%I OPERATOR(pg_catalog.=) CAST($1 AS %s)',
                       rel, column_name, tenancy.type_sql(tenancy.key_type())), k))[1]::bigint;
$$;

-- Checks of erase_tenant(): the tenant's key, or an error.
CREATE FUNCTION tenancy.erase_check(tenant text) RETURNS text
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_variable
DECLARE
    k text;
    t record;
    b record;
BEGIN
    IF tenant IS NULL THEN
        RAISE EXCEPTION 'tenant must not be null' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    k := tenancy.tenant_key(tenant);
    SELECT r.status, r.is_implicit, r.slug INTO t FROM tenancy.tenants r WHERE r.id::text = k;
    IF t.is_implicit THEN
        RAISE EXCEPTION 'tenant "%" is the implicit tenant', t.slug
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  DETAIL = 'The implicit tenant owns the single-tenant data and the legacy path''s writes.',
                  HINT = 'Make another tenant the implicit one first (tenancy.set_implicit_tenant()).';
    END IF;
    IF t.status <> 'suspended' THEN
        RAISE EXCEPTION 'tenant "%" is %', t.slug, t.status
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  DETAIL = 'Erasing an active tenant would race with its new writes.',
                  HINT = format('Suspend it first: SELECT tenancy.suspend_tenant(%L);', t.slug);
    END IF;
    SELECT * INTO b FROM tenancy.erase_blockers(k) LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'publication "%" replicates tenant "%"', b.publication, t.slug
            USING ERRCODE = 'object_in_use',
                  DETAIL = format('Its row filter on %s is %s: the deletes would replicate and empty the tenant''s copy.',
                                  b.relation, b.row_filter),
                  HINT = 'Finish or roll back the move (drop the subscription and the publication) first.';
    END IF;
    RETURN k;
END
$$;

CREATE FUNCTION tenancy.erase_tenant_sql(tenant text) RETURNS text
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_variable
DECLARE
    k text := tenancy.erase_check(tenant);
    t record;
    out text := format('-- erase tenant %s: each table in turn, in batches of at most $2 rows, each committed', k);
BEGIN
    FOR t IN SELECT o.ord, o.relation, o.column_name, l.leaf
               FROM tenancy.erase_order() o, LATERAL tenancy.erase_leaves(o.relation) WITH ORDINALITY l(leaf, n)
              ORDER BY o.ord, l.n LOOP
        out := out || chr(10) || tenancy.sql_comment(format('%s. %s (%s rows now)', t.ord, t.leaf::regclass,
                                                            tenancy.erase_remaining(t.leaf, t.column_name, k)))
            || chr(10) || tenancy.erase_batch_sql(t.leaf, t.column_name) || ';';
    END LOOP;
    RETURN out || chr(10) || '-- undo: none (restore the tenant from a backup or an export: scripts/tenancy-export)';
END
$$;
COMMENT ON FUNCTION tenancy.erase_tenant_sql(text) IS 'what erase_tenant() would do: the tables in order with the tenant''s row counts and the batch statement';

-- squawk: ignore prefer-robust-stmts: a batch deletes whatever of the tenant's rows are left: a rerun resumes
CREATE PROCEDURE tenancy.erase_tenant(tenant text, batch_size integer DEFAULT 1000,
                                      min_batch_size integer DEFAULT 10, max_batch_size integer DEFAULT 10000,
                                      batch_time interval DEFAULT '200ms', pause interval DEFAULT '0',
                                      lock_timeout interval DEFAULT '100ms', max_retries integer DEFAULT 50,
                                      max_batches integer DEFAULT NULL)
-- No SET clause (a procedure with one cannot COMMIT): the search_path is
-- pinned at the start and again after each COMMIT, which ends it.
LANGUAGE plpgsql AS $$
#variable_conflict use_variable
DECLARE
    k text;
    slug text;
    t record;
    n integer;
    per_row numeric;
    nx record;
    leaf regclass;
    deleted bigint;
    t0 timestamptz;
    ms numeric;
    failures integer;
    done_batches integer := 0;
    remaining bigint;
    other integer;
    stmt text;
BEGIN
    PERFORM pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', true);
    IF tenancy.in_transaction_block() THEN
        RAISE EXCEPTION 'tenancy.erase_tenant() cannot run inside a transaction block'
            USING ERRCODE = 'active_sql_transaction',
                  DETAIL = 'It commits after each batch.',
                  HINT = 'CALL it on its own, outside BEGIN ... COMMIT.';
    END IF;
    IF batch_size IS NULL OR min_batch_size IS NULL OR max_batch_size IS NULL
       OR NOT (1 <= min_batch_size AND min_batch_size <= batch_size AND batch_size <= max_batch_size)
       OR batch_time IS NULL OR batch_time <= interval '0' OR pause IS NULL OR pause < interval '0'
       OR lock_timeout IS NULL OR lock_timeout <= interval '0' OR max_retries IS NULL OR max_retries < 0
       OR max_batches < 1 THEN
        RAISE EXCEPTION 'invalid erase options'
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = 'Need 1 <= min_batch_size <= batch_size <= max_batch_size, positive batch_time and lock_timeout, pause >= 0, max_retries >= 0, max_batches NULL or >= 1.';
    END IF;
    k := tenancy.erase_check(tenant);
    slug := (SELECT r.slug FROM tenancy.tenants r WHERE r.id::text = k);
    -- One erasure of a tenant at a time: a running one whose backend lives.
    SELECT e.pid INTO other FROM tenancy.tenant_erasures e
     WHERE e.tenant = k AND e.state = 'running' AND e.pid <> pg_backend_pid()
       AND EXISTS (SELECT 1 FROM pg_stat_activity a WHERE a.pid = e.pid)
       FOR UPDATE;
    IF FOUND THEN
        RAISE EXCEPTION 'tenant "%" is being erased by process %', slug, other
            USING ERRCODE = 'object_in_use',
                  HINT = 'Wait for it (tenancy.erase_progress), or stop it with pg_cancel_backend() and CALL again to resume.';
    END IF;
    INSERT INTO tenancy.tenant_erasures AS e (tenant, slug, state, pid)
    VALUES (k, slug, 'running', pg_backend_pid())
    ON CONFLICT ON CONSTRAINT tenant_erasures_pkey DO UPDATE
       SET state = 'running', pid = pg_backend_pid(), resumed_at = now(), finished_at = NULL, finished_by = NULL;
    INSERT INTO tenancy.tenant_erasure_tables (tenant, relation, ord)
    SELECT k, o.relation, o.ord FROM tenancy.erase_order() o
    ON CONFLICT ON CONSTRAINT tenant_erasure_tables_pkey DO UPDATE SET ord = excluded.ord;
    COMMIT;
    PERFORM pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', true);

    FOR t IN SELECT o.ord, o.relation, o.column_name, et.batch_size
               FROM tenancy.erase_order() o
               JOIN tenancy.tenant_erasure_tables et ON et.tenant = k AND et.relation = o.relation
              ORDER BY o.ord LOOP
        n := coalesce(t.batch_size, batch_size);
        SELECT n AS next_batch, NULL::numeric AS next_per_row, NULL::interval AS sleep INTO nx;
        per_row := NULL;
        failures := 0;
        FOR leaf IN SELECT l FROM tenancy.erase_leaves(t.relation) l LOOP
        stmt := tenancy.erase_batch_sql(leaf, t.column_name);
        LOOP
            IF max_batches IS NOT NULL AND done_batches >= max_batches THEN
                UPDATE tenancy.tenant_erasures e SET pid = NULL WHERE e.tenant = k;
                COMMIT;
                PERFORM pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', true);
                RAISE NOTICE 'erase of tenant "%" stopped after % batches at table %', slug, done_batches, leaf
                    USING HINT = 'CALL tenancy.erase_tenant() again to resume.';
                RETURN;
            END IF;
            t0 := clock_timestamp();
            deleted := NULL;
            BEGIN
                PERFORM set_config('lock_timeout', ceil(extract(epoch FROM lock_timeout) * 1000)::text || 'ms', true);
                deleted := tenancy.table_exec(leaf, NULL, stmt, k, n);
            EXCEPTION WHEN lock_not_available OR deadlock_detected THEN
                failures := failures + 1;
                IF failures > max_retries THEN
                    RAISE EXCEPTION 'could not lock "%" in % attempts', leaf, failures
                        USING ERRCODE = 'lock_not_available',
                              DETAIL = 'The batches before are committed.',
                              HINT = 'CALL tenancy.erase_tenant() again when the table is less busy: it resumes.';
                END IF;
            END;
            ms := extract(epoch FROM clock_timestamp() - t0) * 1000;
            IF deleted IS NULL THEN
                SELECT * INTO nx FROM tenancy.backfill_next_size('retry', n, min_batch_size, max_batch_size,
                                                                  ms, extract(epoch FROM batch_time) * 1000, per_row,
                                                                  failures, false);
                n := nx.next_batch;
                COMMIT;
                PERFORM pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', true);
                PERFORM pg_sleep_for(nx.sleep);
                CONTINUE;
            END IF;
            failures := 0;
            done_batches := done_batches + 1;
            IF deleted > 0 THEN
                SELECT * INTO nx FROM tenancy.backfill_next_size('ok', n, min_batch_size, max_batch_size,
                                                                  ms, extract(epoch FROM batch_time) * 1000, per_row,
                                                                  0, false);
                per_row := nx.next_per_row;
            END IF;
            UPDATE tenancy.tenant_erasure_tables et
               SET rows_deleted = et.rows_deleted + deleted, batches = et.batches + 1,
                   batch_size = CASE WHEN deleted > 0 THEN nx.next_batch ELSE et.batch_size END,
                   last_batch_ms = round(ms, 1)
             WHERE et.tenant = k AND et.relation = t.relation;
            UPDATE tenancy.tenant_erasures e
               SET rows_deleted = e.rows_deleted + deleted, batches = e.batches + 1
             WHERE e.tenant = k;
            COMMIT;
            PERFORM pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', true);
            EXIT WHEN deleted < n;
            IF deleted > 0 THEN
                n := nx.next_batch;
            END IF;
            IF pause > interval '0' THEN
                PERFORM pg_sleep_for(pause);
            END IF;
        END LOOP;
        END LOOP;
        UPDATE tenancy.tenant_erasure_tables et SET done_at = now()
         WHERE et.tenant = k AND et.relation = t.relation AND et.done_at IS NULL;
        COMMIT;
        PERFORM pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', true);
    END LOOP;

    -- The count check: nothing of the tenant may remain in any table.
    FOR t IN SELECT * FROM tenancy.erase_order() LOOP
        remaining := tenancy.erase_remaining(t.relation, t.column_name, k);
        IF remaining > 0 THEN
            UPDATE tenancy.tenant_erasures e SET pid = NULL WHERE e.tenant = k;
            COMMIT;
            PERFORM pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', true);
            RAISE EXCEPTION '% rows of tenant "%" remain in %', remaining, slug, t.relation
                USING ERRCODE = 'object_not_in_prerequisite_state',
                      DETAIL = 'They were written while the erasure ran (a bound role or a session-level tenant, which suspension does not stop).',
                      HINT = 'Stop those writers and CALL tenancy.erase_tenant() again.';
        END IF;
    END LOOP;
    UPDATE tenancy.tenant_erasures e
       SET state = 'done', pid = NULL, finished_at = now(), finished_by = session_user
     WHERE e.tenant = k;
    COMMIT;
    PERFORM pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', true);
END
$$;
COMMENT ON PROCEDURE tenancy.erase_tenant(text, integer, integer, integer, interval, interval, interval, integer, integer)
    IS 'delete a suspended tenant''s rows from every registered table, children first, in committed batches; resumable; ends with a count check';

-- Per registered table: the tenant's rows and a checksum of them (md5 of
-- the rows' text, in the text's order), to compare two copies (an export
-- loaded elsewhere, a moved tenant).  As the table owner.
CREATE FUNCTION tenancy.tenant_checksums(tenant text)
RETURNS TABLE (relation regclass, row_count bigint, checksum text)
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_variable
DECLARE
    k text := tenancy.tenant_key(tenant);
    t record;
    r text[];
BEGIN
    FOR t IN SELECT o.relation, o.column_name FROM tenancy.erase_order() o ORDER BY o.relation::text LOOP
        r := tenancy.table_query(t.relation, NULL,
                 format('SELECT count(*), md5(coalesce(string_agg(x.r, chr(10) ORDER BY x.r COLLATE "C"), '''')) '
                        'FROM (SELECT t::text AS r FROM %s t WHERE t.%I OPERATOR(pg_catalog.=) CAST($1 AS %s)) x',
                        t.relation, t.column_name, tenancy.type_sql(tenancy.key_type())), k);
        relation := t.relation;
        row_count := r[1]::bigint;
        checksum := r[2];
        RETURN NEXT;
    END LOOP;
END
$$;
COMMENT ON FUNCTION tenancy.tenant_checksums(text) IS 'per registered table: the tenant''s row count and an md5 of its rows, to compare two copies';

REVOKE EXECUTE ON FUNCTION
    tenancy.erase_order(),
    tenancy.erase_blockers(text),
    tenancy.erase_batch_sql(regclass, name),
    tenancy.erase_leaves(regclass),
    tenancy.erase_remaining(regclass, name, text),
    tenancy.erase_check(text),
    tenancy.erase_tenant_sql(text),
    tenancy.tenant_checksums(text)
FROM PUBLIC;
REVOKE EXECUTE ON PROCEDURE
    tenancy.erase_tenant(text, integer, integer, integer, interval, interval, interval, integer, integer)
FROM PUBLIC;

-- issue 17: citus_context

------------------------------------------------------------------------------
-- Role bindings on every node
------------------------------------------------------------------------------

-- Citus propagates ALTER ROLE ... IN DATABASE ... SET (the role default that
-- bind_role() writes), so a bound role's connections to the workers get its
-- tenant; tenancy.role_bindings is a table of each node, and the workers
-- need it too, to refuse any other tenant to a bound role that connects to
-- them directly (and to admit the default under context_source = token).
-- On the coordinator of a Citus cluster each change of a binding is copied
-- to the workers as the transaction commits (deferred), by the superuser
-- who changed it; a worker that cannot be reached fails the commit.
CREATE FUNCTION tenancy.citus_forward_binding() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    coordinator boolean;
    stmt text;
    r record;
BEGIN
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_extension WHERE extname = 'citus') THEN
        RETURN NULL;
    END IF;
    -- Citus's functions by name: they exist only where Citus is installed.
    EXECUTE 'SELECT pg_catalog.citus_is_coordinator()' INTO coordinator;
    IF NOT coordinator THEN
        RETURN NULL;
    END IF;
    IF TG_OP = 'DELETE' THEN
        stmt := format('DELETE FROM tenancy.role_bindings WHERE role = %L::pg_catalog.regrole',
                       OLD.role::text);
    ELSE
        stmt := format('INSERT INTO tenancy.role_bindings (role, tenant) VALUES (%L::pg_catalog.regrole, %L)'
                       ' ON CONFLICT (role) DO UPDATE SET tenant = excluded.tenant',
                       NEW.role::text, NEW.tenant);
        IF TG_OP = 'UPDATE' AND OLD.role <> NEW.role THEN
            stmt := format('DELETE FROM tenancy.role_bindings WHERE role = %L::pg_catalog.regrole; ',
                           OLD.role::text) || stmt;
        END IF;
    END IF;
    FOR r IN EXECUTE 'SELECT nodename, nodeport, success, result FROM pg_catalog.run_command_on_workers($1)'
             USING stmt LOOP
        IF NOT r.success THEN
            RAISE EXCEPTION 'could not copy the role binding to the Citus worker %:%', r.nodename, r.nodeport
                USING ERRCODE = 'connection_failure', DETAIL = r.result,
                      HINT = 'Bind the role again once every worker is reachable.';
        END IF;
    END LOOP;
    RETURN NULL;
END
$$;
REVOKE EXECUTE ON FUNCTION tenancy.citus_forward_binding() FROM PUBLIC;

CREATE CONSTRAINT TRIGGER role_bindings_citus
    AFTER INSERT OR UPDATE OR DELETE ON tenancy.role_bindings
    DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW EXECUTE FUNCTION tenancy.citus_forward_binding();

------------------------------------------------------------------------------
-- What the forwarding relies on, node by node
------------------------------------------------------------------------------

-- The tenant forwarded to a worker is parsed and checked there, under the
-- worker's settings: every node must have the extension at the same
-- version, preloaded after citus, with the same key type and context
-- source (a worker in mode "any" behind a coordinator in mode "token" would
-- take a bare key from a client that reaches it directly), a keys file in
-- token mode, and the coordinator's role bindings.  One row per problem;
-- none on a database without Citus.  verify() may report these rows.
CREATE FUNCTION tenancy.citus_context_problems(OUT check_name text, OUT node text, OUT detail text)
RETURNS SETOF record
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    probe constant text := $q$SELECT pg_catalog.json_build_object(
        'version', (SELECT e.extversion FROM pg_catalog.pg_extension e WHERE e.extname = 'tenancy'),
        'preload', pg_catalog.current_setting('shared_preload_libraries'),
        'tenant_type', pg_catalog.current_setting('tenancy.tenant_type', true),
        'context_source', pg_catalog.current_setting('tenancy.context_source', true),
        'keys_file', coalesce(pg_catalog.current_setting('tenancy.token_keys_file', true), '') <> '',
        'bindings', (SELECT pg_catalog.string_agg(b.role::text || '=' || b.tenant, ',' ORDER BY b.role::text)
                       FROM tenancy.role_bindings b))::text$q$;
    here json;
    ok boolean;
    result text;
    v json;
    coordinator boolean;
BEGIN
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_extension WHERE extname = 'citus') THEN
        RETURN;
    END IF;
    -- plpgsql_check: Citus's functions exist only where Citus is installed: named at run time.
    EXECUTE format('SELECT pg_catalog.%I()', 'citus_is_coordinator') INTO coordinator;
    IF NOT coordinator THEN
        RAISE EXCEPTION 'tenancy.citus_context_problems() runs on the Citus coordinator'
            USING ERRCODE = 'object_not_in_prerequisite_state';
    END IF;
    -- plpgsql_check: the probe is a constant.
    EXECUTE probe INTO here;
    -- plpgsql_check: VOLATILE: run_command_on_workers() opens connections to the workers.
    -- plpgsql_check: Citus's functions by name, as above; the probe is a constant.
    FOR node, ok, result IN EXECUTE format('SELECT n.nodename || '':'' || n.nodeport AS node, x.success, x.result
                               FROM pg_catalog.%I($1) x
                               JOIN pg_catalog.%I n ON n.nodename = x.nodename AND n.nodeport = x.nodeport
                              ORDER BY 1', 'run_command_on_workers', 'pg_dist_node') USING probe LOOP
        IF NOT ok THEN
            check_name := 'unreachable'; detail := result;
            RETURN NEXT;
            CONTINUE;
        END IF;
        v := result::json;
        IF (v->>'version') IS DISTINCT FROM (here->>'version') THEN
            check_name := 'version';
            detail := format('tenancy %s on the worker, %s on the coordinator', coalesce(v->>'version', 'absent'), here->>'version');
            RETURN NEXT;
        END IF;
        IF (v->>'preload') !~ '(^|,)\s*citus\s*,(.*,)?\s*tenancy\s*(,|$)' THEN
            check_name := 'preload';
            detail := format('shared_preload_libraries is %L: it must name citus, then tenancy', v->>'preload');
            RETURN NEXT;
        END IF;
        IF (v->>'tenant_type') IS DISTINCT FROM (here->>'tenant_type') THEN
            check_name := 'tenant_type';
            detail := format('tenancy.tenant_type is %s on the worker, %s on the coordinator', v->>'tenant_type', here->>'tenant_type');
            RETURN NEXT;
        END IF;
        IF (v->>'context_source') IS DISTINCT FROM (here->>'context_source') THEN
            check_name := 'context_source';
            detail := format('tenancy.context_source is %s on the worker, %s on the coordinator', v->>'context_source', here->>'context_source');
            RETURN NEXT;
        END IF;
        IF (v->>'context_source') = 'token' AND NOT (v->>'keys_file')::boolean THEN
            check_name := 'token_keys_file';
            detail := 'tenancy.context_source is token but no tenancy.token_keys_file is set: the worker refuses every forwarded token';
            RETURN NEXT;
        END IF;
        IF (v->>'bindings') IS DISTINCT FROM (here->>'bindings') THEN
            check_name := 'role_bindings';
            detail := format('tenancy.role_bindings holds %s on the worker, %s on the coordinator',
                             coalesce(v->>'bindings', 'nothing'), coalesce(here->>'bindings', 'nothing'));
            RETURN NEXT;
        END IF;
    END LOOP;
END
$$;
COMMENT ON FUNCTION tenancy.citus_context_problems() IS 'Citus coordinator: the workers whose tenancy version, preload, key type, context source, keys file or role bindings differ from what forwarding the tenant relies on';
REVOKE EXECUTE ON FUNCTION tenancy.citus_context_problems() FROM PUBLIC;

-- issue 19: move (src/move.sql: tenant moves by logical replication; everything in it is new)
------------------------------------------------------------------------------
-- Bookkeeping
------------------------------------------------------------------------------

-- One row per move.  The connection strings may hold passwords: the table
-- is readable by its owner only (tenancy.moves shows everything else).
CREATE TABLE tenancy.move_jobs (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant          text NOT NULL,
    home            text NOT NULL
                    CONSTRAINT move_jobs_home_format
                    CHECK (home OPERATOR(pg_catalog.~) '^[a-z0-9]([a-z0-9_.-]{0,61}[a-z0-9])?$'),
    target_conninfo text NOT NULL,
    source_conninfo text NOT NULL,
    publication     name NOT NULL,
    subscription    name NOT NULL,
    slot            name NOT NULL,
    state           text NOT NULL DEFAULT 'planned'
                    CONSTRAINT move_jobs_state_check
                    CHECK (state OPERATOR(pg_catalog.=) ANY (ARRAY['planned', 'started', 'fenced', 'cut_over', 'rolled_back'])),
    prior_status    text,
    fence_lsn       pg_lsn,
    last_check      jsonb,
    created_by      name NOT NULL DEFAULT session_user,
    created_at      timestamptz NOT NULL DEFAULT pg_catalog.now(),
    started_at      timestamptz,
    suspended_at    timestamptz,
    fenced_at       timestamptz,
    done_at         timestamptz
);
CREATE UNIQUE INDEX move_jobs_one_open ON tenancy.move_jobs (tenant)
    WHERE state OPERATOR(pg_catalog.<>) ALL (ARRAY['cut_over', 'rolled_back']);
COMMENT ON TABLE tenancy.move_jobs IS 'tenant moves: target, replication objects, state; holds connection strings: owner only';
REVOKE ALL ON TABLE tenancy.move_jobs FROM PUBLIC;
SELECT pg_catalog.pg_extension_config_dump('tenancy.move_jobs', '');

-- Where moved tenants live now: a label, never a connection string (the
-- label reaches application roles in set_tenant()'s hint).  Read by the
-- registry cache (src/registry.c).
CREATE TABLE tenancy.tenant_homes (
    tenant   text PRIMARY KEY,
    home     text NOT NULL,
    move_id  bigint,
    moved_at timestamptz NOT NULL DEFAULT pg_catalog.now()
);
COMMENT ON TABLE tenancy.tenant_homes IS 'the home label of each tenant moved out of this database';
REVOKE ALL ON TABLE tenancy.tenant_homes FROM PUBLIC;
SELECT pg_catalog.pg_extension_config_dump('tenancy.tenant_homes', '');
CREATE TRIGGER tenant_homes_changed
    AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON tenancy.tenant_homes
    FOR EACH STATEMENT EXECUTE FUNCTION tenancy.registry_changed();

-- The names of a tenant's move objects: from its key, so that a preview
-- names what start will create (slot names allow [a-z0-9_] only).
CREATE FUNCTION tenancy.move_object_name(tenant_key text) RETURNS name
LANGUAGE sql IMMUTABLE STRICT SET search_path = pg_catalog, pg_temp AS $$
    SELECT ('tenancy_move_' || left(md5(tenant_key), 16))::name;
$$;

------------------------------------------------------------------------------
-- What moves: the registered tables (with their partitions) and the tables
-- they reference that are not tenant tables (shared: copied whole).
------------------------------------------------------------------------------

CREATE FUNCTION tenancy.move_tables()
RETURNS TABLE (relation regclass, column_name name, kind text, parent regclass, level integer)
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    WITH roots AS (
        SELECT t.relation, t.column_name FROM tenancy.tables t
        JOIN pg_class c ON c.oid = t.relation
        WHERE NOT c.relispartition
    ), refs AS (
        SELECT DISTINCT fk.confrelid AS relation
        FROM roots r, tenancy.foreign_keys(r.relation) fk
        WHERE coalesce(pg_partition_root(fk.confrelid), fk.confrelid) NOT IN (SELECT r2.relation FROM roots r2)
    )
    -- pg_partition_tree() is empty for a table that is not partitioned.
    SELECT p.relid, r.column_name, 'tenant', p.parentrelid, p.level
    FROM roots r,
         LATERAL (SELECT r.relation AS relid, NULL::regclass AS parentrelid, 0 AS level
                  UNION ALL
                  SELECT x.relid, x.parentrelid, x.level FROM pg_partition_tree(r.relation) x WHERE x.level > 0) p
    UNION ALL
    SELECT p.relid, NULL::name, 'shared', p.parentrelid, p.level
    FROM refs f,
         LATERAL (SELECT f.relation AS relid, NULL::regclass AS parentrelid, 0 AS level
                  UNION ALL
                  SELECT x.relid, x.parentrelid, x.level FROM pg_partition_tree(f.relation) x WHERE x.level > 0) p
    ORDER BY 3 DESC, 5, 1;
$$;
COMMENT ON FUNCTION tenancy.move_tables() IS 'what a move copies: registered tables and their partitions (tenant), the tables they reference (shared, copied whole)';

-- Does the replica identity of rel cover column col?  (PostgreSQL 15
-- refuses UPDATE and DELETE on a published table whose row filter uses a
-- column outside it.)
CREATE FUNCTION tenancy.move_identity_covers(rel regclass, col name) RETURNS boolean
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT CASE c.relreplident
        WHEN 'f' THEN true
        WHEN 'n' THEN false
        ELSE EXISTS (SELECT 1 FROM pg_index i
                     WHERE i.indrelid = rel
                       AND CASE c.relreplident WHEN 'd' THEN i.indisprimary ELSE i.indisreplident END
                       AND (col IS NULL
                            OR (SELECT a.attnum FROM pg_attribute a
                                WHERE a.attrelid = rel AND a.attname = col) = ANY (i.indkey::int2[])))
        END
    FROM pg_class c WHERE c.oid = rel;
$$;

-- Each table and partition of the move (the partitioned parents hold no
-- rows), whether its replica identity covers the tenant column (a shared
-- table, copied whole: whether it has one at all, else its UPDATE and
-- DELETE fail once published), and the statement that makes it: USING
-- INDEX on a unique index with the tenant column (the contract phase's),
-- else FULL; under a short lock_timeout (ALTER TABLE takes a strong lock:
-- run the fix again if it times out).
CREATE FUNCTION tenancy.move_replica_identity()
RETURNS TABLE (relation regclass, column_name name, covered boolean, fix text)
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT m.relation, m.column_name, tenancy.move_identity_covers(m.relation, m.column_name),
           CASE WHEN NOT tenancy.move_identity_covers(m.relation, m.column_name) THEN
               coalesce(
                   (SELECT format('SET LOCAL lock_timeout = %L; ALTER TABLE %s REPLICA IDENTITY USING INDEX %I;',
                                  '1s', m.relation, ic.relname)
                    FROM pg_index i JOIN pg_class ic ON ic.oid = i.indexrelid
                    WHERE i.indrelid = m.relation AND i.indisunique AND i.indisvalid AND i.indimmediate
                      AND i.indpred IS NULL AND NOT (0 = ANY (i.indkey::int2[]))
                      AND (m.column_name IS NULL
                           OR (SELECT a.attnum FROM pg_attribute a
                               WHERE a.attrelid = m.relation AND a.attname = m.column_name) = ANY (i.indkey::int2[]))
                      AND NOT EXISTS (SELECT 1 FROM pg_attribute a
                                      WHERE a.attrelid = m.relation AND a.attnum = ANY (i.indkey::int2[])
                                        AND NOT a.attnotnull)
                    ORDER BY i.indisprimary DESC, i.indnatts, ic.relname LIMIT 1),
                   format('SET LOCAL lock_timeout = %L; ALTER TABLE %s REPLICA IDENTITY FULL;  %s',
                          '1s', m.relation,
                          tenancy.sql_comment(format('no unique NOT NULL index%s: FULL logs whole old rows',
                                                     CASE WHEN m.column_name IS NOT NULL THEN format(' with %I', m.column_name) ELSE '' END))))
           END
    FROM tenancy.move_tables() m
    JOIN pg_class c ON c.oid = m.relation
    WHERE c.relkind = 'r';
$$;
COMMENT ON FUNCTION tenancy.move_replica_identity() IS 'per table and partition of a move: does its replica identity cover the tenant column (shared tables: exist), and the statement that makes it';

------------------------------------------------------------------------------
-- The target's schema, from the catalog: tables, partitions, constraints,
-- indexes, replica identity, owners, grants, row level security and
-- policies; the extension, the tenant's registry row, the registrations.
-- One script, run in one transaction at the target.  Roles must exist
-- there (same cluster: they do).
------------------------------------------------------------------------------

-- squawk: ignore adding-foreign-key-constraint: new empty tables at the target, in one transaction
-- squawk: ignore adding-serial-primary-key-field: new empty tables at the target, in one transaction
-- squawk: ignore constraint-missing-not-valid: new empty tables at the target, in one transaction
-- squawk: ignore prefer-bigint-over-int: the columns' types are the source's
-- squawk: ignore prefer-robust-stmts: one transaction, all or nothing; move_start() runs it only at a target without the tables
-- squawk: ignore require-concurrent-index-creation: new empty tables, in one transaction (where CONCURRENTLY is not allowed)
-- squawk: ignore disallowed-unique-constraint: new empty tables, in one transaction
CREATE FUNCTION tenancy.move_target_schema_sql(tenant text)
RETURNS SETOF text
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp
    -- Partition bounds, defaults and checks printed as any session reads
    -- them back (as pg_dump does), whatever the caller's settings.
    SET datestyle = 'ISO, YMD' SET intervalstyle = 'postgres' SET extra_float_digits = 3 AS $$
DECLARE
    k text := tenancy.tenant_key(tenant);
    t record;
    r record;
    cols text;
BEGIN
    -- One transaction at the target (move_start() wraps it in BEGIN/COMMIT).
    RETURN NEXT 'SET LOCAL lock_timeout = ''5s'';';
    RETURN NEXT 'SET LOCAL statement_timeout = ''5min'';';
    RETURN NEXT 'CREATE EXTENSION IF NOT EXISTS tenancy;';
    RETURN NEXT format('INSERT INTO tenancy.tenants (id, slug, name) SELECT CAST(%L AS %s), %L, %L'
                       ' WHERE NOT EXISTS (SELECT 1 FROM tenancy.tenants WHERE id::text = %L);',
                       k, format_type(tenancy.key_type(), NULL),
                       (SELECT x.slug FROM tenancy.tenants x WHERE x.id::text = k),
                       (SELECT x.name FROM tenancy.tenants x WHERE x.id::text = k), k);
    FOR r IN SELECT DISTINCT n.oid, n.nspname, pg_get_userbyid(n.nspowner) AS owner FROM tenancy.move_tables() m
             JOIN pg_class c ON c.oid = m.relation JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE n.nspname <> 'public' ORDER BY 2 LOOP
        RETURN NEXT format('CREATE SCHEMA IF NOT EXISTS %I;', r.nspname);
        RETURN NEXT format('ALTER SCHEMA %I OWNER TO %I;', r.nspname, r.owner);
        RETURN QUERY SELECT format('GRANT %s ON SCHEMA %I TO %s;', a.privilege_type, r.nspname,
                                   CASE a.grantee WHEN 0 THEN 'PUBLIC' ELSE quote_ident(pg_get_userbyid(a.grantee)) END)
                     FROM pg_namespace n, aclexplode(n.nspacl) a
                     WHERE n.oid = r.oid AND a.grantee <> n.nspowner ORDER BY a.grantee, a.privilege_type;
    END LOOP;
    -- Sequences of serial columns (identity columns make their own).
    FOR r IN SELECT DISTINCT s.seqrelid::regclass AS seq, format_type(s.seqtypid, NULL) AS typ
             FROM tenancy.move_tables() m
             JOIN pg_depend d ON d.refobjid = m.relation AND d.classid = 'pg_class'::regclass
                             AND d.refclassid = 'pg_class'::regclass AND d.deptype = 'a'
             JOIN pg_sequence s ON s.seqrelid = d.objid
             ORDER BY 1 LOOP
        RETURN NEXT format('CREATE SEQUENCE IF NOT EXISTS %s AS %s;', r.seq, r.typ);
    END LOOP;
    FOR t IN SELECT m.*, c.relkind, c.relispartition, c.relreplident, c.relrowsecurity, c.relforcerowsecurity,
                    pg_get_userbyid(c.relowner) AS owner, c.relacl
             FROM tenancy.move_tables() m JOIN pg_class c ON c.oid = m.relation
             ORDER BY m.kind DESC, m.level, m.relation::text LOOP
        IF t.relispartition THEN
            RETURN NEXT format('CREATE TABLE %s PARTITION OF %s %s%s;', t.relation, t.parent,
                               pg_get_expr(c.relpartbound, c.oid),
                               CASE WHEN t.relkind = 'p' THEN ' PARTITION BY ' || pg_get_partkeydef(c.oid) ELSE '' END)
                FROM pg_class c WHERE c.oid = t.relation;
        ELSE
            SELECT string_agg(format('%I %s%s%s%s', a.attname, format_type(a.atttypid, a.atttypmod),
                                     CASE WHEN a.attnotnull THEN ' NOT NULL' ELSE '' END,
                                     CASE a.attidentity WHEN 'a' THEN ' GENERATED ALWAYS AS IDENTITY'
                                                        WHEN 'd' THEN ' GENERATED BY DEFAULT AS IDENTITY' ELSE '' END,
                                     CASE WHEN a.attgenerated = 's' THEN ' GENERATED ALWAYS AS (' || pg_get_expr(ad.adbin, ad.adrelid) || ') STORED'
                                          WHEN ad.adbin IS NOT NULL THEN ' DEFAULT ' || pg_get_expr(ad.adbin, ad.adrelid)
                                          ELSE '' END),
                              ', ' ORDER BY a.attnum)
              INTO cols
              FROM pg_attribute a LEFT JOIN pg_attrdef ad ON ad.adrelid = a.attrelid AND ad.adnum = a.attnum
             WHERE a.attrelid = t.relation AND a.attnum > 0 AND NOT a.attisdropped;
            RETURN NEXT format('CREATE TABLE %s (%s)%s;', t.relation, cols,
                               CASE WHEN t.relkind = 'p' THEN ' PARTITION BY ' || pg_get_partkeydef(t.relation) ELSE '' END);
        END IF;
        -- Its own constraints (not inherited ones), foreign keys below.
        FOR r IN SELECT co.conname, pg_get_constraintdef(co.oid) AS def FROM pg_constraint co
                 WHERE co.conrelid = t.relation AND co.contype IN ('p', 'u', 'c', 'x')
                   AND co.coninhcount = 0 AND co.conparentid = 0 ORDER BY co.contype DESC, co.conname LOOP
            RETURN NEXT format('ALTER TABLE %s ADD CONSTRAINT %I %s;', t.relation, r.conname, r.def);
        END LOOP;
        -- Indexes not of a constraint and not attached to a parent's.
        FOR r IN SELECT pg_get_indexdef(i.indexrelid) AS def FROM pg_index i
                 WHERE i.indrelid = t.relation
                   AND NOT EXISTS (SELECT 1 FROM pg_constraint co WHERE co.conindid = i.indexrelid AND co.conrelid = t.relation)
                   AND NOT EXISTS (SELECT 1 FROM pg_inherits h WHERE h.inhrelid = i.indexrelid)
                 ORDER BY i.indexrelid::regclass::text LOOP
            RETURN NEXT r.def || ';';
        END LOOP;
        IF t.relreplident = 'f' THEN
            RETURN NEXT format('ALTER TABLE %s REPLICA IDENTITY FULL;', t.relation);
        ELSIF t.relreplident = 'i' THEN
            RETURN NEXT format('ALTER TABLE %s REPLICA IDENTITY USING INDEX %I;', t.relation,
                               (SELECT ic.relname FROM pg_index i JOIN pg_class ic ON ic.oid = i.indexrelid
                                WHERE i.indrelid = t.relation AND i.indisreplident));
        END IF;
        IF NOT t.relispartition THEN
            RETURN NEXT format('ALTER TABLE %s OWNER TO %I;', t.relation, t.owner);
            FOR r IN SELECT a.privilege_type, a.grantee FROM aclexplode(t.relacl) a
                     WHERE a.grantee <> (SELECT c.relowner FROM pg_class c WHERE c.oid = t.relation)
                     ORDER BY 2, 1 LOOP
                RETURN NEXT format('GRANT %s ON %s TO %s;', r.privilege_type, t.relation,
                                   CASE r.grantee WHEN 0 THEN 'PUBLIC' ELSE quote_ident(pg_get_userbyid(r.grantee)) END);
            END LOOP;
        END IF;
        IF t.relrowsecurity THEN
            RETURN NEXT format('ALTER TABLE %s ENABLE ROW LEVEL SECURITY;', t.relation);
        END IF;
        IF t.relforcerowsecurity THEN
            RETURN NEXT format('ALTER TABLE %s FORCE ROW LEVEL SECURITY;', t.relation);
        END IF;
        FOR r IN SELECT p.polname, p.polpermissive, p.polcmd,
                        CASE WHEN p.polroles = '{0}' THEN 'PUBLIC'
                             ELSE (SELECT string_agg(quote_ident(pg_get_userbyid(x)), ', ' ORDER BY 1)
                                   FROM unnest(p.polroles) x) END AS roles,
                        pg_get_expr(p.polqual, p.polrelid) AS qual, pg_get_expr(p.polwithcheck, p.polrelid) AS chk
                 FROM pg_policy p WHERE p.polrelid = t.relation ORDER BY p.polname LOOP
            RETURN NEXT format('CREATE POLICY %I ON %s AS %s FOR %s TO %s%s%s;', r.polname, t.relation,
                               CASE WHEN r.polpermissive THEN 'PERMISSIVE' ELSE 'RESTRICTIVE' END,
                               CASE r.polcmd WHEN 'r' THEN 'SELECT' WHEN 'a' THEN 'INSERT' WHEN 'w' THEN 'UPDATE'
                                             WHEN 'd' THEN 'DELETE' ELSE 'ALL' END,
                               r.roles,
                               CASE WHEN r.qual IS NOT NULL THEN ' USING (' || r.qual || ')' ELSE '' END,
                               CASE WHEN r.chk IS NOT NULL THEN ' WITH CHECK (' || r.chk || ')' ELSE '' END);
        END LOOP;
    END LOOP;
    -- Serial sequences owned by their columns again.
    FOR r IN SELECT DISTINCT s.seqrelid::regclass AS seq, d.refobjid::regclass AS rel, a.attname,
                    pg_get_userbyid(sc.relowner) AS owner
             FROM tenancy.move_tables() m
             JOIN pg_depend d ON d.refobjid = m.relation AND d.classid = 'pg_class'::regclass
                             AND d.refclassid = 'pg_class'::regclass AND d.deptype = 'a'
             JOIN pg_sequence s ON s.seqrelid = d.objid
             JOIN pg_class sc ON sc.oid = s.seqrelid
             JOIN pg_attribute a ON a.attrelid = d.refobjid AND a.attnum = d.refobjsubid
             ORDER BY 1 LOOP
        RETURN NEXT format('ALTER SEQUENCE %s OWNER TO %I;', r.seq, r.owner);
        RETURN NEXT format('ALTER SEQUENCE %s OWNED BY %s.%I;', r.seq, r.rel, r.attname);
    END LOOP;
    FOR r IN SELECT fk.conname, fk.conrelid, pg_get_constraintdef(fk.conoid) AS def
             FROM tenancy.move_tables() m, tenancy.foreign_keys(m.relation) fk
             WHERE m.level = 0
             ORDER BY fk.conrelid::text, fk.conname LOOP
        RETURN NEXT format('ALTER TABLE %s ADD CONSTRAINT %I %s;', r.conrelid, r.conname, r.def);
    END LOOP;
    FOR r IN SELECT m.relation, m.column_name, m.kind FROM tenancy.move_tables() m
             WHERE m.level = 0 ORDER BY m.kind DESC, m.relation::text LOOP
        IF r.kind = 'tenant' THEN
            RETURN NEXT format('SELECT tenancy.tables_register(%L, %L);', r.relation::text, r.column_name);
        ELSIF EXISTS (SELECT 1 FROM tenancy.shared_tables s WHERE s.relation = r.relation) THEN
            RETURN NEXT format('SELECT tenancy.mark_shared(%L);', r.relation::text);
        END IF;
    END LOOP;
END
$$;
COMMENT ON FUNCTION tenancy.move_target_schema_sql(text) IS 'the target database''s schema for a tenant move, one statement per row';

-- The publication: the tenant's rows of every tenant table, the shared
-- tables whole; no TRUNCATE (it ignores row filters); partitions published
-- as their root, so that the target routes rows into its own partitions.
CREATE FUNCTION tenancy.move_publication_sql(tenant text) RETURNS text
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT format('CREATE PUBLICATION %I FOR TABLE %s WITH (publish = %L, publish_via_partition_root = true);',
                  tenancy.move_object_name(tenancy.tenant_key(tenant)),
                  string_agg(CASE WHEN m.kind = 'tenant'
                                  THEN format('%s WHERE (%I = %L::%s)', m.relation, m.column_name,
                                              tenancy.tenant_key(tenant), format_type(tenancy.key_type(), NULL))
                                  ELSE m.relation::text END,
                             ', ' ORDER BY m.kind DESC, m.relation::text),
                  'insert, update, delete')
    FROM tenancy.move_tables() m WHERE m.level = 0;
$$;

-- The conninfo the target's subscription uses to reach this database by
-- default: this server's first socket directory and port.
CREATE FUNCTION tenancy.move_default_source_conninfo() RETURNS text
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT format('host=%s port=%s dbname=%s',
                  quote_literal(trim(split_part(current_setting('unix_socket_directories'), ',', 1))),
                  current_setting('port'), quote_literal(current_database()));
$$;

CREATE FUNCTION tenancy.move_subscription_sql(tenant text, source_conninfo text) RETURNS text
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT format('CREATE SUBSCRIPTION %1$I CONNECTION %2$L PUBLICATION %1$I'
                  ' WITH (create_slot = false, slot_name = %1$L, copy_data = true, enabled = true);',
                  tenancy.move_object_name(tenancy.tenant_key(tenant)), source_conninfo);
$$;

-- The fence: three row triggers per tenant table (a partitioned table's
-- reach its partitions), ENABLE ALWAYS so that session_replication_role
-- does not switch them off; each refuses a write of the tenant's rows,
-- whoever the writer (bound roles, session-level tenants, BYPASSRLS roles,
-- owners, superusers).  The WHEN clauses keep other tenants' rows away
-- from any function call.
CREATE FUNCTION tenancy.move_fence() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    RAISE EXCEPTION 'tenant "%" is being moved to another database: its writes are refused here', TG_ARGV[0]
        USING ERRCODE = 'read_only_sql_transaction',
              DETAIL = format('%s on %I.%I.', TG_OP, TG_TABLE_SCHEMA, TG_TABLE_NAME),
              HINT = 'Write to the tenant''s new home once the move is done (tenancy.moves).';
END
$$;

CREATE FUNCTION tenancy.move_fence_sql(tenant text)
RETURNS TABLE (relation regclass, sql text, undo_sql text)
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT m.relation,
           format('CREATE TRIGGER %1$I BEFORE INSERT ON %2$s FOR EACH ROW WHEN (NEW.%3$I = %4$L::%5$s) EXECUTE FUNCTION tenancy.move_fence(%4$L); '
                  'CREATE TRIGGER %6$I BEFORE UPDATE ON %2$s FOR EACH ROW WHEN (OLD.%3$I = %4$L::%5$s OR NEW.%3$I = %4$L::%5$s) EXECUTE FUNCTION tenancy.move_fence(%4$L); '
                  'CREATE TRIGGER %7$I BEFORE DELETE ON %2$s FOR EACH ROW WHEN (OLD.%3$I = %4$L::%5$s) EXECUTE FUNCTION tenancy.move_fence(%4$L); '
                  'ALTER TABLE %2$s ENABLE ALWAYS TRIGGER %1$I, ENABLE ALWAYS TRIGGER %6$I, ENABLE ALWAYS TRIGGER %7$I;',
                  n || '_i', m.relation, m.column_name, k, format_type(tenancy.key_type(), NULL), n || '_u', n || '_d'),
           format('DROP TRIGGER IF EXISTS %2$I ON %1$s; DROP TRIGGER IF EXISTS %3$I ON %1$s; DROP TRIGGER IF EXISTS %4$I ON %1$s;',
                  m.relation, n || '_i', n || '_u', n || '_d')
    FROM tenancy.move_tables() m,
         LATERAL (SELECT tenancy.tenant_key(tenant) AS k) kk,
         LATERAL (SELECT tenancy.move_object_name(kk.k)::text || '_fence' AS n) nn
    WHERE m.kind = 'tenant' AND m.level = 0
    ORDER BY m.relation::text;
$$;

------------------------------------------------------------------------------
-- The plan: every statement of a move, in order, with the side it runs on.
------------------------------------------------------------------------------

-- squawk: ignore adding-foreign-key-constraint: the target's schema: new empty tables, in one transaction
-- squawk: ignore adding-serial-primary-key-field: the target's schema: new empty tables, in one transaction
-- squawk: ignore constraint-missing-not-valid: the target's schema: new empty tables, in one transaction
-- squawk: ignore prefer-bigint-over-int: the columns' types are the source's
-- squawk: ignore prefer-robust-stmts: each part checks whether it is done (move_start(), move_cutover()); the target's schema is one transaction
-- squawk: ignore require-concurrent-index-creation: the target's schema: new empty tables, in one transaction (where CONCURRENTLY is not allowed)
-- squawk: ignore disallowed-unique-constraint: the target's schema: new empty tables, in one transaction
-- squawk: ignore require-statement-timeout: the replica identity fixes change the catalog only (no scan), under lock_timeout; the target's schema sets both
CREATE FUNCTION tenancy.move_plan(tenant text, home text, source_conninfo text DEFAULT NULL)
RETURNS TABLE (step integer, phase text, side text, sql text)
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp
    SET datestyle = 'ISO, YMD' SET intervalstyle = 'postgres' SET extra_float_digits = 3 AS $$
DECLARE
    k text := tenancy.tenant_key(tenant);
    n name := tenancy.move_object_name(k);
    src text := coalesce(source_conninfo, tenancy.move_default_source_conninfo());
    s text;
    r record;
BEGIN
    PERFORM tenancy.move_check_home(home);
    IF NOT EXISTS (SELECT 1 FROM tenancy.move_tables() m WHERE m.kind = 'tenant') THEN
        RAISE EXCEPTION 'no registered tenant table to move'
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = 'Register the tenant tables first (tenancy.add_tenant_column()).';
    END IF;
    step := 0;
    FOR r IN SELECT * FROM tenancy.move_replica_identity() x WHERE NOT x.covered LOOP
        step := step + 1; phase := 'replica identity'; side := 'source'; sql := r.fix; RETURN NEXT;
    END LOOP;
    step := step + 1; phase := 'publication'; side := 'source'; sql := tenancy.move_publication_sql(k); RETURN NEXT;
    step := step + 1; phase := 'slot'; side := 'source';
    sql := format('SELECT pg_create_logical_replication_slot(%L, %L);', n, 'pgoutput'); RETURN NEXT;
    FOR s IN SELECT * FROM tenancy.move_target_schema_sql(k) LOOP
        step := step + 1; phase := 'schema'; side := 'target'; sql := s; RETURN NEXT;
    END LOOP;
    step := step + 1; phase := 'subscription'; side := 'target'; sql := tenancy.move_subscription_sql(k, src); RETURN NEXT;
    step := step + 1; phase := 'cut-over'; side := 'source';
    sql := format('SELECT tenancy.suspend_tenant(%L);', k); RETURN NEXT;
    FOR r IN SELECT * FROM tenancy.move_fence_sql(k) LOOP
        step := step + 1; phase := 'cut-over'; side := 'source'; sql := r.sql; RETURN NEXT;
    END LOOP;
    step := step + 1; phase := 'cut-over'; side := 'source';
    sql := '-- wait out transactions older than the fence, then take SELECT pg_current_wal_lsn() as the fence position'; RETURN NEXT;
    step := step + 1; phase := 'cut-over'; side := 'source';
    sql := format('-- wait until SELECT confirmed_flush_lsn FROM pg_replication_slots WHERE slot_name = %L reaches it; verify again', n); RETURN NEXT;
    FOR r IN SELECT DISTINCT m.relation, a.attname
             FROM tenancy.move_tables() m
             JOIN pg_depend d ON d.refobjid = m.relation AND d.classid = 'pg_class'::regclass
                             AND d.refclassid = 'pg_class'::regclass AND d.deptype IN ('a', 'i')
             JOIN pg_sequence sq ON sq.seqrelid = d.objid
             JOIN pg_attribute a ON a.attrelid = d.refobjid AND a.attnum = d.refobjsubid
             ORDER BY 1, 2 LOOP
        step := step + 1; phase := 'sequences'; side := 'target';
        sql := format('SELECT setval(pg_get_serial_sequence(%L, %L), <last_value at the source>, true);',
                      r.relation::text, r.attname);
        RETURN NEXT;
    END LOOP;
    step := step + 1; phase := 'drop'; side := 'target';
    sql := format('DROP SUBSCRIPTION %I;  -- drops its slot at the source too', n); RETURN NEXT;
    step := step + 1; phase := 'drop'; side := 'source';
    sql := format('DROP PUBLICATION %I;', n); RETURN NEXT;
    step := step + 1; phase := 'home'; side := 'source';
    sql := format('INSERT INTO tenancy.tenant_homes (tenant, home) VALUES (%L, %L);', k, home); RETURN NEXT;
    step := step + 1; phase := 'next'; side := 'source';
    sql := '-- erase the tenant''s rows at the source (after the subscription and publication are gone)'; RETURN NEXT;
END
$$;
COMMENT ON FUNCTION tenancy.move_plan(text, text, text) IS 'every statement of a tenant move, in order, with the side (source or target) it runs on; runs nothing';

CREATE FUNCTION tenancy.move_check_home(home text) RETURNS void
LANGUAGE plpgsql IMMUTABLE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF home IS NULL OR home !~ '^[a-z0-9]([a-z0-9_.-]{0,61}[a-z0-9])?$' THEN
        RAISE EXCEPTION 'invalid home label "%"', home
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = 'A home label is 1 to 63 lower-case letters, digits, dots, underscores and inner hyphens; it reaches application roles in set_tenant()''s hint, so it is never a connection string.',
                  HINT = 'For example: eu-west-db2.';
    END IF;
END
$$;

------------------------------------------------------------------------------
-- The target, through dblink (looked up at run time: the extension does
-- not require it).
------------------------------------------------------------------------------

CREATE FUNCTION tenancy.move_dblink_schema() RETURNS name
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    nsp name := (SELECT n.nspname FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace
                 WHERE e.extname = 'dblink');
BEGIN
    IF nsp IS NULL THEN
        RAISE EXCEPTION 'a tenant move needs the dblink extension'
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = 'CREATE EXTENSION dblink; in this database (the move reaches the target through it).';
    END IF;
    RETURN nsp;
END
$$;

CREATE FUNCTION tenancy.move_remote_exec(conninfo text, sql text) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    -- plpgsql_check: dynamic SQL: dblink is found at run time (move_dblink_schema()).
    EXECUTE format('SELECT %I.dblink_exec($1, $2)', tenancy.move_dblink_schema()) USING conninfo, sql;
END
$$;

-- A query at the target whose one column is a text[]: its rows.
CREATE FUNCTION tenancy.move_remote_query(conninfo text, sql text) RETURNS SETOF text[]
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    -- plpgsql_check: dynamic SQL: dblink is found at run time (move_dblink_schema()); VOLATILE: the remote query may write (setval).
    RETURN QUERY EXECUTE format('SELECT r FROM %I.dblink($1, $2) AS t(r text[])', tenancy.move_dblink_schema())
        USING conninfo, sql;
END
$$;

------------------------------------------------------------------------------
-- Counts and checksums: the same function on both sides.  The checksum is
-- the sum of a 64-bit hash of each row (order-free; a lost or a duplicated
-- row changes it).  Run as the table's owner (table_query()),
-- which sees every row under FORCE ROW LEVEL SECURITY.
------------------------------------------------------------------------------

CREATE FUNCTION tenancy.move_checksums(tenant_key text, rels text[], cols name[])
RETURNS TABLE (relation text, row_count bigint, checksum numeric)
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    res text[];
    filter text;
BEGIN
    FOR i IN 1 .. coalesce(array_length(rels, 1), 0) LOOP
        filter := CASE WHEN cols[i] IS NULL THEN '' ELSE format(' WHERE %I::pg_catalog.text = $1', cols[i]) END;
        BEGIN
            -- Each column hashed by its type's hash function (twice as
            -- fast as hashing the row's text) ...
            res := tenancy.table_query(rels[i]::regclass, NULL,
                       format('SELECT count(*), coalesce(sum(pg_catalog.hash_record_extended(t, 0)), 0) FROM %s t%s',
                              rels[i]::regclass, filter), tenant_key);
        EXCEPTION WHEN undefined_function THEN
            -- ... unless a column's type has none (json, point, xml): the
            -- row's text.  The same on both sides: the schemas are the same.
            res := tenancy.table_query(rels[i]::regclass, NULL,
                       format('SELECT count(*), coalesce(sum(pg_catalog.hashtextextended(t::pg_catalog.text, 0)), 0) FROM %s t%s',
                              rels[i]::regclass, filter), tenant_key);
        END;
        relation := rels[i]; row_count := res[1]::bigint; checksum := res[2]::numeric;
        RETURN NEXT;
    END LOOP;
END
$$;
COMMENT ON FUNCTION tenancy.move_checksums(text, text[], name[]) IS 'row count and order-free checksum of a tenant''s rows (NULL column: all rows) of each table';

CREATE FUNCTION tenancy.move_job(tenant text, open_only boolean DEFAULT true) RETURNS tenancy.move_jobs
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    j tenancy.move_jobs;
BEGIN
    SELECT * INTO j FROM tenancy.move_jobs m
    WHERE m.tenant = tenancy.tenant_key(move_job.tenant)
      AND (NOT open_only OR m.state <> ALL (ARRAY['cut_over', 'rolled_back']))
    ORDER BY m.id DESC LIMIT 1;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'tenant "%" has no move under way', tenant
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = 'Start one with CALL tenancy.move_start(tenant, home, target_conninfo).';
    END IF;
    RETURN j;
END
$$;

-- Per table (roots: a partitioned table's rows with its partitions'): the
-- rows at the source and the target, checksums, equal or not.
CREATE FUNCTION tenancy.move_verify(tenant text)
RETURNS TABLE (relation text, source_rows bigint, target_rows bigint, equal boolean)
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    j tenancy.move_jobs := tenancy.move_job(tenant);
    nsp name := tenancy.move_dblink_schema();
    conn text := 'tenancy_move_verify_' || pg_backend_pid();
    here jsonb;
    rels text[];
    cols name[];
BEGIN
    SELECT array_agg(m.relation::text ORDER BY m.relation::text), array_agg(m.column_name ORDER BY m.relation::text)
      INTO rels, cols FROM tenancy.move_tables() m WHERE m.level = 0;
    -- plpgsql_check: the OUT variables are set by RETURN QUERY EXECUTE below.
    -- Both sides at once: the target's sums are sent first (asynchronous
    -- dblink query), this side's computed meanwhile; that halves the time
    -- the cut-over keeps the tenant refused.
    -- plpgsql_check: dynamic SQL: dblink is found at run time (move_dblink_schema()).
    EXECUTE format('SELECT %1$I.dblink_connect($1, $2), %1$I.dblink_send_query($1, $3)', nsp)
        USING conn, j.target_conninfo,
              format('SELECT ARRAY[relation, row_count::text, checksum::text] FROM tenancy.move_checksums(%L, %L, %L)',
                     j.tenant, rels, cols);
    SELECT jsonb_agg(to_jsonb(c)) INTO here FROM tenancy.move_checksums(j.tenant, rels, cols) c;
    -- plpgsql_check: dynamic SQL: dblink is found at run time (move_dblink_schema()).
    RETURN QUERY EXECUTE format(
        'WITH t AS (SELECT r[1] AS relation, r[2]::bigint AS row_count, r[3]::numeric AS checksum
                    FROM %1$I.dblink_get_result($1) AS x(r text[]))
         SELECT s.relation, s.row_count, t.row_count, s.row_count = t.row_count AND s.checksum = t.checksum
         FROM jsonb_to_recordset($2) AS s(relation text, row_count bigint, checksum numeric)
         LEFT JOIN t USING (relation) ORDER BY 1', nsp)
        USING conn, here;
    -- plpgsql_check: dynamic SQL: dblink is found at run time (move_dblink_schema()).
    EXECUTE format('SELECT %1$I.dblink_disconnect($1)', nsp) USING conn;
EXCEPTION WHEN OTHERS THEN
    -- plpgsql_check: dynamic SQL: dblink is found at run time (move_dblink_schema()).
    EXECUTE format('SELECT %1$I.dblink_disconnect($1) WHERE $1 = ANY (%1$I.dblink_get_connections())', nsp) USING conn;
    RAISE;
END
$$;
COMMENT ON FUNCTION tenancy.move_verify(text) IS 'per table: the tenant''s rows at the source and the target and whether counts and checksums are equal';

-- Progress of the copy and catch-up: per table, the subscription's state
-- for it at the target (r: ready), the rows there and here; and the lag.
CREATE FUNCTION tenancy.move_progress(tenant text)
RETURNS TABLE (relation text, sync_state text, source_rows bigint, target_rows bigint, lag_bytes numeric)
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    j tenancy.move_jobs := tenancy.move_job(tenant);
    lag numeric := (SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), s.confirmed_flush_lsn)
                    FROM pg_replication_slots s WHERE s.slot_name = j.slot);
BEGIN
    RETURN QUERY
        WITH st AS (SELECT r[1] AS relation, r[2] AS state
                    FROM tenancy.move_remote_query(j.target_conninfo,
                             format('SELECT ARRAY[pg_catalog.format(%L, n.nspname, c.relname), sr.srsubstate::text]'
                                    ' FROM pg_catalog.pg_subscription_rel sr JOIN pg_catalog.pg_subscription s ON s.oid = sr.srsubid'
                                    ' JOIN pg_catalog.pg_class c ON c.oid = sr.srrelid JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace'
                                    ' WHERE s.subname = %L', '%I.%I', j.subscription)) r)
        SELECT v.relation, st.state, v.source_rows, v.target_rows, lag
        FROM tenancy.move_verify(tenant) v LEFT JOIN st USING (relation)
        ORDER BY 1;
END
$$;
COMMENT ON FUNCTION tenancy.move_progress(text) IS 'per table: the subscription''s sync state at the target, the rows on both sides; the replication lag in bytes';

-- Wait (at most timeout) until every table is copied (state r) and the
-- lag is under max_lag_bytes; returns the progress.  55000 on timeout.
CREATE FUNCTION tenancy.move_wait(tenant text, timeout interval DEFAULT '10 min', max_lag_bytes bigint DEFAULT 1048576)
RETURNS TABLE (relation text, sync_state text, source_rows bigint, target_rows bigint, lag_bytes numeric)
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    j tenancy.move_jobs := tenancy.move_job(tenant);
    deadline timestamptz := clock_timestamp() + timeout;
BEGIN
    IF j.state = 'planned' THEN
        RAISE EXCEPTION 'the move of tenant "%" has not started', tenant
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = 'CALL tenancy.move_start() again: it resumes.';
    END IF;
    LOOP
        EXIT WHEN tenancy.move_copied(j);
        IF clock_timestamp() > deadline THEN
            RAISE EXCEPTION 'the initial copy of tenant "%" is not done after %', tenant, timeout
                USING ERRCODE = 'object_not_in_prerequisite_state',
                      HINT = 'SELECT * FROM tenancy.move_progress(...) shows where it stands; call move_wait() again.';
        END IF;
        PERFORM pg_sleep(0.1);
    END LOOP;
    LOOP
        EXIT WHEN (SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), s.confirmed_flush_lsn)
                   FROM pg_replication_slots s WHERE s.slot_name = j.slot) <= max_lag_bytes;
        IF clock_timestamp() > deadline THEN
            RAISE EXCEPTION 'the subscription of tenant "%" lags after %', tenant, timeout
                USING ERRCODE = 'object_not_in_prerequisite_state';
        END IF;
        PERFORM pg_sleep(0.1);
    END LOOP;
    RETURN QUERY SELECT * FROM tenancy.move_progress(tenant);
END
$$;
COMMENT ON FUNCTION tenancy.move_wait(text, interval, bigint) IS 'wait for the initial copy and the catch-up of a move; returns its progress';

-- Is every table of the subscription copied (state r at the target)?
CREATE FUNCTION tenancy.move_copied(j tenancy.move_jobs) RETURNS boolean
LANGUAGE sql SET search_path = pg_catalog, pg_temp AS $$
    SELECT count(*) > 0 AND bool_and(r[1] = 'r')
    FROM tenancy.move_remote_query(j.target_conninfo,
             format('SELECT ARRAY[sr.srsubstate::text] FROM pg_subscription_rel sr'
                    ' JOIN pg_subscription s ON s.oid = sr.srsubid WHERE s.subname = %L', j.subscription)) r;
$$;

-- Run DDL under a short lock_timeout, retried (subtransactions).
CREATE FUNCTION tenancy.move_ddl(sql text, lock_timeout interval DEFAULT '200ms', max_attempts integer DEFAULT 50)
RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    attempt integer := 0;
BEGIN
    PERFORM set_config('lock_timeout', (extract(epoch FROM lock_timeout) * 1000)::bigint::text, true);
    LOOP
        attempt := attempt + 1;
        BEGIN
            -- plpgsql_check: dynamic SQL: generated DDL (quote_ident/%I, %L), previewed by move_plan().
            EXECUTE sql;
            RETURN;
        EXCEPTION WHEN lock_not_available THEN
            IF attempt >= max_attempts THEN
                RAISE EXCEPTION 'could not lock within % in % attempts', lock_timeout, max_attempts
                    USING ERRCODE = 'lock_not_available', DETAIL = sql;
            END IF;
        END;
        PERFORM pg_sleep(extract(epoch FROM tenancy.backoff_delay(attempt, interval '10ms', interval '500ms')));
    END LOOP;
END
$$;

------------------------------------------------------------------------------
-- The steps
------------------------------------------------------------------------------

-- start: publication (committed first: the slot's decoding must see it),
-- slot, the target's schema (one transaction there), the subscription with
-- the initial copy.  Each part checks whether it is done already: run it
-- again after an interruption and it resumes.
CREATE PROCEDURE tenancy.move_start(tenant text, home text, target_conninfo text, source_conninfo text DEFAULT NULL)
LANGUAGE plpgsql AS $$
DECLARE
    k text;
    j tenancy.move_jobs;
    bad text;
    have bigint;
BEGIN
    PERFORM pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', true);
    IF tenancy.in_transaction_block() THEN
        RAISE EXCEPTION 'CALL tenancy.move_start() cannot run inside a transaction block'
            USING ERRCODE = 'active_sql_transaction',
                  HINT = 'It commits after each part; run it on its own.';
    END IF;
    k := tenancy.tenant_key(tenant);
    PERFORM tenancy.move_check_home(home);
    IF target_conninfo IS NULL THEN
        RAISE EXCEPTION 'target_conninfo must not be null' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    PERFORM tenancy.move_dblink_schema();
    IF EXISTS (SELECT 1 FROM tenancy.tenant_homes h WHERE h.tenant = k) THEN
        RAISE EXCEPTION 'tenant "%" has moved already', tenant
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  DETAIL = format('Its home is "%s".', (SELECT h.home FROM tenancy.tenant_homes h WHERE h.tenant = k));
    END IF;
    SELECT string_agg(x.relation::text, ', ' ORDER BY x.relation::text) INTO bad
    FROM tenancy.move_replica_identity() x WHERE NOT x.covered;
    IF bad IS NOT NULL THEN
        RAISE EXCEPTION 'the replica identity of % does not cover the tenant column', bad
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  DETAIL = 'PostgreSQL refuses UPDATE and DELETE on a published table whose row filter uses a column outside its replica identity: every tenant''s writes would fail.',
                  HINT = 'Run the fixes: SELECT fix FROM tenancy.move_replica_identity() WHERE NOT covered;';
    END IF;
    SELECT * INTO j FROM tenancy.move_jobs m
    WHERE m.tenant = k AND m.state <> ALL (ARRAY['cut_over', 'rolled_back']);
    IF NOT FOUND THEN
        INSERT INTO tenancy.move_jobs (tenant, home, target_conninfo, source_conninfo, publication, subscription, slot)
        VALUES (k, home, target_conninfo, coalesce(source_conninfo, tenancy.move_default_source_conninfo()),
                tenancy.move_object_name(k), tenancy.move_object_name(k), tenancy.move_object_name(k))
        RETURNING * INTO j;
    ELSIF j.home <> home OR j.target_conninfo <> target_conninfo THEN
        RAISE EXCEPTION 'tenant "%" is being moved to "%" already', tenant, j.home
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = 'Resume it with the same home and target, or roll it back: SELECT tenancy.move_rollback(...);';
    ELSIF j.state <> 'planned' THEN
        RAISE NOTICE 'the move of tenant "%" is % already', tenant, j.state;
        RETURN;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_publication p WHERE p.pubname = j.publication) THEN
        PERFORM tenancy.move_ddl(tenancy.move_publication_sql(k));
    END IF;
    COMMIT;
    PERFORM pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', true);
    IF NOT EXISTS (SELECT 1 FROM pg_replication_slots s WHERE s.slot_name = j.slot) THEN
        PERFORM pg_create_logical_replication_slot(j.slot, 'pgoutput');
    END IF;
    COMMIT;
    PERFORM pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', true);
    -- The target's schema, unless a previous run made it (all or nothing).
    SELECT count(*) INTO have
    FROM tenancy.move_remote_query(j.target_conninfo,
             format('SELECT ARRAY[r] FROM unnest(%L::text[]) r WHERE to_regclass(r) IS NOT NULL',
                    (SELECT array_agg(m.relation::text) FROM tenancy.move_tables() m))) r;
    IF have = 0 THEN
        PERFORM tenancy.move_remote_exec(j.target_conninfo,
            'BEGIN; ' || (SELECT string_agg(s, ' ') FROM tenancy.move_target_schema_sql(k) s) || ' COMMIT;');
    ELSIF have < (SELECT count(*) FROM tenancy.move_tables()) THEN
        RAISE EXCEPTION 'the target has % of the % tables of the move', have, (SELECT count(*) FROM tenancy.move_tables())
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = 'Drop them at the target, or create the others: SELECT * FROM tenancy.move_target_schema_sql(...);';
    END IF;
    IF NOT EXISTS (SELECT 1 FROM tenancy.move_remote_query(j.target_conninfo,
                       format('SELECT ARRAY[subname::text] FROM pg_catalog.pg_subscription WHERE subname = %L'
                              ' AND subdbid = (SELECT oid FROM pg_catalog.pg_database WHERE datname = current_database())', j.subscription))) THEN
        PERFORM tenancy.move_remote_exec(j.target_conninfo, tenancy.move_subscription_sql(k, j.source_conninfo));
    END IF;
    UPDATE tenancy.move_jobs SET state = 'started', started_at = clock_timestamp() WHERE id = j.id;
    COMMIT;
END
$$;
COMMENT ON PROCEDURE tenancy.move_start(text, text, text, text) IS 'start a tenant move: publication, slot, target schema, subscription with the initial copy; resumable';

-- Drop what replicates (subscription at the target, slot and publication
-- here), each only if present.
CREATE FUNCTION tenancy.move_drop_replication(j tenancy.move_jobs) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    deadline timestamptz := clock_timestamp() + interval '30 s';
BEGIN
    IF EXISTS (SELECT 1 FROM tenancy.move_remote_query(j.target_conninfo,
                   format('SELECT ARRAY[subname::text] FROM pg_catalog.pg_subscription WHERE subname = %L'
                              ' AND subdbid = (SELECT oid FROM pg_catalog.pg_database WHERE datname = current_database())', j.subscription))) THEN
        -- DROP SUBSCRIPTION stops its workers and drops its slot and any
        -- table-sync slot here.
        PERFORM tenancy.move_remote_exec(j.target_conninfo, format('DROP SUBSCRIPTION %I', j.subscription));
    END IF;
    WHILE EXISTS (SELECT 1 FROM pg_replication_slots s WHERE s.slot_name = j.slot AND s.active) LOOP
        IF clock_timestamp() > deadline THEN
            RAISE EXCEPTION 'replication slot "%" is still in use', j.slot
                USING ERRCODE = 'object_in_use';
        END IF;
        PERFORM pg_sleep(0.05);
    END LOOP;
    PERFORM pg_drop_replication_slot(s.slot_name) FROM pg_replication_slots s WHERE s.slot_name = j.slot;
    IF EXISTS (SELECT 1 FROM pg_publication p WHERE p.pubname = j.publication) THEN
        PERFORM tenancy.move_ddl(format('DROP PUBLICATION %I', j.publication));
    END IF;
END
$$;

-- cut over: suspend the tenant (set_tenant refuses it), fence its writes
-- (every other route), wait out older transactions, take the fence
-- position, wait until the subscription has applied it, verify, set the
-- target's sequences, drop subscription, slot and publication, record the
-- new home.  Commits after each part; run it again after an interruption.
CREATE PROCEDURE tenancy.move_cutover(tenant text, timeout interval DEFAULT '60s')
LANGUAGE plpgsql AS $$
DECLARE
    j tenancy.move_jobs;
    f record;
    deadline timestamptz;
    bad text;
    v jsonb;
BEGIN
    PERFORM pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', true);
    IF tenancy.in_transaction_block() THEN
        RAISE EXCEPTION 'CALL tenancy.move_cutover() cannot run inside a transaction block'
            USING ERRCODE = 'active_sql_transaction',
                  HINT = 'It commits after each part; run it on its own.';
    END IF;
    j := tenancy.move_job(tenant);
    deadline := clock_timestamp() + timeout;
    IF j.state = 'planned' THEN
        RAISE EXCEPTION 'the move of tenant "%" has not started', tenant
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = 'CALL tenancy.move_start() again: it resumes.';
    END IF;
    IF j.state = 'started' THEN
        IF NOT tenancy.move_copied(j) THEN
            RAISE EXCEPTION 'the initial copy of tenant "%" is not done', tenant
                USING ERRCODE = 'object_not_in_prerequisite_state',
                      HINT = 'SELECT * FROM tenancy.move_wait(...) waits for it.';
        END IF;
        IF j.suspended_at IS NULL THEN
            UPDATE tenancy.move_jobs
               SET prior_status = (SELECT t.status FROM tenancy.tenants t WHERE t.id::text = j.tenant),
                   suspended_at = clock_timestamp()
             WHERE id = j.id;
            RAISE DEBUG 'move_cutover: suspended at %', clock_timestamp();
            PERFORM tenancy.suspend_tenant(j.tenant);
            COMMIT;
            PERFORM pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', true);
        END IF;
        FOR f IN SELECT * FROM tenancy.move_fence_sql(j.tenant) x
                 WHERE NOT EXISTS (SELECT 1 FROM pg_trigger g WHERE g.tgrelid = x.relation
                                     AND g.tgname = tenancy.move_object_name(j.tenant)::text || '_fence_i') LOOP
            PERFORM tenancy.move_ddl(f.sql);
        END LOOP;
        RAISE DEBUG 'move_cutover: fenced at %', clock_timestamp();
        UPDATE tenancy.move_jobs SET state = 'fenced' WHERE id = j.id;
        COMMIT;
        PERFORM pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', true);
        UPDATE tenancy.move_jobs SET fenced_at = clock_timestamp() WHERE id = j.id;
        COMMIT;
        PERFORM pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', true);
        j := tenancy.move_job(tenant);
    END IF;
    -- Transactions older than the fence may have written the tenant's rows
    -- without meeting it: wait until they are gone.
    WHILE EXISTS (SELECT 1 FROM pg_stat_activity a
                  WHERE a.backend_xid IS NOT NULL AND a.xact_start < j.fenced_at
                    AND a.pid <> pg_backend_pid()) LOOP
        IF clock_timestamp() > deadline THEN
            RAISE EXCEPTION 'transactions older than the fence of tenant "%" are still open after %', tenant, timeout
                USING ERRCODE = 'object_in_use',
                      DETAIL = (SELECT string_agg(a.pid::text, ', ') FROM pg_stat_activity a
                                WHERE a.backend_xid IS NOT NULL AND a.xact_start < j.fenced_at AND a.pid <> pg_backend_pid()),
                      HINT = 'The tenant stays suspended and fenced: CALL move_cutover() again, or roll back with move_rollback().';
        END IF;
        PERFORM pg_sleep(0.01);
    END LOOP;
    RAISE DEBUG 'move_cutover: older transactions gone at %', clock_timestamp();
    IF j.fence_lsn IS NULL THEN
        UPDATE tenancy.move_jobs SET fence_lsn = pg_current_wal_lsn() WHERE id = j.id RETURNING * INTO j;
        COMMIT;
        PERFORM pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', true);
    END IF;
    RAISE DEBUG 'move_cutover: fence position taken at %', clock_timestamp();
    WHILE coalesce((SELECT s.confirmed_flush_lsn < j.fence_lsn FROM pg_replication_slots s
                    WHERE s.slot_name = j.slot), true) LOOP
        IF NOT EXISTS (SELECT 1 FROM pg_replication_slots s WHERE s.slot_name = j.slot) THEN
            EXIT;   -- dropped by an interrupted run: verify decides
        END IF;
        IF clock_timestamp() > deadline THEN
            RAISE EXCEPTION 'the subscription of tenant "%" has not applied the fence position % after %', tenant, j.fence_lsn, timeout
                USING ERRCODE = 'object_not_in_prerequisite_state',
                      HINT = 'The tenant stays suspended and fenced: CALL move_cutover() again, or roll back with move_rollback().';
        END IF;
        PERFORM pg_sleep(0.01);
    END LOOP;
    RAISE DEBUG 'move_cutover: fence position applied at %', clock_timestamp();
    SELECT jsonb_agg(to_jsonb(x) ORDER BY x.relation), string_agg(x.relation, ', ') FILTER (WHERE NOT coalesce(x.equal, false))
      INTO v, bad FROM tenancy.move_verify(j.tenant) x;
    UPDATE tenancy.move_jobs SET last_check = v WHERE id = j.id;
    IF bad IS NOT NULL THEN
        COMMIT;
        RAISE EXCEPTION 'the tenant''s rows differ between source and target in %', bad
            USING ERRCODE = 'data_exception',
                  DETAIL = v::text,
                  HINT = 'Nothing was dropped: the tenant stays suspended and fenced; roll back with move_rollback(), or look at tenancy.move_verify().';
    END IF;
    RAISE DEBUG 'move_cutover: verified at %', clock_timestamp();
    -- Sequences: PostgreSQL 15 does not replicate them.
    FOR f IN SELECT DISTINCT m.relation, a.attname, ps.last_value
             FROM tenancy.move_tables() m
             JOIN pg_depend d ON d.refobjid = m.relation AND d.classid = 'pg_class'::regclass
                             AND d.refclassid = 'pg_class'::regclass AND d.deptype IN ('a', 'i')
             JOIN pg_sequence sq ON sq.seqrelid = d.objid
             JOIN pg_attribute a ON a.attrelid = d.refobjid AND a.attnum = d.refobjsubid
             JOIN pg_class sc ON sc.oid = d.objid
             JOIN pg_namespace sn ON sn.oid = sc.relnamespace
             JOIN pg_sequences ps ON ps.schemaname = sn.nspname AND ps.sequencename = sc.relname
             WHERE ps.last_value IS NOT NULL LOOP
        PERFORM tenancy.move_remote_query(j.target_conninfo,
            format('SELECT ARRAY[pg_catalog.setval(pg_catalog.pg_get_serial_sequence(%L, %L), %s, true)::text]',
                   f.relation::text, f.attname, f.last_value));
    END LOOP;
    RAISE DEBUG 'move_cutover: sequences set at %', clock_timestamp();
    PERFORM tenancy.move_drop_replication(j);
    INSERT INTO tenancy.tenant_homes (tenant, home, move_id) VALUES (j.tenant, j.home, j.id)
        ON CONFLICT ON CONSTRAINT tenant_homes_pkey DO UPDATE SET home = excluded.home, move_id = excluded.move_id, moved_at = now();
    UPDATE tenancy.tenants SET status = 'suspended' WHERE id::text = j.tenant;
    UPDATE tenancy.move_jobs SET state = 'cut_over', done_at = clock_timestamp() WHERE id = j.id;
    RAISE DEBUG 'move_cutover: replication dropped, home recorded at %', clock_timestamp();
    COMMIT;
END
$$;
COMMENT ON PROCEDURE tenancy.move_cutover(text, interval) IS 'cut a tenant move over: suspend, fence, wait, verify, sequences, drop the replication, record the new home; resumable';

-- rollback, before the cut-over is done: drop the subscription, slot and
-- publication, the fence, and give the tenant its status back.  The rows
-- copied to the target stay there (drop the target database or its tables).
CREATE FUNCTION tenancy.move_rollback(tenant text) RETURNS text
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp SET client_min_messages = warning AS $$
DECLARE
    j tenancy.move_jobs := tenancy.move_job(tenant);
    f record;
BEGIN
    PERFORM tenancy.move_drop_replication(j);
    FOR f IN SELECT * FROM tenancy.move_fence_sql(j.tenant) LOOP
        PERFORM tenancy.move_ddl(f.undo_sql);
    END LOOP;
    IF j.suspended_at IS NOT NULL AND j.prior_status = 'active' THEN
        PERFORM tenancy.activate_tenant(j.tenant);
    END IF;
    UPDATE tenancy.move_jobs SET state = 'rolled_back', done_at = clock_timestamp() WHERE id = j.id;
    RETURN j.state;
END
$$;
COMMENT ON FUNCTION tenancy.move_rollback(text) IS 'undo a move that is not cut over: subscription, slot, publication, fence, suspension; the source is as before; returns the state it was in';

CREATE VIEW tenancy.moves AS
    SELECT m.id, m.tenant, t.slug, m.home, m.state, m.publication, m.subscription, m.slot,
           m.fence_lsn,
           (SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), s.confirmed_flush_lsn)
            FROM pg_replication_slots s WHERE s.slot_name = m.slot) AS lag_bytes,
           m.last_check, m.created_by, m.created_at, m.started_at, m.suspended_at, m.fenced_at, m.done_at,
           m.done_at - m.suspended_at AS refused_for
    FROM tenancy.move_jobs m LEFT JOIN tenancy.tenants t ON t.id::text = m.tenant;
COMMENT ON VIEW tenancy.moves IS 'each tenant move: state, replication objects, lag, last verification, timings (no connection string)';
REVOKE ALL ON TABLE tenancy.moves FROM PUBLIC;

REVOKE EXECUTE ON FUNCTION
    tenancy.move_object_name(text),
    tenancy.move_tables(),
    tenancy.move_identity_covers(regclass, name),
    tenancy.move_replica_identity(),
    tenancy.move_target_schema_sql(text),
    tenancy.move_publication_sql(text),
    tenancy.move_default_source_conninfo(),
    tenancy.move_subscription_sql(text, text),
    tenancy.move_fence(),
    tenancy.move_fence_sql(text),
    tenancy.move_plan(text, text, text),
    tenancy.move_check_home(text),
    tenancy.move_dblink_schema(),
    tenancy.move_remote_exec(text, text),
    tenancy.move_remote_query(text, text),
    tenancy.move_checksums(text, text[], name[]),
    tenancy.move_job(text, boolean),
    tenancy.move_verify(text),
    tenancy.move_progress(text),
    tenancy.move_wait(text, interval, bigint),
    tenancy.move_copied(tenancy.move_jobs),
    tenancy.move_ddl(text, interval, integer),
    tenancy.move_drop_replication(tenancy.move_jobs),
    tenancy.move_rollback(text)
FROM PUBLIC;
REVOKE EXECUTE ON PROCEDURE
    tenancy.move_start(text, text, text, text),
    tenancy.move_cutover(text, interval)
FROM PUBLIC;

-- issue 18: per-tenant rollout
-- The rollout's objects (src/rollout.sql).

------------------------------------------------------------------------------
-- A table under tenancy row level security has one mode (tenancy.rls_tables,
-- the base mode).  A rollout overrides it for some tenants: an explicit
-- list (tenancy.rollout_tenants), and a percentage of tenants chosen by the
-- bucket of their key (tenancy.rollout_bucket()), which get the percentage's
-- mode.  The policy of such a table holds markers,
-- tenancy.rollout_mode_is(root, mode), which the planner replaces by the
-- answer for the tenant current when the query is planned (rollout.c): an
-- enforced tenant gets the plain equality policy.  Every change is recorded
-- in tenancy.rollout_log and can be undone (undo_rollout()).
------------------------------------------------------------------------------

CREATE TABLE tenancy.rollouts (
    relation     regclass PRIMARY KEY,
    buckets      integer NOT NULL
                 CONSTRAINT rollouts_buckets_check CHECK (buckets BETWEEN 0 AND 10000),
    percent_mode text NOT NULL
                 CONSTRAINT rollouts_percent_mode_check
                 CHECK (percent_mode OPERATOR(pg_catalog.=) ANY (ARRAY['migrating', 'shadow', 'enforce'])),
    changed_at   timestamptz NOT NULL DEFAULT pg_catalog.now()
);
COMMENT ON TABLE tenancy.rollouts IS 'per-tenant rollout: the tenants whose bucket (tenancy.rollout_bucket()) is below buckets (percent * 100) run the table in percent_mode';
SELECT pg_catalog.pg_extension_config_dump('tenancy.rollouts', '');
REVOKE ALL ON TABLE tenancy.rollouts FROM PUBLIC;

CREATE TABLE tenancy.rollout_tenants (
    relation   regclass NOT NULL,
    tenant     text NOT NULL,
    mode       text NOT NULL
               CONSTRAINT rollout_tenants_mode_check
               CHECK (mode OPERATOR(pg_catalog.=) ANY (ARRAY['migrating', 'shadow', 'enforce'])),
    changed_at timestamptz NOT NULL DEFAULT pg_catalog.now(),
    PRIMARY KEY (relation, tenant)
);
COMMENT ON TABLE tenancy.rollout_tenants IS 'per-tenant rollout: tenants (canonical keys) whose mode on the table is set explicitly, whatever the percentage';
SELECT pg_catalog.pg_extension_config_dump('tenancy.rollout_tenants', '');
REVOKE ALL ON TABLE tenancy.rollout_tenants FROM PUBLIC;

CREATE TABLE tenancy.rollout_log (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    relation         regclass NOT NULL,
    at               timestamptz NOT NULL DEFAULT pg_catalog.now(),
    by_role          name NOT NULL,
    op               text NOT NULL,
    tenants          text[],
    old_modes        text[],
    new_mode         text,
    old_percent      numeric(5,2) NOT NULL,
    old_percent_mode text,
    new_percent      numeric(5,2) NOT NULL,
    new_percent_mode text,
    undoes           bigint,
    undone_by        bigint
);
CREATE INDEX rollout_log_relation ON tenancy.rollout_log (relation, id);
COMMENT ON TABLE tenancy.rollout_log IS 'every rollout change: who, when, the tenants and their modes before, the percentage before and after; undo_rollout() reverts the latest one not undone';
SELECT pg_catalog.pg_extension_config_dump('tenancy.rollout_log', '');
REVOKE ALL ON TABLE tenancy.rollout_log FROM PUBLIC;

-- The marker and what the planner folds it into (rollout.c).
CREATE FUNCTION tenancy.rollout_mode_is(tbl regclass, mode text) RETURNS boolean
    AS 'MODULE_PATHNAME', 'tenancy_rollout_mode_is'
    LANGUAGE C STABLE PARALLEL SAFE;
COMMENT ON FUNCTION tenancy.rollout_mode_is(regclass, text) IS 'does the current tenant run the table in this mode (its rollout, else the table''s mode)? the policy marker the planner folds';
CREATE FUNCTION tenancy.rollout_const_true() RETURNS boolean
    AS 'MODULE_PATHNAME', 'tenancy_rollout_const_true'
    LANGUAGE C IMMUTABLE PARALLEL SAFE;
COMMENT ON FUNCTION tenancy.rollout_const_true() IS 'true: what the planner folds a marker into';
CREATE FUNCTION tenancy.rollout_const_false() RETURNS boolean
    AS 'MODULE_PATHNAME', 'tenancy_rollout_const_false'
    LANGUAGE C IMMUTABLE PARALLEL SAFE;
COMMENT ON FUNCTION tenancy.rollout_const_false() IS 'false: what the planner folds a marker into';

CREATE FUNCTION tenancy.rollout_bucket(tenant text) RETURNS integer
    AS 'MODULE_PATHNAME', 'tenancy_rollout_bucket'
    LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
COMMENT ON FUNCTION tenancy.rollout_bucket(text) IS 'bucket 0..9999 of a canonical tenant key: first 32 bits of md5(key) mod 10000; a tenant is in a percentage p when its bucket < p * 100';

CREATE FUNCTION tenancy.rollout_current_mode(tbl regclass) RETURNS text
    AS 'MODULE_PATHNAME', 'tenancy_rollout_current_mode'
    LANGUAGE C STABLE STRICT PARALLEL SAFE;
COMMENT ON FUNCTION tenancy.rollout_current_mode(regclass) IS 'the mode the table runs in for the current tenant';

CREATE FUNCTION tenancy.rollout_mode_of(tbl regclass, key text) RETURNS text
    AS 'MODULE_PATHNAME', 'tenancy_rollout_mode_of'
    LANGUAGE C STABLE PARALLEL SAFE;
REVOKE ALL ON FUNCTION tenancy.rollout_mode_of(regclass, text) FROM PUBLIC;

-- The table a rollout is recorded for: the root whose tenancy row level
-- security covers tbl (itself, or a partitioned or parent table above it).
CREATE FUNCTION tenancy.rollout_root(tbl regclass) RETURNS regclass
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    WITH RECURSIVE up(relid, level) AS (
        SELECT tbl::oid, 0
        UNION
        SELECT i.inhparent, up.level + 1 FROM up JOIN pg_inherits i ON i.inhrelid = up.relid
    )
    SELECT coalesce((SELECT t.relation FROM up JOIN tenancy.rls_tables t ON t.relation = up.relid AND t.root = t.relation
                      ORDER BY up.level LIMIT 1), tbl);
$$;

-- Has the table a rollout?  Read with catalog scans (rollout.c): the
-- generators run as the table owner, who cannot read the lists.
CREATE FUNCTION tenancy.rollout_active(root regclass) RETURNS boolean
    AS 'MODULE_PATHNAME', 'tenancy_rollout_active'
    LANGUAGE C STABLE STRICT PARALLEL SAFE;
COMMENT ON FUNCTION tenancy.rollout_active(regclass) IS 'has the table a per-tenant rollout (listed tenants, or a percentage)?';

-- Can some tenant run the table in this mode, with base mode base?
CREATE FUNCTION tenancy.rollout_may_be(root regclass, mode text, base text) RETURNS boolean
    AS 'MODULE_PATHNAME', 'tenancy_rollout_may_be'
    LANGUAGE C STABLE PARALLEL SAFE;
COMMENT ON FUNCTION tenancy.rollout_may_be(regclass, text, text) IS 'can some tenant run the table in this mode (the table''s mode base, the list, the percentage)?';

-- Are migrating mode's policies expected on the table (verify())?
CREATE FUNCTION tenancy.rollout_legacy_expected(root regclass, base text) RETURNS boolean
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT CASE WHEN tenancy.rollout_active(root) THEN tenancy.rollout_may_be(root, 'migrating', base)
                ELSE base = 'migrating' END;
$$;

-- The policy's USING and WITH CHECK on a table with a rollout
-- (tenancy.rls_quals() asks): equality, unless some tenant is in shadow
-- mode, then a CASE on the marker.
CREATE FUNCTION tenancy.rollout_quals(tbl regclass, column_name name, mode text,
                                      OUT using_expr text, OUT check_expr text)
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    chk record := tenancy.rls_check(tbl, column_name, mode);
    root regclass := tenancy.rollout_root(tbl);
    rootq text := (tenancy.rls_check(root, column_name, mode)).qualified;
    col text := quote_ident(column_name);
    eq text := format('%s OPERATOR(pg_catalog.=) %s', col, chk.accessor);
BEGIN
    IF tenancy.rollout_may_be(root, 'shadow', mode) THEN
        PERFORM tenancy.shadow_require_preload();
        using_expr := format('CASE WHEN tenancy.rollout_mode_is(%L::regclass, %L) THEN tenancy.shadow_read(%L::regclass, %s) ELSE %s END',
                             rootq, 'shadow', chk.qualified, col, eq);
        check_expr := format('CASE WHEN tenancy.rollout_mode_is(%L::regclass, %L) THEN tenancy.shadow_write(%L::regclass, %s) ELSE %s END',
                             rootq, 'shadow', chk.qualified, col, eq);
    ELSE
        using_expr := eq;
        check_expr := eq;
    END IF;
END
$$;

-- Migrating mode's policies on a table with a rollout: for the tenants in
-- migrating mode only (tenancy.rls_legacy_stmts() asks).
CREATE FUNCTION tenancy.rollout_legacy_stmts(qualified text, column_name name, roles text, mode text)
RETURNS text[]
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    root regclass := tenancy.rollout_root(qualified::regclass);
    m text;
BEGIN
    IF NOT tenancy.rollout_may_be(root, 'migrating', mode) THEN
        RETURN '{}'::text[];
    END IF;
    m := format('tenancy.rollout_mode_is(%L::regclass, %L)', (tenancy.rls_check(root, column_name, mode)).qualified, 'migrating');
    RETURN ARRAY[
        format('CREATE POLICY tenancy_policy_legacy_read ON %s AS PERMISSIVE FOR SELECT TO %s USING (%I IS NULL AND %s)',
               qualified, roles, column_name, m),
        format('CREATE POLICY tenancy_policy_legacy_update ON %s AS PERMISSIVE FOR UPDATE TO %s USING (%I IS NULL AND %s AND (SELECT tenancy.is_implicit_tenant())) WITH CHECK (%I IS NULL AND %s AND (SELECT tenancy.is_implicit_tenant()))',
               qualified, roles, column_name, m, column_name, m),
        format('CREATE POLICY tenancy_policy_legacy_delete ON %s AS PERMISSIVE FOR DELETE TO %s USING (%I IS NULL AND %s AND (SELECT tenancy.is_implicit_tenant()))',
               qualified, roles, column_name, m)];
END
$$;

-- Forget the rollout of a table (disable_rls()), or of dropped tables (NULL);
-- run by tenancy.rls_record_internal() as the extension owner.
CREATE FUNCTION tenancy.rollout_forget(tbl regclass) RETURNS void
LANGUAGE sql SET search_path = pg_catalog, pg_temp AS $$
    DELETE FROM tenancy.rollout_tenants t
     WHERE t.relation = tbl OR (tbl IS NULL AND NOT EXISTS (SELECT 1 FROM pg_class c WHERE c.oid = t.relation));
    DELETE FROM tenancy.rollouts t
     WHERE t.relation = tbl OR (tbl IS NULL AND NOT EXISTS (SELECT 1 FROM pg_class c WHERE c.oid = t.relation));
$$;
REVOKE ALL ON FUNCTION tenancy.rollout_forget(regclass) FROM PUBLIC;

-- Bookkeeping, run as the extension owner by tenancy.rollout_record() once
-- it has checked that the caller owns the table.
CREATE FUNCTION tenancy.rollout_record_internal(op text, tbl regclass, tenants text[], mode text,
                                                percent numeric, undo_id bigint, by_role name)
RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    keys text[];
    olds text[];
    cur tenancy.rollouts;
    old_pct numeric(5,2);
    new_pct numeric(5,2);
    new_pmode text;
    e tenancy.rollout_log;
    new_id bigint;
BEGIN
    -- Rows left behind by dropped tables must not claim a reused OID.
    DELETE FROM tenancy.rollout_tenants t WHERE NOT EXISTS (SELECT 1 FROM pg_class c WHERE c.oid = t.relation);
    DELETE FROM tenancy.rollouts t WHERE NOT EXISTS (SELECT 1 FROM pg_class c WHERE c.oid = t.relation);
    PERFORM tenancy.rls_root_row(tbl);     -- 42704 unless covered, 55000 for a partition
    SELECT * INTO cur FROM tenancy.rollouts r WHERE r.relation = tbl;
    old_pct := coalesce(cur.buckets, 0) / 100.0;
    new_pct := old_pct;
    new_pmode := cur.percent_mode;

    IF op = 'tenants' THEN
        IF tenants IS NULL OR cardinality(tenants) = 0 OR array_position(tenants, NULL) IS NOT NULL THEN
            RAISE EXCEPTION 'tenants must be a non-empty array without NULL'
                USING ERRCODE = 'null_value_not_allowed';
        END IF;
        IF mode IS NOT NULL AND mode <> ALL (ARRAY['migrating', 'shadow', 'enforce']) THEN
            RAISE EXCEPTION 'unknown row level security mode "%"', mode
                USING ERRCODE = 'invalid_parameter_value',
                      HINT = 'The modes are shadow, migrating and enforce; NULL puts the tenants back on the percentage and the table''s mode.';
        END IF;
        SELECT array_agg(DISTINCT tenancy.tenant_key(u.t) ORDER BY tenancy.tenant_key(u.t)) INTO keys FROM unnest(tenants) u(t);
        SELECT array_agg(rt.mode ORDER BY k.ord) INTO olds
          FROM unnest(keys) WITH ORDINALITY k(key, ord)
          LEFT JOIN tenancy.rollout_tenants rt ON rt.relation = tbl AND rt.tenant = k.key;
        IF mode IS NULL THEN
            DELETE FROM tenancy.rollout_tenants rt WHERE rt.relation = tbl AND rt.tenant = ANY (keys);
        ELSE
            INSERT INTO tenancy.rollout_tenants AS rt (relation, tenant, mode)
            SELECT tbl, k, mode FROM unnest(keys) k
            ON CONFLICT (relation, tenant) DO UPDATE SET mode = EXCLUDED.mode, changed_at = pg_catalog.now();
        END IF;
        INSERT INTO tenancy.rollout_log (relation, by_role, op, tenants, old_modes, new_mode,
                                         old_percent, old_percent_mode, new_percent, new_percent_mode)
        VALUES (tbl, by_role, op, keys, olds, mode, old_pct, cur.percent_mode, new_pct, new_pmode);
    ELSIF op = 'percent' THEN
        IF percent IS NULL OR percent < 0 OR percent > 100 OR round(percent, 2) <> percent THEN
            RAISE EXCEPTION 'percent must be between 0 and 100, with at most two decimals, not %', coalesce(percent::text, 'NULL')
                USING ERRCODE = 'invalid_parameter_value';
        END IF;
        IF mode IS NULL OR mode <> ALL (ARRAY['migrating', 'shadow', 'enforce']) THEN
            RAISE EXCEPTION 'unknown row level security mode "%"', coalesce(mode, 'NULL')
                USING ERRCODE = 'invalid_parameter_value',
                      HINT = 'The modes are shadow, migrating and enforce.';
        END IF;
        new_pct := percent;
        new_pmode := mode;
        IF percent = 0 THEN
            DELETE FROM tenancy.rollouts r WHERE r.relation = tbl;
        ELSE
            INSERT INTO tenancy.rollouts AS r (relation, buckets, percent_mode)
            VALUES (tbl, (percent * 100)::integer, mode)
            ON CONFLICT (relation) DO UPDATE SET buckets = EXCLUDED.buckets, percent_mode = EXCLUDED.percent_mode,
                                                 changed_at = pg_catalog.now();
        END IF;
        INSERT INTO tenancy.rollout_log (relation, by_role, op, old_percent, old_percent_mode, new_percent, new_percent_mode)
        VALUES (tbl, by_role, op, old_pct, cur.percent_mode, new_pct, new_pmode);
    ELSIF op = 'clear' THEN
        SELECT array_agg(rt.tenant ORDER BY rt.tenant), array_agg(rt.mode ORDER BY rt.tenant) INTO keys, olds
          FROM tenancy.rollout_tenants rt WHERE rt.relation = tbl;
        DELETE FROM tenancy.rollout_tenants rt WHERE rt.relation = tbl;
        DELETE FROM tenancy.rollouts r WHERE r.relation = tbl;
        INSERT INTO tenancy.rollout_log (relation, by_role, op, tenants, old_modes, old_percent, old_percent_mode,
                                         new_percent, new_percent_mode)
        VALUES (tbl, by_role, op, keys, olds, old_pct, cur.percent_mode, 0, NULL);
    ELSIF op = 'undo' THEN
        SELECT * INTO e FROM tenancy.rollout_log l
         WHERE l.relation = tbl AND l.op <> 'undo' AND l.undone_by IS NULL
           AND (undo_id IS NULL OR l.id = undo_id)
         ORDER BY l.id DESC LIMIT 1;
        IF NOT FOUND OR (undo_id IS NOT NULL AND EXISTS (SELECT 1 FROM tenancy.rollout_log l
                                                         WHERE l.relation = tbl AND l.op <> 'undo'
                                                           AND l.undone_by IS NULL AND l.id > undo_id)) THEN
            RAISE EXCEPTION 'table % has no rollout change to undo%', tbl,
                    CASE WHEN undo_id IS NOT NULL THEN format(' with id %s (or a later change is not undone)', undo_id) ELSE '' END
                USING ERRCODE = 'object_not_in_prerequisite_state',
                      HINT = 'tenancy.rollout_log lists the changes; undo_rollout() reverts the latest one not undone.';
        END IF;
        SELECT array_agg(rt.mode ORDER BY k.ord) INTO olds
          FROM unnest(e.tenants) WITH ORDINALITY k(key, ord)
          LEFT JOIN tenancy.rollout_tenants rt ON rt.relation = tbl AND rt.tenant = k.key;
        FOR i IN 1 .. coalesce(cardinality(e.tenants), 0) LOOP
            IF e.old_modes[i] IS NULL THEN
                DELETE FROM tenancy.rollout_tenants rt WHERE rt.relation = tbl AND rt.tenant = e.tenants[i];
            ELSE
                INSERT INTO tenancy.rollout_tenants AS rt (relation, tenant, mode)
                VALUES (tbl, e.tenants[i], e.old_modes[i])
                ON CONFLICT (relation, tenant) DO UPDATE SET mode = EXCLUDED.mode, changed_at = pg_catalog.now();
            END IF;
        END LOOP;
        IF e.old_percent = 0 THEN
            DELETE FROM tenancy.rollouts r WHERE r.relation = tbl;
        ELSE
            INSERT INTO tenancy.rollouts AS r (relation, buckets, percent_mode)
            VALUES (tbl, (e.old_percent * 100)::integer, e.old_percent_mode)
            ON CONFLICT (relation) DO UPDATE SET buckets = EXCLUDED.buckets, percent_mode = EXCLUDED.percent_mode,
                                                 changed_at = pg_catalog.now();
        END IF;
        INSERT INTO tenancy.rollout_log (relation, by_role, op, tenants, old_modes, old_percent, old_percent_mode,
                                         new_percent, new_percent_mode, undoes)
        VALUES (tbl, by_role, op, e.tenants, olds, old_pct, cur.percent_mode, e.old_percent,
                CASE WHEN e.old_percent > 0 THEN e.old_percent_mode END, e.id)
        RETURNING id INTO new_id;
        UPDATE tenancy.rollout_log l SET undone_by = new_id WHERE l.id = e.id;
    ELSE
        RAISE EXCEPTION 'unknown operation "%"', op USING ERRCODE = 'invalid_parameter_value';
    END IF;
END
$$;
REVOKE ALL ON FUNCTION tenancy.rollout_record_internal(text, regclass, text[], text, numeric, bigint, name) FROM PUBLIC;

-- Checks that the caller owns the table, then runs rollout_record_internal()
-- as the extension owner and invalidates the table's plans.
CREATE FUNCTION tenancy.rollout_record(op text, tbl regclass, tenants text[] DEFAULT NULL, mode text DEFAULT NULL,
                                       percent numeric DEFAULT NULL, undo_id bigint DEFAULT NULL)
RETURNS void
    AS 'MODULE_PATHNAME', 'tenancy_rollout_record'
    LANGUAGE C VOLATILE;
COMMENT ON FUNCTION tenancy.rollout_record(text, regclass, text[], text, numeric, bigint) IS 'record a rollout change (tenants, percent, clear, undo) in tenancy.rollouts, rollout_tenants and rollout_log; the caller must own the table';

-- The statements of a change: the record, then the policies as set_mode()
-- makes them for the state after it.  That state is computed by running the
-- record in a subtransaction that is rolled back.
CREATE FUNCTION tenancy.rollout_stmts(tbl regclass, record_stmt text) RETURNS text[]
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    r tenancy.rls_tables := tenancy.rls_root_row(tbl);
    stmts text[];
BEGIN
    -- plpgsql_check: VOLATILE: runs the record in a subtransaction, then rolls it back.
    BEGIN
        -- plpgsql_check: built by the rollout *_sql() functions, every value through %L.
        EXECUTE record_stmt;
        stmts := ARRAY[record_stmt] || tenancy.rls_mode_stmts(tbl, r.mode);
        RAISE EXCEPTION 'rolled back' USING ERRCODE = 'TNR01';
    EXCEPTION WHEN SQLSTATE 'TNR01' THEN
        NULL;
    END;
    RETURN stmts;
END
$$;

-- Run the statements under a short lock_timeout (ALTER POLICY locks the
-- table), retrying a few times when the lock is not granted in time.
CREATE FUNCTION tenancy.rollout_run(stmts text[]) RETURNS text
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    prior text := current_setting('lock_timeout');
    attempt integer := 0;
    s text;
BEGIN
    LOOP
        attempt := attempt + 1;
        BEGIN
            PERFORM set_config('lock_timeout', '100ms', true);
            FOREACH s IN ARRAY stmts LOOP
                -- plpgsql_check: built by rollout_stmts(), every name through %I/%L.
                EXECUTE s;
            END LOOP;
            PERFORM set_config('lock_timeout', prior, true);
            EXIT;
        EXCEPTION WHEN lock_not_available THEN
            PERFORM set_config('lock_timeout', prior, true);
            IF attempt >= 5 THEN
                RAISE;
            END IF;
            PERFORM pg_sleep(0.05 * attempt);
        END;
    END LOOP;
    RETURN tenancy.rls_script(stmts);
END
$$;

CREATE FUNCTION tenancy.rollout_tenants_stmt(tbl regclass, tenants text[], mode text) RETURNS text
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    keys text[];
BEGIN
    IF tenants IS NULL OR cardinality(tenants) = 0 OR array_position(tenants, NULL) IS NOT NULL THEN
        RAISE EXCEPTION 'tenants must be a non-empty array without NULL'
            USING ERRCODE = 'null_value_not_allowed';
    END IF;
    IF mode IS NOT NULL AND mode <> ALL (ARRAY['migrating', 'shadow', 'enforce']) THEN
        RAISE EXCEPTION 'unknown row level security mode "%"', mode
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'The modes are shadow, migrating and enforce; NULL puts the tenants back on the percentage and the table''s mode.';
    END IF;
    IF mode = 'shadow' THEN
        PERFORM tenancy.shadow_require_preload();
    END IF;
    -- The tenants as given: rollout_record_internal() resolves them (slugs
    -- and keys) in the registry, which the caller cannot read.
    SELECT array_agg(DISTINCT u.t ORDER BY u.t) INTO keys FROM unnest(tenants) u(t);
    RETURN format('SELECT tenancy.rollout_record(''tenants'', %L::regclass, %L::text[], %L)',
                  (SELECT format('%I.%I', n.nspname, c.relname) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                    WHERE c.oid = tbl), keys, mode);
END
$$;

CREATE FUNCTION tenancy.rollout_percent_stmt(tbl regclass, percent numeric, mode text) RETURNS text
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF percent IS NULL OR percent < 0 OR percent > 100 OR round(percent, 2) <> percent THEN
        RAISE EXCEPTION 'percent must be between 0 and 100, with at most two decimals, not %', coalesce(percent::text, 'NULL')
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF mode IS NULL OR mode <> ALL (ARRAY['migrating', 'shadow', 'enforce']) THEN
        RAISE EXCEPTION 'unknown row level security mode "%"', coalesce(mode, 'NULL')
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'The modes are shadow, migrating and enforce.';
    END IF;
    IF mode = 'shadow' THEN
        PERFORM tenancy.shadow_require_preload();
    END IF;
    RETURN format('SELECT tenancy.rollout_record(''percent'', %L::regclass, NULL, %L, %s)',
                  (SELECT format('%I.%I', n.nspname, c.relname) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                    WHERE c.oid = tbl), mode, percent);
END
$$;

-- clear, or undo (the latest change not undone: rollout_record_internal()
-- finds it, as the caller cannot read the log).
CREATE FUNCTION tenancy.rollout_op_stmt(tbl regclass, op text) RETURNS text
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT format('SELECT tenancy.rollout_record(%L, %L::regclass)', op,
                  (SELECT format('%I.%I', n.nspname, c.relname) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                    WHERE c.oid = tbl));
$$;

-- squawk: ignore prefer-robust-stmts: the policy statements are computed from the catalog and the rollout (a rerun emits them again); a transaction is the DBA's choice
CREATE FUNCTION tenancy.set_tenant_mode_sql(tbl regclass, tenants text[], mode text) RETURNS text
LANGUAGE sql SET search_path = pg_catalog, pg_temp AS $$
    SELECT tenancy.preview_wrap(tenancy.rls_script(
        tenancy.rollout_stmts(tbl, tenancy.rollout_tenants_stmt(tenancy.rls_root_row_relation(tbl), tenants, mode))));
$$;
COMMENT ON FUNCTION tenancy.set_tenant_mode_sql(regclass, text[], text) IS 'the statements set_tenant_mode() would run';

CREATE FUNCTION tenancy.set_tenant_mode(tbl regclass, tenants text[], mode text) RETURNS text
LANGUAGE sql SET search_path = pg_catalog, pg_temp AS $$
    SELECT tenancy.rollout_run(
        tenancy.rollout_stmts(tbl, tenancy.rollout_tenants_stmt(tenancy.rls_root_row_relation(tbl), tenants, mode)));
$$;
COMMENT ON FUNCTION tenancy.set_tenant_mode(regclass, text[], text) IS 'run the table in this mode for these tenants (NULL: back to the percentage and the table''s mode), in one transaction; recorded; returns the statements it ran';

-- squawk: ignore prefer-robust-stmts: as set_tenant_mode_sql()
CREATE FUNCTION tenancy.set_rollout_percent_sql(tbl regclass, percent numeric, mode text DEFAULT 'enforce') RETURNS text
LANGUAGE sql SET search_path = pg_catalog, pg_temp AS $$
    SELECT tenancy.preview_wrap(tenancy.rls_script(
        tenancy.rollout_stmts(tbl, tenancy.rollout_percent_stmt(tenancy.rls_root_row_relation(tbl), percent, mode))));
$$;
COMMENT ON FUNCTION tenancy.set_rollout_percent_sql(regclass, numeric, text) IS 'the statements set_rollout_percent() would run';

CREATE FUNCTION tenancy.set_rollout_percent(tbl regclass, percent numeric, mode text DEFAULT 'enforce') RETURNS text
LANGUAGE sql SET search_path = pg_catalog, pg_temp AS $$
    SELECT tenancy.rollout_run(
        tenancy.rollout_stmts(tbl, tenancy.rollout_percent_stmt(tenancy.rls_root_row_relation(tbl), percent, mode)));
$$;
COMMENT ON FUNCTION tenancy.set_rollout_percent(regclass, numeric, text) IS 'run the table in this mode for a stable percentage of tenants (by tenancy.rollout_bucket()); recorded; returns the statements it ran';

-- squawk: ignore prefer-robust-stmts: as set_tenant_mode_sql()
CREATE FUNCTION tenancy.clear_rollout_sql(tbl regclass) RETURNS text
LANGUAGE sql SET search_path = pg_catalog, pg_temp AS $$
    SELECT tenancy.preview_wrap(tenancy.rls_script(
        tenancy.rollout_stmts(tbl, tenancy.rollout_op_stmt(tenancy.rls_root_row_relation(tbl), 'clear'))));
$$;
COMMENT ON FUNCTION tenancy.clear_rollout_sql(regclass) IS 'the statements clear_rollout() would run';

CREATE FUNCTION tenancy.clear_rollout(tbl regclass) RETURNS text
LANGUAGE sql SET search_path = pg_catalog, pg_temp AS $$
    SELECT tenancy.rollout_run(
        tenancy.rollout_stmts(tbl, tenancy.rollout_op_stmt(tenancy.rls_root_row_relation(tbl), 'clear')));
$$;
COMMENT ON FUNCTION tenancy.clear_rollout(regclass) IS 'end the rollout: every tenant runs the table in its mode again (the plain policy); recorded, undoable';

-- squawk: ignore prefer-robust-stmts: as set_tenant_mode_sql()
CREATE FUNCTION tenancy.undo_rollout_sql(tbl regclass) RETURNS text
LANGUAGE sql SET search_path = pg_catalog, pg_temp AS $$
    SELECT tenancy.preview_wrap(tenancy.rls_script(
        tenancy.rollout_stmts(tbl, tenancy.rollout_op_stmt(tenancy.rls_root_row_relation(tbl), 'undo'))));
$$;
COMMENT ON FUNCTION tenancy.undo_rollout_sql(regclass) IS 'the statements undo_rollout() would run';

CREATE FUNCTION tenancy.undo_rollout(tbl regclass) RETURNS text
LANGUAGE sql SET search_path = pg_catalog, pg_temp AS $$
    SELECT tenancy.rollout_run(
        tenancy.rollout_stmts(tbl, tenancy.rollout_op_stmt(tenancy.rls_root_row_relation(tbl), 'undo')));
$$;
COMMENT ON FUNCTION tenancy.undo_rollout(regclass) IS 'revert the latest rollout change of the table not undone yet (repeat to go further back); recorded';

-- tbl itself once checked to be a covered root (42704, 55000 otherwise).
CREATE FUNCTION tenancy.rls_root_row_relation(tbl regclass) RETURNS regclass
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT (tenancy.rls_root_row(tbl)).relation;
$$;

CREATE FUNCTION tenancy.tenant_mode(tbl regclass, tenant text DEFAULT NULL) RETURNS text
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT CASE WHEN tenant IS NULL THEN tenancy.rollout_current_mode(tenancy.rls_root_row_relation(tbl))
                ELSE tenancy.rollout_mode_of(tenancy.rls_root_row_relation(tbl), tenancy.tenant_key(tenant)) END;
$$;
COMMENT ON FUNCTION tenancy.tenant_mode(regclass, text) IS 'the mode the table runs in for a tenant (by key or slug; NULL: the current tenant)';

CREATE VIEW tenancy.rollout_state AS
SELECT t.relation, t.mode AS base_mode,
       (coalesce(r.buckets, 0) / 100.0)::numeric(5,2) AS percent,
       CASE WHEN r.buckets > 0 THEN r.percent_mode END AS percent_mode,
       (SELECT count(*) FROM tenancy.rollout_tenants x WHERE x.relation = t.relation AND x.mode = 'enforce') AS enforce_tenants,
       (SELECT count(*) FROM tenancy.rollout_tenants x WHERE x.relation = t.relation AND x.mode = 'shadow') AS shadow_tenants,
       (SELECT count(*) FROM tenancy.rollout_tenants x WHERE x.relation = t.relation AND x.mode = 'migrating') AS migrating_tenants,
       (SELECT max(l.at) FROM tenancy.rollout_log l WHERE l.relation = t.relation) AS last_change
  FROM tenancy.rls_tables t
  LEFT JOIN tenancy.rollouts r ON r.relation = t.relation
 WHERE t.relation = t.root AND tenancy.rollout_active(t.relation);
COMMENT ON VIEW tenancy.rollout_state IS 'tables with a per-tenant rollout: the table''s mode, the percentage and its mode, how many tenants are listed per mode';
REVOKE ALL ON TABLE tenancy.rollout_state FROM PUBLIC;

-- verify() check rollout: one row per table with a rollout.
CREATE FUNCTION tenancy.verify_rollout(rel regclass)
RETURNS TABLE (check_name text, relation regclass, status text, rows_affected bigint,
               detail text, fix text)
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
SET row_security = off
AS $$
#variable_conflict use_column
DECLARE
    s record;
BEGIN
    -- No rollout: no row, and no privilege needed (catalog scans, rollout.c);
    -- a role verify() is delegated to needs SELECT on tenancy.rollout_state
    -- for a table with one.
    IF NOT tenancy.rollout_active(rel) THEN
        RETURN;
    END IF;
    SELECT * INTO s FROM tenancy.rollout_state rs WHERE rs.relation = rel;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    check_name := 'rollout'; relation := rel;
    rows_affected := s.enforce_tenants + s.shadow_tenants + s.migrating_tenants;
    status := 'warning';
    detail := format('per-tenant rollout: table mode %s; %s%% of tenants in %s; listed: %s enforce, %s shadow, %s migrating; finish with clear_rollout() and set_mode(enforce) once every tenant is enforced',
                     s.base_mode, s.percent, coalesce(s.percent_mode, '-'),
                     s.enforce_tenants, s.shadow_tenants, s.migrating_tenants);
    fix := format('SELECT tenancy.clear_rollout(%L); SELECT tenancy.set_mode(%L, %L);', rel::text, rel::text, 'enforce');
    RETURN NEXT;
END
$$;
COMMENT ON FUNCTION tenancy.verify_rollout(regclass) IS 'verify() check rollout: its report row, for a table with a per-tenant rollout';

-- The change functions are executable by every role: they run as the
-- caller, and rollout_record() and set_mode()'s statements check that the
-- caller owns the table.  tenant_mode() tells any tenant's mode: not PUBLIC.
REVOKE EXECUTE ON FUNCTION
    tenancy.verify_rollout(regclass),
    tenancy.tenant_mode(regclass, text)
FROM PUBLIC;

-- Tables with a rollout in the policy generators and checks (src/rls.sql, src/verify.sql).
CREATE OR REPLACE FUNCTION tenancy.rls_record_internal(op text, tbl regclass, root regclass,
                                            column_name name, mode text)
RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    cur_stage text;
    reg_column name;
    found_reg boolean;
    r record;
BEGIN
    IF op = 'forget_dropped' THEN
        DELETE FROM tenancy.rls_tables t
         WHERE NOT EXISTS (SELECT 1 FROM pg_class c WHERE c.oid = t.relation);
        PERFORM tenancy.rollout_forget(NULL);
        RETURN;
    END IF;

    -- Rows left behind by dropped tables must not claim a reused OID.
    DELETE FROM tenancy.rls_tables t
     WHERE NOT EXISTS (SELECT 1 FROM pg_class c WHERE c.oid = t.relation);

    IF op = 'register' THEN
        IF mode IS NULL OR mode <> ALL (ARRAY['migrating', 'shadow', 'enforce']) THEN
            RAISE EXCEPTION 'unknown row level security mode "%"', mode
                USING ERRCODE = 'invalid_parameter_value',
                      HINT = 'The modes are shadow, migrating and enforce.';
        END IF;
        -- Only what enable_rls() records (rls_record() is executable by
        -- every role, and the worker and verify() trust this table): a table
        -- with a tenant column of the key type, under its own root or the
        -- partitioned table it belongs to.
        PERFORM tenancy.rls_check(tbl, column_name, mode);
        IF tbl <> root THEN
            PERFORM tenancy.rls_check(root, column_name, mode);
            IF tbl NOT IN (SELECT tenancy.rls_members(root)) THEN
                RAISE EXCEPTION 'table % is not a partition of %', tbl, root
                    USING ERRCODE = 'invalid_parameter_value',
                          HINT = 'Register a partition with the partitioned table above it, as tenancy.enable_rls() does.';
            END IF;
        END IF;
        SELECT t.stage, t.column_name INTO cur_stage, reg_column
          FROM tenancy.tables t WHERE t.relation = tbl;
        found_reg := FOUND;
        IF tbl = root AND found_reg AND reg_column <> column_name THEN
            RAISE EXCEPTION 'table % is registered with tenant column "%", not "%"', tbl, reg_column, column_name
                USING ERRCODE = 'invalid_parameter_value',
                      HINT = format('Pass column_name => %L.', reg_column);
        END IF;
        INSERT INTO tenancy.rls_tables AS t (relation, root, column_name, mode, prior_rls, prior_force, prior_stage)
        SELECT tbl, root, column_name, mode, c.relrowsecurity, c.relforcerowsecurity,
               CASE WHEN tbl = root THEN cur_stage END
          FROM pg_class c WHERE c.oid = tbl
        ON CONFLICT (relation) DO UPDATE SET mode = EXCLUDED.mode
         WHERE t.root = EXCLUDED.root AND t.column_name = EXCLUDED.column_name;
        IF NOT FOUND THEN
            RAISE EXCEPTION 'table % already carries the tenancy policy of another table or column', tbl
                USING ERRCODE = 'duplicate_object',
                      HINT = 'Call tenancy.disable_rls() on it first.';
        END IF;
        IF tbl = root THEN
            INSERT INTO tenancy.tables (relation, column_name, stage)
            VALUES (tbl, column_name, mode)
            ON CONFLICT (relation) DO UPDATE SET stage = EXCLUDED.stage;
        END IF;
    ELSIF op = 'unregister' THEN
        DELETE FROM tenancy.rls_tables t WHERE t.relation = tbl RETURNING * INTO r;
        IF FOUND AND r.relation = r.root THEN
            PERFORM tenancy.rollout_forget(tbl);     -- the rollout goes with the policy
            IF r.prior_stage IS NOT NULL THEN
                UPDATE tenancy.tables t SET stage = r.prior_stage WHERE t.relation = tbl;
            ELSE
                -- enable_rls() registered the table: forget it, unless another
                -- feature has recorded something about it since (a source, or
                -- rows referencing it).
                BEGIN
                    DELETE FROM tenancy.tables t WHERE t.relation = tbl AND t.source IS NULL;
                EXCEPTION WHEN foreign_key_violation THEN
                    NULL;
                END;
                UPDATE tenancy.tables t SET stage = 'expand' WHERE t.relation = tbl;
            END IF;
        END IF;
    ELSE
        RAISE EXCEPTION 'unknown operation "%"', op USING ERRCODE = 'invalid_parameter_value';
    END IF;
END
$$;

CREATE OR REPLACE FUNCTION tenancy.rls_quals(tbl regclass, column_name name, mode text,
                                  OUT using_expr text, OUT check_expr text)
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    chk record := tenancy.rls_check(tbl, column_name, mode);
    col text := quote_ident(column_name);
BEGIN
    -- a table with a per-tenant rollout: see tenancy.rollout_quals()
    IF tenancy.rollout_active(tenancy.rollout_root(tbl)) THEN
        SELECT q.using_expr, q.check_expr INTO using_expr, check_expr
          FROM tenancy.rollout_quals(tbl, column_name, mode) q;
        RETURN;
    END IF;
    IF mode = 'enforce' THEN
        using_expr := format('%s OPERATOR(pg_catalog.=) %s', col, chk.accessor);
        check_expr := using_expr;
    ELSIF mode = 'migrating' THEN
        -- rows whose tenant is NULL: see tenancy.rls_legacy_stmts()
        using_expr := format('%s OPERATOR(pg_catalog.=) %s', col, chk.accessor);
        check_expr := using_expr;
    ELSE
        using_expr := format('tenancy.shadow_read(%L::regclass, %s)', chk.qualified, col);
        check_expr := format('tenancy.shadow_write(%L::regclass, %s)', chk.qualified, col);
    END IF;
END
$$;

CREATE OR REPLACE FUNCTION tenancy.rls_legacy_stmts(qualified text, column_name name, roles text, mode text)
RETURNS text[]
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    -- a table with a per-tenant rollout: see tenancy.rollout_legacy_stmts()
    RETURN CASE WHEN tenancy.rollout_active(tenancy.rollout_root(qualified::regclass))
                THEN tenancy.rollout_legacy_stmts(qualified, column_name, roles, mode)
                WHEN mode = 'migrating' THEN ARRAY[
        format('CREATE POLICY tenancy_policy_legacy_read ON %s AS PERMISSIVE FOR SELECT TO %s USING (%I IS NULL)',
               qualified, roles, column_name),
        format('CREATE POLICY tenancy_policy_legacy_update ON %s AS PERMISSIVE FOR UPDATE TO %s USING (%I IS NULL AND (SELECT tenancy.is_implicit_tenant())) WITH CHECK (%I IS NULL AND (SELECT tenancy.is_implicit_tenant()))',
               qualified, roles, column_name, column_name),
        format('CREATE POLICY tenancy_policy_legacy_delete ON %s AS PERMISSIVE FOR DELETE TO %s USING (%I IS NULL AND (SELECT tenancy.is_implicit_tenant()))',
               qualified, roles, column_name)]
    ELSE '{}'::text[] END;
END
$$;

CREATE OR REPLACE FUNCTION tenancy.rls_advisories(tbl regclass, column_name name DEFAULT NULL)
RETURNS TABLE (kind text, object text, detail text)
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    col name := coalesce(column_name,
                         (SELECT t.column_name FROM tenancy.rls_tables t WHERE t.relation = tbl),
                         'tenant_id');
    relname name := (SELECT c.relname FROM pg_class c WHERE c.oid = tbl);
    attno int2 := (SELECT a.attnum FROM pg_attribute a
                    WHERE a.attrelid = tbl AND a.attname = col AND NOT a.attisdropped);
    name_re text := '\m' || regexp_replace(lower(relname), '([^a-z0-9_])', '\\\1', 'g') || '\M';
BEGIN
    IF relname IS NULL THEN
        RAISE EXCEPTION 'relation with OID % does not exist', tbl::oid USING ERRCODE = 'undefined_table';
    END IF;

    -- Tables (the table, its partitions and children) with no index led by the tenant column.
    RETURN QUERY
    SELECT 'missing_index', m.relid::regclass::text,
           format('no index starts with column %I: tenant-scoped queries read the whole table', col)
      FROM tenancy.rls_tree(tbl) m
      JOIN pg_class c ON c.oid = m.relid
     WHERE c.relkind IN ('r', 'p')
       AND NOT EXISTS (SELECT 1 FROM pg_index i JOIN pg_attribute a
                               ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0]
                        WHERE i.indrelid = m.relid AND a.attname = col)
     ORDER BY m.level, c.relname;

    -- Partitions and inheritance children that cannot carry row security.
    RETURN QUERY
    SELECT 'foreign_partition', m.relid::regclass::text,
           'a foreign table cannot have row level security: rows read through it are not filtered'
      FROM tenancy.rls_tree(tbl) m JOIN pg_class c ON c.oid = m.relid
     WHERE c.relkind = 'f' ORDER BY c.relname;

    -- Inheritance children without the policy: read directly, they show
    -- every tenant's rows to roles with SELECT on them.
    RETURN QUERY
    SELECT 'uncovered_inheritance_child', m.relid::regclass::text,
           format('inherits from %s but has no tenancy_policy: roles with SELECT on it read every tenant''s rows; %s covers it',
                  tbl::text,
                  CASE WHEN EXISTS (SELECT 1 FROM tenancy.rls_tables t WHERE t.relation = tbl AND t.root = tbl)
                       THEN 'tenancy.set_mode() on the table' ELSE 'tenancy.enable_rls() on the table' END)
      FROM tenancy.rls_tree(tbl) m JOIN pg_class c ON c.oid = m.relid
     WHERE m.level > 0 AND c.relkind = 'r' AND NOT c.relispartition
       AND NOT EXISTS (SELECT 1 FROM pg_policy p WHERE p.polrelid = m.relid AND p.polname = 'tenancy_policy')
     ORDER BY c.relname;

    -- Views (and views of views) over the table.
    RETURN QUERY
    WITH RECURSIVE deps(oid) AS (
        SELECT tbl::oid
        UNION
        SELECT r.ev_class
          FROM deps JOIN pg_depend d ON d.refclassid = 'pg_class'::regclass AND d.refobjid = deps.oid
                                    AND d.classid = 'pg_rewrite'::regclass
                    JOIN pg_rewrite r ON r.oid = d.objid
         WHERE r.ev_class <> deps.oid
    )
    SELECT CASE v.relkind WHEN 'm' THEN 'materialized_view' ELSE 'view_without_security_invoker' END,
           v.oid::regclass::text,
           CASE v.relkind
               WHEN 'm' THEN 'a materialized view stores the rows its owner saw when refreshed; reading it does not apply the policy'
               ELSE format('runs as its owner %I, so row security is checked for %I, not for the caller%s; set security_invoker = true',
                           o.rolname, o.rolname,
                           CASE WHEN o.rolsuper OR o.rolbypassrls THEN ', who bypasses row security: the view shows every tenant' ELSE '' END)
           END
      FROM deps JOIN pg_class v ON v.oid = deps.oid JOIN pg_roles o ON o.oid = v.relowner
     WHERE deps.oid <> tbl
       AND (v.relkind = 'm'
            OR (v.relkind = 'v' AND NOT EXISTS (
                    SELECT 1 FROM unnest(v.reloptions) opt
                     WHERE opt ~* '^security_invoker=(true|on|yes|1|t|y)$')))
     ORDER BY 2;

    -- SECURITY DEFINER functions that depend on the table (SQL-standard
    -- bodies) or mention its name in their source text.
    RETURN QUERY
    SELECT 'security_definer_function', p.oid::regprocedure::text,
           format('SECURITY DEFINER, owned by %I, %s: row security is checked for %I%s',
                  o.rolname,
                  CASE WHEN EXISTS (SELECT 1 FROM pg_depend d
                                     WHERE d.classid = 'pg_proc'::regclass AND d.objid = p.oid
                                       AND d.refclassid = 'pg_class'::regclass AND d.refobjid = tbl)
                       THEN 'depends on the table' ELSE 'its source mentions the table' END,
                  o.rolname,
                  CASE WHEN o.rolsuper OR o.rolbypassrls THEN ', who bypasses row security' ELSE '' END)
      FROM pg_proc p JOIN pg_roles o ON o.oid = p.proowner
     WHERE p.prosecdef
       AND NOT EXISTS (SELECT 1 FROM pg_depend e
                        WHERE e.classid = 'pg_proc'::regclass AND e.objid = p.oid AND e.deptype = 'e')
       AND (EXISTS (SELECT 1 FROM pg_depend d
                     WHERE d.classid = 'pg_proc'::regclass AND d.objid = p.oid
                       AND d.refclassid = 'pg_class'::regclass AND d.refobjid = tbl)
            OR lower(p.prosrc) ~ name_re)
     ORDER BY 2;

    -- Triggers on the table whose function is SECURITY DEFINER.
    RETURN QUERY
    SELECT 'security_definer_trigger', format('%I on %s', tg.tgname, tbl::text),
           format('trigger function %s is SECURITY DEFINER, owned by %I: what it reads and writes is checked for %I',
                  p.oid::regprocedure::text, o.rolname, o.rolname)
      FROM pg_trigger tg JOIN pg_proc p ON p.oid = tg.tgfoid JOIN pg_roles o ON o.oid = p.proowner
     WHERE tg.tgrelid = tbl AND NOT tg.tgisinternal AND p.prosecdef
     ORDER BY tg.tgname;

    -- Roles that bypass row security (the bootstrap superuser always does).
    RETURN QUERY
    SELECT 'bypassrls_role', quote_ident(r.rolname),
           CASE WHEN r.rolsuper THEN 'superuser: bypasses row security, FORCE or not'
                ELSE 'has BYPASSRLS: sees and writes every tenant''s rows' END
      FROM pg_roles r
     WHERE (r.rolsuper OR r.rolbypassrls) AND r.oid <> 10
     ORDER BY r.rolname;

    -- Unique indexes (primary keys included) without the tenant column.
    RETURN QUERY
    SELECT 'unique_without_tenant', quote_ident(ic.relname),
           format('unique across all tenants, not per tenant: one tenant''s values block another''s and reveal that they exist; add %I to it', col)
      FROM pg_index i JOIN pg_class ic ON ic.oid = i.indexrelid
     WHERE i.indrelid = tbl AND i.indisunique AND (attno IS NULL OR attno <> ALL (i.indkey::int2[]))
     ORDER BY ic.relname;

    -- Foreign keys from or to the table without the tenant column.
    RETURN QUERY
    SELECT 'foreign_key_without_tenant', format('%I on %s', con.conname, con.conrelid::regclass::text),
           format('referential checks bypass row security: a row can reference another tenant''s row; include %I in the key', col)
      FROM pg_constraint con
     WHERE con.contype = 'f'
       AND ((con.conrelid = tbl AND (attno IS NULL OR attno <> ALL (con.conkey))
             -- a key to a shared table (reference data) needs no tenant
             AND NOT EXISTS (SELECT 1 FROM tenancy.shared_tables s
                              WHERE s.relation = con.confrelid
                                 OR s.relation IN (SELECT a.relid FROM pg_partition_ancestors(con.confrelid) a)))
            OR (con.confrelid = tbl AND (attno IS NULL OR attno <> ALL (con.confkey))))
     ORDER BY con.conname;

    -- Other permissive policies: combined with OR, they widen access.
    RETURN QUERY
    SELECT 'permissive_policy', format('%I on %s', p.polname, tbl::text),
           'permissive policies are combined with OR: rows it admits are visible whatever the tenant'
      FROM pg_policy p
     WHERE p.polrelid = tbl AND p.polpermissive AND p.polname <> 'tenancy_policy'
       AND p.polname <> 'tenancy_policy_derived'    -- admits only rows derive_tenant() derived
       AND NOT (p.polname = ANY (tenancy.rls_legacy_policies())
                AND EXISTS (SELECT 1 FROM tenancy.rls_tables t WHERE t.relation = tbl
                               AND tenancy.rollout_legacy_expected(t.root, t.mode)))
     ORDER BY p.polname;
END
$$;

CREATE OR REPLACE FUNCTION tenancy.verify_row_security(rel regclass, tenant_col name, rel_stage text)
RETURNS TABLE (check_name text, relation regclass, status text, rows_affected bigint,
               detail text, fix text)
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
SET row_security = off
AS $$
#variable_conflict use_column
DECLARE
    fix_rls text;
    rmode   text;
    p       record;
    c       record;
BEGIN
    relation := rel;
    rmode := (SELECT rt.mode FROM tenancy.rls_tables rt WHERE rt.relation = rel);
    FOR p IN
        SELECT c.oid::regclass AS prel, c.relrowsecurity, c.relforcerowsecurity,
               EXISTS (SELECT 1 FROM pg_policy pol WHERE pol.polrelid = c.oid
                       AND pol.polname = 'tenancy_policy') AS has_policy,
               -- migrating mode's policies: all of them in that stage, none in others
               (SELECT string_agg(quote_ident(l.name), ', ' ORDER BY l.name)
                  FROM unnest(tenancy.rls_legacy_policies()) l(name)
                 WHERE EXISTS (SELECT 1 FROM pg_policy pol WHERE pol.polrelid = c.oid AND pol.polname = l.name)
                       IS DISTINCT FROM coalesce(tenancy.rollout_legacy_expected(rel, rmode), false)) AS legacy_wrong
        FROM (SELECT rel::oid AS relid, 0 AS level
              UNION ALL
              SELECT pt.relid, pt.level FROM tenancy.rls_tree(rel) pt WHERE pt.level > 0) tree
        JOIN pg_class c ON c.oid = tree.relid
        ORDER BY tree.level, c.oid::regclass::text
    LOOP
        relation := p.prel; rows_affected := NULL;
        -- one fix for all three: enable_rls() enables, forces and creates the policy;
        -- set_mode() covers what a covered table's tree misses
        fix_rls := CASE WHEN EXISTS (SELECT 1 FROM tenancy.rls_tables t WHERE t.relation = rel AND t.root = rel)
                        THEN format('SELECT tenancy.set_mode(%L, %L);', rel::text,
                                    (SELECT t.mode FROM tenancy.rls_tables t WHERE t.relation = rel))
                        ELSE format('SELECT tenancy.enable_rls(%L%s);', rel::text,
                                    CASE WHEN tenant_col <> 'tenant_id'
                                         THEN format(', column_name => %L', tenant_col) ELSE '' END) END;
        FOR c IN
            SELECT * FROM (VALUES
                ('rls_enabled', p.relrowsecurity, 'row level security is enabled',
                 'row level security is disabled: every role with SELECT sees every tenant'),
                ('rls_forced', p.relforcerowsecurity, 'row level security is forced for the owner too',
                 'row level security is not forced: the table owner (often the application role) bypasses the policy'),
                ('tenancy_policy', p.has_policy AND p.legacy_wrong IS NULL, 'policy tenancy_policy exists',
                 CASE WHEN NOT p.has_policy
                      THEN 'policy tenancy_policy is missing: nothing limits rows to the current tenant'
                      WHEN rmode = 'migrating'
                      THEN format('migrating-mode policies %s are missing: rows whose tenant is still NULL are hidden, or the implicit tenant cannot change them', p.legacy_wrong)
                      ELSE format('migrating-mode policies %s are left in stage %s: rows whose tenant is NULL stay visible or changeable by every tenant', p.legacy_wrong, coalesce(rmode, rel_stage)) END)
            ) v(name, good, ok_detail, bad_detail)
        LOOP
            check_name := c.name;
            IF c.good THEN
                status := 'ok'; detail := c.ok_detail; fix := NULL;
            ELSE
                status := 'failure'; detail := c.bad_detail; fix := fix_rls;
            END IF;
            RETURN NEXT;
        END LOOP;
    END LOOP;
    relation := rel;
END
$$;

-- squawk: ignore require-lock-timeout: each fix is one statement for a DBA to run by itself; its index fixes are CONCURRENTLY (no lock blocking reads or writes)
-- squawk: ignore require-statement-timeout: as above: a statement_timeout would cancel the concurrent build
CREATE OR REPLACE FUNCTION tenancy.verify(tbl regclass DEFAULT NULL, max_rows bigint DEFAULT NULL)
RETURNS TABLE (check_name text, relation regclass, status text, rows_affected bigint,
               detail text, fix text)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
SET row_security = off
AS $$
#variable_conflict use_column
DECLARE
    r          record;
    cp         record;
    conflicted text[];
BEGIN
    IF max_rows IS NOT NULL AND max_rows < 1 THEN
        RAISE EXCEPTION 'max_rows must be positive'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF tbl IS NOT NULL AND NOT EXISTS (SELECT 1 FROM tenancy.tables t WHERE t.relation = tbl) THEN
        RAISE EXCEPTION 'table % is not registered in tenancy.tables', tbl
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = 'Register it with tenancy.add_tenant_column(), or call tenancy.verify() for every registered table.';
    END IF;

    FOR r IN
        SELECT t.relation AS rel, t.column_name AS col, t.stage,
               c.oid IS NOT NULL AS present, c.relkind,
               a.attnum, a.atttypid
        FROM tenancy.tables t
        LEFT JOIN pg_class c ON c.oid = t.relation
        LEFT JOIN pg_attribute a ON a.attrelid = t.relation AND a.attname = t.column_name
                                AND a.attnum > 0 AND NOT a.attisdropped
        WHERE tbl IS NULL OR t.relation = tbl
        ORDER BY t.relation::text
    LOOP
        RETURN QUERY SELECT * FROM tenancy.verify_tenant_column(r.rel, r.col, r.present, r.attnum, r.atttypid);
        -- a table or column that is gone: the other checks skip the table
        CONTINUE WHEN NOT r.present OR r.attnum IS NULL;
        RETURN QUERY SELECT * FROM tenancy.verify_null_tenant(r.rel, r.col, max_rows);
        RETURN QUERY SELECT * FROM tenancy.verify_unknown_tenant(r.rel, r.col, r.atttypid, max_rows);
        -- the foreign keys whose parents disagree: cross_tenant_reference
        -- suggests no fix through them
        conflicted := '{}';
        FOR cp IN SELECT * FROM tenancy.verify_conflicting_parents(r.rel, max_rows) LOOP
            check_name := cp.check_name; relation := cp.relation; status := cp.status;
            rows_affected := cp.rows_affected; detail := cp.detail; fix := cp.fix;
            conflicted := conflicted || coalesce(cp.conflicting_keys, '{}');
            RETURN NEXT;
        END LOOP;
        RETURN QUERY SELECT * FROM tenancy.verify_derived_tenant_mismatch(r.rel, r.col, max_rows);
        RETURN QUERY SELECT * FROM tenancy.verify_cross_tenant_reference(r.rel, r.col, r.atttypid, max_rows, conflicted);
        RETURN QUERY SELECT * FROM tenancy.verify_unique_scope(r.rel, r.col, r.attnum);
        RETURN QUERY SELECT * FROM tenancy.verify_foreign_key_scope(r.rel, r.col);
        RETURN QUERY SELECT * FROM tenancy.verify_row_security(r.rel, r.col, r.stage);
        RETURN QUERY SELECT * FROM tenancy.verify_policy_mode(r.rel, r.col, r.stage);
        RETURN QUERY SELECT * FROM tenancy.verify_rollout(r.rel);
        RETURN QUERY SELECT * FROM tenancy.verify_shadow_divergence(r.rel);
        RETURN QUERY SELECT * FROM tenancy.verify_tenant_index(r.rel, r.col, r.attnum, r.relkind);
        RETURN QUERY SELECT * FROM tenancy.verify_view_security_invoker(r.rel);
        RETURN QUERY SELECT * FROM tenancy.verify_materialized_view(r.rel);
        RETURN QUERY SELECT * FROM tenancy.verify_security_definer_function(r.rel);
        RETURN QUERY SELECT * FROM tenancy.verify_bypassrls_role(r.rel);
        RETURN QUERY SELECT * FROM tenancy.verify_unregistered_reference(r.rel);
    END LOOP;

    IF tbl IS NOT NULL THEN
        RETURN;
    END IF;

    RETURN QUERY SELECT * FROM tenancy.verify_shared_table();
    RETURN QUERY SELECT * FROM tenancy.verify_user_without_tenant(max_rows);
    RETURN QUERY SELECT * FROM tenancy.verify_tenant_without_owner();
END
$$;


-- merge of issue 17 (staged modes on Citus) and issue 18 (per-tenant rollout):
-- rls_legacy_stmts() carries both changes
CREATE OR REPLACE FUNCTION tenancy.rls_legacy_stmts(qualified text, column_name name, roles text, mode text)
RETURNS text[]
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    -- Citus cannot copy a SubLink in a policy to the shards: on a Citus
    -- table the legacy policies call the function directly
    imp text := CASE WHEN tenancy.rls_citus_distributed(qualified::regclass)
                     THEN 'tenancy.is_implicit_tenant()'
                     ELSE '(SELECT tenancy.is_implicit_tenant())' END;
BEGIN
    -- a table with a per-tenant rollout: see tenancy.rollout_legacy_stmts()
    RETURN CASE WHEN tenancy.rollout_active(tenancy.rollout_root(qualified::regclass))
                THEN tenancy.rollout_legacy_stmts(qualified, column_name, roles, mode)
                WHEN mode = 'migrating' THEN ARRAY[
        format('CREATE POLICY tenancy_policy_legacy_read ON %s AS PERMISSIVE FOR SELECT TO %s USING (%I IS NULL)',
               qualified, roles, column_name),
        format('CREATE POLICY tenancy_policy_legacy_update ON %s AS PERMISSIVE FOR UPDATE TO %s USING (%I IS NULL AND %s) WITH CHECK (%I IS NULL AND %s)',
               qualified, roles, column_name, imp, column_name, imp),
        format('CREATE POLICY tenancy_policy_legacy_delete ON %s AS PERMISSIVE FOR DELETE TO %s USING (%I IS NULL AND %s)',
               qualified, roles, column_name, imp)]
    ELSE '{}'::text[] END;
END
$$;

-- issue 19: erase_tenant() gets past the DELETE trigger of a moved tenant's fence
CREATE OR REPLACE PROCEDURE tenancy.erase_tenant(tenant text, batch_size integer DEFAULT 1000,
                                      min_batch_size integer DEFAULT 10, max_batch_size integer DEFAULT 10000,
                                      batch_time interval DEFAULT '200ms', pause interval DEFAULT '0',
                                      lock_timeout interval DEFAULT '100ms', max_retries integer DEFAULT 50,
                                      max_batches integer DEFAULT NULL)
-- No SET clause (a procedure with one cannot COMMIT): the search_path is
-- pinned at the start and again after each COMMIT, which ends it.
LANGUAGE plpgsql AS $$
#variable_conflict use_variable
DECLARE
    k text;
    slug text;
    t record;
    n integer;
    per_row numeric;
    nx record;
    leaf regclass;
    deleted bigint;
    t0 timestamptz;
    ms numeric;
    failures integer;
    done_batches integer := 0;
    remaining bigint;
    other integer;
    stmt text;
    fence record;
BEGIN
    PERFORM pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', true);
    IF tenancy.in_transaction_block() THEN
        RAISE EXCEPTION 'tenancy.erase_tenant() cannot run inside a transaction block'
            USING ERRCODE = 'active_sql_transaction',
                  DETAIL = 'It commits after each batch.',
                  HINT = 'CALL it on its own, outside BEGIN ... COMMIT.';
    END IF;
    IF batch_size IS NULL OR min_batch_size IS NULL OR max_batch_size IS NULL
       OR NOT (1 <= min_batch_size AND min_batch_size <= batch_size AND batch_size <= max_batch_size)
       OR batch_time IS NULL OR batch_time <= interval '0' OR pause IS NULL OR pause < interval '0'
       OR lock_timeout IS NULL OR lock_timeout <= interval '0' OR max_retries IS NULL OR max_retries < 0
       OR max_batches < 1 THEN
        RAISE EXCEPTION 'invalid erase options'
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = 'Need 1 <= min_batch_size <= batch_size <= max_batch_size, positive batch_time and lock_timeout, pause >= 0, max_retries >= 0, max_batches NULL or >= 1.';
    END IF;
    k := tenancy.erase_check(tenant);
    slug := (SELECT r.slug FROM tenancy.tenants r WHERE r.id::text = k);
    -- One erasure of a tenant at a time: a running one whose backend lives.
    SELECT e.pid INTO other FROM tenancy.tenant_erasures e
     WHERE e.tenant = k AND e.state = 'running' AND e.pid <> pg_backend_pid()
       AND EXISTS (SELECT 1 FROM pg_stat_activity a WHERE a.pid = e.pid)
       FOR UPDATE;
    IF FOUND THEN
        RAISE EXCEPTION 'tenant "%" is being erased by process %', slug, other
            USING ERRCODE = 'object_in_use',
                  HINT = 'Wait for it (tenancy.erase_progress), or stop it with pg_cancel_backend() and CALL again to resume.';
    END IF;
    INSERT INTO tenancy.tenant_erasures AS e (tenant, slug, state, pid)
    VALUES (k, slug, 'running', pg_backend_pid())
    ON CONFLICT ON CONSTRAINT tenant_erasures_pkey DO UPDATE
       SET state = 'running', pid = pg_backend_pid(), resumed_at = now(), finished_at = NULL, finished_by = NULL;
    INSERT INTO tenancy.tenant_erasure_tables (tenant, relation, ord)
    SELECT k, o.relation, o.ord FROM tenancy.erase_order() o
    ON CONFLICT ON CONSTRAINT tenant_erasure_tables_pkey DO UPDATE SET ord = excluded.ord;
    -- A tenant moved away keeps the move's fence at the source
    -- (tenancy.move_fence_sql()): its INSERT and UPDATE triggers stay, its
    -- DELETE trigger would refuse the erasure's own deletes and goes (what
    -- it refused is what the erasure does).  Triggers on a partitioned table
    -- go with their clones; under lock_timeout, retried.
    FOR fence IN SELECT g.tgrelid::regclass AS rel, g.tgname
                   FROM pg_trigger g
                  WHERE g.tgname = tenancy.move_object_name(k)::text || '_fence_d'
                    AND g.tgparentid = 0 LOOP
        FOR attempt IN 0 .. max_retries LOOP
            BEGIN
                PERFORM pg_catalog.set_config('lock_timeout', ceil(extract(epoch FROM lock_timeout) * 1000)::text || 'ms', true);
                EXECUTE format('DROP TRIGGER %I ON %s', fence.tgname, fence.rel);
                EXIT;
            EXCEPTION WHEN lock_not_available THEN
                IF attempt = max_retries THEN RAISE; END IF;
                PERFORM pg_catalog.pg_sleep_for(tenancy.backoff_delay(attempt + 1, interval '50ms', interval '2s'));
            END;
        END LOOP;
    END LOOP;
    PERFORM pg_catalog.set_config('lock_timeout', '0', true);
    COMMIT;
    PERFORM pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', true);

    FOR t IN SELECT o.ord, o.relation, o.column_name, et.batch_size
               FROM tenancy.erase_order() o
               JOIN tenancy.tenant_erasure_tables et ON et.tenant = k AND et.relation = o.relation
              ORDER BY o.ord LOOP
        n := coalesce(t.batch_size, batch_size);
        SELECT n AS next_batch, NULL::numeric AS next_per_row, NULL::interval AS sleep INTO nx;
        per_row := NULL;
        failures := 0;
        FOR leaf IN SELECT l FROM tenancy.erase_leaves(t.relation) l LOOP
        stmt := tenancy.erase_batch_sql(leaf, t.column_name);
        LOOP
            IF max_batches IS NOT NULL AND done_batches >= max_batches THEN
                UPDATE tenancy.tenant_erasures e SET pid = NULL WHERE e.tenant = k;
                COMMIT;
                PERFORM pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', true);
                RAISE NOTICE 'erase of tenant "%" stopped after % batches at table %', slug, done_batches, leaf
                    USING HINT = 'CALL tenancy.erase_tenant() again to resume.';
                RETURN;
            END IF;
            t0 := clock_timestamp();
            deleted := NULL;
            BEGIN
                PERFORM set_config('lock_timeout', ceil(extract(epoch FROM lock_timeout) * 1000)::text || 'ms', true);
                deleted := tenancy.table_exec(leaf, NULL, stmt, k, n);
            EXCEPTION WHEN lock_not_available OR deadlock_detected THEN
                failures := failures + 1;
                IF failures > max_retries THEN
                    RAISE EXCEPTION 'could not lock "%" in % attempts', leaf, failures
                        USING ERRCODE = 'lock_not_available',
                              DETAIL = 'The batches before are committed.',
                              HINT = 'CALL tenancy.erase_tenant() again when the table is less busy: it resumes.';
                END IF;
            END;
            ms := extract(epoch FROM clock_timestamp() - t0) * 1000;
            IF deleted IS NULL THEN
                SELECT * INTO nx FROM tenancy.backfill_next_size('retry', n, min_batch_size, max_batch_size,
                                                                  ms, extract(epoch FROM batch_time) * 1000, per_row,
                                                                  failures, false);
                n := nx.next_batch;
                COMMIT;
                PERFORM pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', true);
                PERFORM pg_sleep_for(nx.sleep);
                CONTINUE;
            END IF;
            failures := 0;
            done_batches := done_batches + 1;
            IF deleted > 0 THEN
                SELECT * INTO nx FROM tenancy.backfill_next_size('ok', n, min_batch_size, max_batch_size,
                                                                  ms, extract(epoch FROM batch_time) * 1000, per_row,
                                                                  0, false);
                per_row := nx.next_per_row;
            END IF;
            UPDATE tenancy.tenant_erasure_tables et
               SET rows_deleted = et.rows_deleted + deleted, batches = et.batches + 1,
                   batch_size = CASE WHEN deleted > 0 THEN nx.next_batch ELSE et.batch_size END,
                   last_batch_ms = round(ms, 1)
             WHERE et.tenant = k AND et.relation = t.relation;
            UPDATE tenancy.tenant_erasures e
               SET rows_deleted = e.rows_deleted + deleted, batches = e.batches + 1
             WHERE e.tenant = k;
            COMMIT;
            PERFORM pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', true);
            EXIT WHEN deleted < n;
            IF deleted > 0 THEN
                n := nx.next_batch;
            END IF;
            IF pause > interval '0' THEN
                PERFORM pg_sleep_for(pause);
            END IF;
        END LOOP;
        END LOOP;
        UPDATE tenancy.tenant_erasure_tables et SET done_at = now()
         WHERE et.tenant = k AND et.relation = t.relation AND et.done_at IS NULL;
        COMMIT;
        PERFORM pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', true);
    END LOOP;

    -- The count check: nothing of the tenant may remain in any table.
    FOR t IN SELECT * FROM tenancy.erase_order() LOOP
        remaining := tenancy.erase_remaining(t.relation, t.column_name, k);
        IF remaining > 0 THEN
            UPDATE tenancy.tenant_erasures e SET pid = NULL WHERE e.tenant = k;
            COMMIT;
            PERFORM pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', true);
            RAISE EXCEPTION '% rows of tenant "%" remain in %', remaining, slug, t.relation
                USING ERRCODE = 'object_not_in_prerequisite_state',
                      DETAIL = 'They were written while the erasure ran (a bound role or a session-level tenant, which suspension does not stop).',
                      HINT = 'Stop those writers and CALL tenancy.erase_tenant() again.';
        END IF;
    END LOOP;
    UPDATE tenancy.tenant_erasures e
       SET state = 'done', pid = NULL, finished_at = now(), finished_by = session_user
     WHERE e.tenant = k;
    COMMIT;
    PERFORM pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', true);
END
$$;

------------------------------------------------------------------------------
-- issue 17: distribute (src/distribute.sql; verify() calls verify_citus())
------------------------------------------------------------------------------

-- src/distribute.sql: from one node to many (Citus): the distribution
-- generator, its undo, the isolation of a large tenant, and verify()'s
-- Citus checks.  Nothing here needs Citus to be installed: the functions
-- that act on a cluster raise 55000 without it, and citus_verify() returns
-- no row, so a single-node report does not change.
--
-- Citus's catalog (pg_dist_partition) and functions exist only where the
-- citus extension is: they are reached through EXECUTE, never planned when
-- this file is loaded.

-- The citus extension in this database.
CREATE FUNCTION tenancy.citus_installed() RETURNS boolean
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT EXISTS (SELECT FROM pg_catalog.pg_extension e WHERE e.extname OPERATOR(pg_catalog.=) 'citus');
$$;
COMMENT ON FUNCTION tenancy.citus_installed() IS 'true when the citus extension is installed in this database';

-- 55000 without Citus, naming what needed it.
CREATE FUNCTION tenancy.citus_required(what text) RETURNS void
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF NOT tenancy.citus_installed() THEN
        RAISE EXCEPTION '% needs Citus, which is not installed in database %', what, current_database()
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  DETAIL = 'It acts on the tables of a Citus cluster (a coordinator and its workers).',
                  HINT = 'Add citus to shared_preload_libraries, CREATE EXTENSION citus, add the workers (citus_add_node()), then call it again.';
    END IF;
END
$$;
COMMENT ON FUNCTION tenancy.citus_required(text) IS 'raise 55000 when the citus extension is not installed';

-- What Citus has made of a table: kind is distributed (hash), reference,
-- local (a Citus local table, added to its metadata), single_shard, or
-- NULL (a plain table, or no Citus); dist_column the distribution column
-- of a distributed table; colocation its colocation group.
CREATE FUNCTION tenancy.citus_table(rel regclass, OUT kind text, OUT dist_column name, OUT colocation integer)
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    query text := $q$SELECT CASE WHEN p.partmethod OPERATOR(pg_catalog.=) 'h' THEN 'distributed'
                           WHEN p.repmodel OPERATOR(pg_catalog.=) 't' THEN 'reference'
                           WHEN p.colocationid OPERATOR(pg_catalog.=) 0 THEN 'local'
                           ELSE 'single_shard' END,
                      CASE WHEN p.partmethod OPERATOR(pg_catalog.=) 'h'
                           THEN pg_catalog.column_to_column_name(p.logicalrelid, p.partkey)::name END,
                      p.colocationid::integer
                 FROM pg_catalog.pg_dist_partition p WHERE p.logicalrelid OPERATOR(pg_catalog.=) $1$q$;
BEGIN
    IF NOT tenancy.citus_installed() THEN
        RETURN;
    END IF;
    -- plpgsql_check: pg_dist_partition exists only with Citus: not checked here (a variable)
    EXECUTE query
        INTO kind, dist_column, colocation USING rel;
END
$$;
COMMENT ON FUNCTION tenancy.citus_table(regclass) IS 'what Citus made of a table: distributed, reference, local, single_shard or NULL; its distribution column and colocation group';

-- Citus's undistribute_table() and alter_distributed_table() build a new
-- table (a new OID) and drop the old one: the extension's bookkeeping,
-- keyed by regclass (tenancy.tables, shared_tables, rls_tables, ...), would
-- name a table that is gone.  citus_names() is the map, OID to qualified
-- name, of every relation the bookkeeping names (and their partitions),
-- taken before such a step; citus_remap(map) afterwards points every
-- regclass column of the extension's tables at the new OID of each name.
CREATE FUNCTION tenancy.citus_names() RETURNS jsonb
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT coalesce(jsonb_object_agg(x.oid::text, format('%I.%I', n.nspname, c.relname)), '{}')
      FROM (SELECT t.relation::oid AS oid FROM tenancy.tables t
            UNION SELECT sh.relation::oid FROM tenancy.shared_tables sh
            UNION SELECT pt.relid::oid FROM tenancy.tables t, LATERAL pg_partition_tree(t.relation) pt
            UNION SELECT pt.relid::oid FROM tenancy.shared_tables sh, LATERAL pg_partition_tree(sh.relation) pt) x
      JOIN pg_class c ON c.oid = x.oid JOIN pg_namespace n ON n.oid = c.relnamespace;
$$;
COMMENT ON FUNCTION tenancy.citus_names() IS 'OID to qualified name of every relation the extension''s bookkeeping names, for citus_remap()';

CREATE FUNCTION tenancy.citus_remap(names jsonb) RETURNS bigint
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    m     record;
    c     record;
    n     bigint;
    total bigint := 0::bigint;
BEGIN
    -- plpgsql_check: VOLATILE: it writes the bookkeeping (UPDATE through EXECUTE)
    IF names IS NULL OR jsonb_typeof(names) <> 'object' THEN
        RAISE EXCEPTION 'names must be a JSON object of OIDs to table names' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    FOR m IN SELECT k.key::oid AS old, to_regclass(k.value) AS new FROM jsonb_each_text(names) k ORDER BY k.key::oid LOOP
        CONTINUE WHEN m.new IS NULL OR m.new::oid = m.old;
        FOR c IN SELECT a.attrelid::regclass AS tbl, a.attname
                   FROM pg_attribute a JOIN pg_class cl ON cl.oid = a.attrelid
                  WHERE cl.relnamespace = 'tenancy'::regnamespace AND cl.relkind = 'r'
                    AND a.atttypid = 'regclass'::regtype AND a.attnum > 0 AND NOT a.attisdropped
                  ORDER BY 1::text, 2 LOOP
            -- plpgsql_check: names of the extension's own tables and columns, quoted (%s of a regclass, %I); values are parameters
            EXECUTE format('UPDATE %s SET %I = $1 WHERE %I = $2', c.tbl, c.attname, c.attname) USING m.new, m.old::regclass;
            GET DIAGNOSTICS n = ROW_COUNT;
            total := total + n;
        END LOOP;
    END LOOP;
    RETURN total;
END
$$;
COMMENT ON FUNCTION tenancy.citus_remap(jsonb) IS 'after Citus rebuilt tables (new OIDs), point the extension''s bookkeeping at them by name; returns the rows changed';

-- One Citus step, with the bookkeeping kept: the names before, the call
-- (create_distributed_table, create_reference_table, alter_distributed_table
-- or undistribute_table, nothing else), citus_remap().  Citus makes a
-- local table it converts (into a Citus local table, when it turns a table
-- the local one references into a reference table) the shard and gives
-- its name to a new shell table, and rebuilds tables in alter_ and
-- undistribute_table(): the extension's rows follow the names.
CREATE FUNCTION tenancy.citus_run(call text) RETURNS bigint
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    names jsonb := tenancy.citus_names();
BEGIN
    IF call IS NULL OR call !~ '^SELECT pg_catalog\.(create_distributed_table|create_reference_table|alter_distributed_table|undistribute_table)\(' THEN
        RAISE EXCEPTION 'not a Citus distribution call: %', call USING ERRCODE = 'invalid_parameter_value';
    END IF;
    -- plpgsql_check: a call distribute_plan() or undistribute_sql() made, names quoted (%L); checked above
    EXECUTE call;
    RETURN tenancy.citus_remap(names);
END
$$;
COMMENT ON FUNCTION tenancy.citus_run(text) IS 'run one Citus distribution call and point the bookkeeping at the tables it rebuilt or renamed';

-- undistribute_table(tbl) when Citus still holds tbl (an earlier call may
-- have brought it back through its foreign keys), the bookkeeping kept.
CREATE FUNCTION tenancy.citus_undistribute(tbl text) RETURNS bigint
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF (tenancy.citus_table(tbl::regclass)).kind IS NULL THEN
        RETURN 0::bigint;
    END IF;
    RETURN tenancy.citus_run(format('SELECT pg_catalog.undistribute_table(%L, cascade_via_foreign_keys => true)', tbl));
END
$$;
COMMENT ON FUNCTION tenancy.citus_undistribute(text) IS 'undistribute_table() of a table Citus still holds, through its foreign keys, the bookkeeping kept';

-- The tables the generator distributes, in dependency order: shared tables
-- (reference tables) first, then registered tables (their partitions go
-- with them), each after the tables of its kind its foreign keys
-- reference.  depth: the longest chain of such foreign keys.
CREATE FUNCTION tenancy.distribute_order()
RETURNS TABLE (relation regclass, kind text, column_name name, depth integer)
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    WITH RECURSIVE s(rel, kind, col) AS (
        SELECT t.relation, 'distributed', t.column_name FROM tenancy.tables t
          JOIN pg_class c ON c.oid = t.relation
         WHERE c.relkind IN ('r', 'p') AND NOT c.relispartition
        UNION ALL
        SELECT sh.relation, 'reference', NULL::name FROM tenancy.shared_tables sh
          JOIN pg_class c ON c.oid = sh.relation
         WHERE c.relkind IN ('r', 'p') AND NOT c.relispartition
    ), e(child, parent) AS (
        SELECT DISTINCT s.rel, p.rel
          FROM s, LATERAL tenancy.foreign_keys(s.rel) f
          JOIN s p ON p.rel::oid = coalesce(pg_partition_root(f.confrelid), f.confrelid)
         WHERE p.rel <> s.rel AND p.kind = s.kind
    ), d(rel, depth, path) AS (
        SELECT s.rel, 0, ARRAY[s.rel::oid] FROM s
        UNION ALL
        SELECT e.child, d.depth + 1, d.path || e.child::oid
          FROM d JOIN e ON e.parent = d.rel
         WHERE NOT e.child::oid = ANY (d.path)
    )
    SELECT s.rel, s.kind, s.col, max(d.depth)::integer
      FROM s JOIN d ON d.rel = s.rel
     GROUP BY s.rel, s.kind, s.col
     ORDER BY s.kind DESC, max(d.depth), s.rel::text;
$$;
COMMENT ON FUNCTION tenancy.distribute_order() IS 'shared then registered tables, each after the tables its foreign keys reference';

-- The colocation group the registered tables belong in: of the registered
-- tables Citus distributes by their tenant column, the group that holds
-- most of them; relation: its first table in dependency order.  NULL when
-- none is distributed yet.
CREATE FUNCTION tenancy.citus_anchor(OUT relation regclass, OUT colocation integer)
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT o.relation, ct.colocation
      FROM tenancy.distribute_order() o, LATERAL tenancy.citus_table(o.relation) ct
     WHERE o.kind = 'distributed' AND ct.kind = 'distributed' AND ct.dist_column = o.column_name
     ORDER BY count(*) OVER (PARTITION BY ct.colocation) DESC, o.depth, o.relation::text
     LIMIT 1;
$$;
COMMENT ON FUNCTION tenancy.citus_anchor() IS 'the colocation group of most registered tables distributed by their tenant column, and its first table';

-- The generator's plan.  Steps, in order:
--   1. inherit_partition_foreign_key: a foreign key declared on every
--      partition of a partitioned table but not on the table itself (Citus
--      refuses such keys) is added on the table, which adopts the
--      partitions' keys (no scan);
--   2. the contract phase's steps still to do (scope_constraints_plan():
--      unique constraints and foreign keys without the tenant column), and
--      rebuild_surrogate_key: a generated surrogate primary key, which the
--      contract phase keeps on one node, gets the tenant column in front
--      (Citus requires every primary key and unique constraint to include
--      the distribution column);
--   4. create_distributed_table for each registered table, by its tenant
--      column, colocated with the first; alter_distributed_table for one
--      Citus distributed by another column or in another colocation group;
--   5. create_reference_table for each shared table;
--   6. reattach_shared_foreign_key: the keys of step 3 again, validated.
-- The Citus functions run as the caller (a superuser or the tables'
-- owner: Citus requires it): through table_exec(), as the owner under
-- SECURITY_RESTRICTED_OPERATION, Citus 13.2 cancels create_distributed_table()
-- of a table with a 63-byte name as a distributed deadlock, and the owner
-- would need CREATE on the schema on every worker.  The ALTER TABLE steps
-- run as the owner (table_exec()).  alter_distributed_table() and
-- undistribute_table() build new tables: each is followed by
-- citus_remap(), which points the bookkeeping at them.
-- It refuses, before any step, a table it cannot distribute: tenant column
-- nullable (55000), derived-tenant trigger (55000: Citus routes an INSERT
-- on the coordinator by its tenant column, before any trigger on a shard
-- could derive it), other triggers unless allow_triggers (0A000), a table
-- name longer than 55 bytes (42622), a materialized view (0A000), a policy
-- with a subquery (0A000), tenant columns of different types (42804), a
-- foreign key to a table neither registered nor shared, or from a shared
-- table to a registered one (0A000).  Tables Citus already holds as asked
-- get no step: a rerun plans only what is left.
-- squawk: ignore require-lock-timeout: the plan's rows are steps, not a script: each step carries SET LOCAL lock_timeout, distribute_sql() sets it around the concurrent index builds
-- squawk: ignore require-statement-timeout: as above
-- squawk: ignore prefer-robust-stmts: computed from the catalog: a rerun plans only the steps still to do
-- squawk: ignore require-concurrent-index-deletion: undo_sql drops an index the plan built, in a short transaction
-- squawk: ignore constraint-missing-not-valid: undo_sql puts back a partition's foreign key NOT VALID and validates it; a primary key USING INDEX of an existing index
-- squawk: ignore disallowed-unique-constraint: a primary key USING INDEX of an existing index
-- squawk: ignore adding-serial-primary-key-field: as above
-- squawk: ignore adding-foreign-key-constraint: the key on a partitioned table adopts the keys every partition has already (no scan)
CREATE FUNCTION tenancy.distribute_plan(allow_triggers boolean DEFAULT false)
RETURNS TABLE (step integer, relation regclass, action text, sql text, undo_sql text)
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_column
DECLARE
    r        record;
    f        record;
    p        record;
    ct       record;
    anchor   regclass;
    acoloc   integer;
    atype    oid;
    rtype    oid;
    txt      text;
    newname  text;
    undo     text;
    lt       text := format('SET LOCAL lock_timeout = %L; ', '1s');
    trig     text := CASE WHEN allow_triggers THEN 'SET LOCAL citus.enable_unsafe_triggers = on; ' ELSE '' END;
    nparts   bigint;
    reattach jsonb := '[]'::jsonb;
    e        jsonb;
BEGIN
    PERFORM tenancy.citus_required('tenancy.distribute_plan()');
    IF allow_triggers IS NULL THEN
        RAISE EXCEPTION 'allow_triggers must not be NULL' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    step := 0;

    -- Refusals first: nothing is planned for a layout Citus refuses.
    FOR r IN SELECT o.relation AS rel, o.kind, o.column_name AS col FROM tenancy.distribute_order() o LOOP
        IF r.kind = 'distributed' THEN
            SELECT a.atttypid, a.attnotnull INTO f
              FROM pg_attribute a WHERE a.attrelid = r.rel AND a.attname = r.col AND a.attnum > 0 AND NOT a.attisdropped;
            IF NOT FOUND THEN
                RAISE EXCEPTION 'table % has no tenant column %', r.rel, r.col
                    USING ERRCODE = 'undefined_column',
                          HINT = format('SELECT tenancy.add_tenant_column(%L);', r.rel::text);
            ELSIF NOT f.attnotnull THEN
                RAISE EXCEPTION 'tenant column % of table % is nullable', r.col, r.rel
                    USING ERRCODE = 'object_not_in_prerequisite_state',
                          DETAIL = 'Citus routes each row by its tenant column and refuses rows without one.',
                          HINT = format('Finish the migration on this node first: CALL tenancy.enforce_not_null(%L);', r.rel::text);
            END IF;
            rtype := f.atttypid;
            IF atype IS NULL THEN
                atype := rtype;
            ELSIF atype <> rtype THEN
                RAISE EXCEPTION 'tenant column % of table % is of type %, not % as the other tables''', r.col, r.rel,
                                format_type(rtype, NULL), format_type(atype, NULL)
                    USING ERRCODE = 'datatype_mismatch',
                          DETAIL = 'Citus colocates only tables whose distribution columns have the same type.',
                          HINT = format('ALTER TABLE %s ALTER COLUMN %I TYPE %s;', r.rel, r.col, format_type(atype, NULL));
            END IF;
            IF EXISTS (SELECT FROM tenancy.derived_tenants d WHERE d.relation = r.rel) THEN
                RAISE EXCEPTION 'table % derives the tenant of new rows with a trigger', r.rel
                    USING ERRCODE = 'object_not_in_prerequisite_state',
                          DETAIL = 'Citus routes an INSERT to a shard by its tenant column on the coordinator, before any trigger on the shard could derive it: a derived-tenant trigger cannot work on a distributed table.',
                          HINT = format('Make the legacy writers set the tenant, then SELECT tenancy.underive_tenant(%L);', r.rel::text);
            END IF;
            SELECT string_agg(format('%s on %s', pol.polname, pol.polrelid::regclass), ', ' ORDER BY pol.polrelid::regclass::text, pol.polname)
              INTO txt
              FROM pg_policy pol
             WHERE pol.polrelid IN (SELECT r.rel::oid UNION SELECT x.relid FROM pg_partition_tree(r.rel) x)
               AND (coalesce(pol.polqual::text, '') LIKE '%{SUBLINK %' OR coalesce(pol.polwithcheck::text, '') LIKE '%{SUBLINK %');
            IF txt IS NOT NULL THEN
                RAISE EXCEPTION 'table % has policies with a subquery: %', r.rel, txt
                    USING ERRCODE = 'feature_not_supported',
                          DETAIL = 'Citus refuses subqueries in the policies of distributed tables.',
                          HINT = 'Rewrite them without a subquery (a function call is allowed), then call it again.';
            END IF;
        END IF;
        -- Citus names each shard <table>_<shard id>; Citus 13.2 cancels the
        -- copy of the rows of a table whose name is longer than 55 bytes
        -- into its shards as a distributed deadlock (found here: 55 bytes
        -- distribute, 56 and 63 do not)
        SELECT string_agg(x.relid::regclass::text, ', ' ORDER BY x.relid::regclass::text) INTO txt
          FROM (SELECT r.rel::oid AS relid UNION SELECT t.relid FROM pg_partition_tree(r.rel) t) x
          JOIN pg_class c ON c.oid = x.relid
         WHERE octet_length(c.relname) > 55;
        IF txt IS NOT NULL AND (tenancy.citus_table(r.rel)).kind IS NULL THEN
            RAISE EXCEPTION 'table names longer than 55 bytes: %', txt
                USING ERRCODE = 'name_too_long',
                      DETAIL = 'Citus names each shard after its table with _ and a shard id appended; Citus 13.2 cancels the distribution of the rows of a table with a longer name as a distributed deadlock.',
                      HINT = 'Rename the table (ALTER TABLE ... RENAME TO) to at most 55 bytes, then call it again.';
        END IF;
        -- materialized views over a table Citus converts: it creates them
        -- again, and refuses the query of one that joins distributed
        -- tables other than on their distribution column
        IF (tenancy.citus_table(r.rel)).kind IS NULL THEN
            SELECT string_agg(DISTINCT v.oid::regclass::text, ', ') INTO txt
              FROM pg_depend d JOIN pg_rewrite rw ON rw.oid = d.objid JOIN pg_class v ON v.oid = rw.ev_class
             WHERE d.classid = 'pg_rewrite'::regclass AND d.refclassid = 'pg_class'::regclass
               AND d.refobjid IN (SELECT r.rel::oid UNION SELECT x.relid FROM pg_partition_tree(r.rel) x)
               AND v.relkind = 'm';
            IF txt IS NOT NULL THEN
                RAISE EXCEPTION 'table % has materialized views: %', r.rel, txt
                    USING ERRCODE = 'feature_not_supported',
                          DETAIL = 'Citus creates the materialized views of a table again when it converts the table, and refuses one whose query joins distributed tables other than on their distribution column.',
                          HINT = 'Drop them, distribute, then create them again (joining the tenant tables on their tenant column too).';
            END IF;
        END IF;
        SELECT string_agg(format('%s on %s', tg.tgname, tg.tgrelid::regclass), ', ' ORDER BY tg.tgrelid::regclass::text, tg.tgname)
          INTO txt
          FROM pg_trigger tg
         WHERE tg.tgrelid IN (SELECT r.rel::oid UNION SELECT x.relid FROM pg_partition_tree(r.rel) x) AND NOT tg.tgisinternal
           AND NOT EXISTS (SELECT FROM pg_proc pr WHERE pr.oid = tg.tgfoid AND pr.proname = 'citus_truncate_trigger');
        IF txt IS NOT NULL AND NOT allow_triggers THEN
            RAISE EXCEPTION 'table % has triggers: %', r.rel, txt
                USING ERRCODE = 'feature_not_supported',
                      DETAIL = 'Citus distributes a table with triggers only with citus.enable_unsafe_triggers: each shard gets them, and they fire on the workers, for the rows of their shard only.',
                      HINT = 'If they only read and change the row being written (an audit column, say), call it again with allow_triggers => true; else drop them first.';
        END IF;
        -- foreign keys: to registered or shared tables only; none from a
        -- shared table to a registered one
        FOR f IN SELECT k.conname, k.conrelid, coalesce(pg_partition_root(k.confrelid), k.confrelid)::regclass AS parent
                   FROM tenancy.foreign_keys(r.rel) k LOOP
            CONTINUE WHEN f.parent = r.rel;
            IF r.kind = 'reference'
               AND EXISTS (SELECT FROM tenancy.tables t WHERE t.relation = f.parent) THEN
                RAISE EXCEPTION 'foreign key % of shared table % references registered table %', f.conname, f.conrelid, f.parent
                    USING ERRCODE = 'feature_not_supported',
                          DETAIL = 'A reference table is copied to every node; Citus refuses its foreign keys to a distributed table.',
                          HINT = format('Drop the key, or register %s as a tenant table.', r.rel);
            ELSIF NOT EXISTS (SELECT FROM tenancy.distribute_order() o WHERE o.relation = f.parent) THEN
                RAISE EXCEPTION 'foreign key % of table % references %, which is neither registered nor shared', f.conname, f.conrelid, f.parent
                    USING ERRCODE = 'object_not_in_prerequisite_state',
                          DETAIL = 'Citus refuses a foreign key from a distributed or reference table to a local table.',
                          HINT = format('Mark it shared (SELECT tenancy.mark_shared(%L);) or register it as a tenant table.', f.parent::text);
            END IF;
        END LOOP;
    END LOOP;

    -- 1. keys declared on the partitions only
    FOR r IN SELECT o.relation AS rel, c.relname, n.nspname FROM tenancy.distribute_order() o
               JOIN pg_class c ON c.oid = o.relation JOIN pg_namespace n ON n.oid = c.relnamespace
              WHERE c.relkind = 'p' LOOP
        nparts := (SELECT count(*) FROM pg_partition_tree(r.rel) x WHERE x.isleaf);
        FOR f IN
            SELECT k.confrelid, pg_get_constraintdef(k.conoid) AS def, k.cols,
                   count(DISTINCT k.conrelid) AS n,
                   array_agg(k.conrelid::text ORDER BY k.conrelid::text) AS parts,
                   array_agg(k.conname::text ORDER BY k.conrelid::text) AS names
              FROM tenancy.foreign_keys(r.rel) k
             WHERE k.partition IS NOT NULL
             GROUP BY k.confrelid, pg_get_constraintdef(k.conoid), k.cols
             ORDER BY 2
        LOOP
            IF f.n <> nparts OR EXISTS (SELECT FROM pg_partition_tree(r.rel) x WHERE NOT x.isleaf AND x.level > 0) THEN
                RAISE EXCEPTION 'foreign key % is declared on some partitions of % only', f.def, r.rel
                    USING ERRCODE = 'feature_not_supported',
                          DETAIL = format('Citus distributes a partitioned table only with the foreign keys it declares itself; %s of its %s partitions declare this one (%s).',
                                          f.n, nparts, array_to_string(f.parts, ', ')),
                          HINT = 'Declare the key on the partitioned table (ALTER TABLE ... ADD FOREIGN KEY), or drop it from the partitions.';
            END IF;
            newname := tenancy.object_name(r.relname || '_' || array_to_string(f.cols, '_'), '_fkey');
            undo := format('ALTER TABLE %s DROP CONSTRAINT IF EXISTS %I', r.rel, newname);
            FOR i IN 1 .. cardinality(f.parts) LOOP
                undo := undo || format('; ALTER TABLE %s ADD CONSTRAINT %I %s NOT VALID; ALTER TABLE %s VALIDATE CONSTRAINT %I',
                                       f.parts[i], f.names[i], f.def, f.parts[i], f.names[i]);
            END LOOP;
            step := step + 1; relation := r.rel; action := 'inherit_partition_foreign_key';
            sql := format('%sSELECT tenancy.table_exec(%L, NULL, %L)', lt, r.rel::text,
                          format('ALTER TABLE %s ADD CONSTRAINT %I %s', r.rel, newname, f.def));
            undo_sql := undo;
            RETURN NEXT;
        END LOOP;
    END LOOP;

    -- 2. unique constraints and foreign keys without the tenant column
    FOR p IN SELECT * FROM tenancy.scope_constraints_plan(NULL) x ORDER BY x.step LOOP
        step := step + 1; relation := p.relation; action := p.action; sql := p.sql; undo_sql := p.undo_sql;
        RETURN NEXT;
    END LOOP;
    FOR r IN SELECT o.relation AS rel, o.column_name AS col, c.relkind, n.nspname, a.attnum
               FROM tenancy.distribute_order() o
               JOIN pg_class c ON c.oid = o.relation JOIN pg_namespace n ON n.oid = c.relnamespace
               JOIN pg_attribute a ON a.attrelid = o.relation AND a.attname = o.column_name
              WHERE o.kind = 'distributed' LOOP
        FOR f IN SELECT u.indexrelid, ic.relname AS idxname, con.conname, u.conoid,
                        (SELECT string_agg(pg_get_indexdef(u.indexrelid, k, true), ', ' ORDER BY k)
                           FROM generate_series(1, cardinality(u.keys)) k) AS keycols,
                        quote_ident(r.col) || ARRAY(SELECT pg_get_indexdef(u.indexrelid, k, true)
                                                      FROM generate_series(1, cardinality(u.keys)) k) AS keyarr
                   FROM tenancy.unscoped_unique_indexes(r.rel, r.attnum) u
                   JOIN pg_class ic ON ic.oid = u.indexrelid
                   JOIN pg_constraint con ON con.oid = u.conoid
                  WHERE u.surrogate_key
                  ORDER BY ic.relname LOOP
            IF r.relkind = 'p' THEN
                RAISE EXCEPTION 'primary key % of partitioned table % does not include the tenant column %', f.conname, r.rel, r.col
                    USING ERRCODE = 'feature_not_supported',
                          DETAIL = 'Citus requires every primary key to include the distribution column; the generator rebuilds surrogate keys of tables that are not partitioned only.',
                          HINT = format('ALTER TABLE %s DROP CONSTRAINT %I, ADD PRIMARY KEY (%I, %s);', r.rel, f.conname, r.col, f.keycols);
            END IF;
            newname := tenancy.object_name(f.idxname, '_tenant');
            step := step + 1; relation := r.rel; action := 'create_scoped_index';
            sql := format('CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS %I ON %s (%I, %s)', newname, r.rel, r.col, f.keycols);
            undo_sql := format('DROP INDEX IF EXISTS %I.%I', r.nspname, newname);
            RETURN NEXT;
            step := step + 1; action := 'rebuild_surrogate_key';
            sql := format('%sSELECT tenancy.contract_guard(%L, %L, %L, %L, %L); SELECT tenancy.table_exec(%L, NULL, %L)',
                          lt, r.rel::text, 'unique_index', newname, f.keyarr::text, f.indexrelid::regclass::text, r.rel::text,
                          format('ALTER TABLE %s DROP CONSTRAINT %I, ADD CONSTRAINT %I PRIMARY KEY USING INDEX %I',
                                 r.rel, f.conname, f.conname, newname));
            undo_sql := format('ALTER TABLE %s DROP CONSTRAINT %I, ADD CONSTRAINT %I %s',
                               r.rel, f.conname, f.conname, pg_get_constraintdef(f.conoid));
            RETURN NEXT;
        END LOOP;
    END LOOP;

    -- 3. The foreign keys from registered tables not yet distributed to
    -- shared tables not yet reference tables are dropped for the time of
    -- steps 4 and 5, and added again in step 6: Citus would make a local
    -- table that references a reference table a Citus local table, which
    -- it then refuses to distribute while another references it.
    FOR r IN SELECT o.relation AS rel FROM tenancy.distribute_order() o, LATERAL tenancy.citus_table(o.relation) ct
              WHERE o.kind = 'distributed' AND ct.kind IS DISTINCT FROM 'distributed' LOOP
        FOR f IN SELECT k.conoid, k.conname, k.conrelid, c.relkind, pg_get_constraintdef(k.conoid) AS def
                   FROM tenancy.foreign_keys(r.rel) k JOIN pg_class c ON c.oid = k.conrelid
                  WHERE EXISTS (SELECT FROM tenancy.shared_tables sh WHERE sh.relation = k.confrelid)
                    AND (tenancy.citus_table(k.confrelid)).kind IS DISTINCT FROM 'reference'
                  ORDER BY k.conrelid::text, k.conname LOOP
            step := step + 1; relation := r.rel; action := 'detach_shared_foreign_key';
            sql := format('%sSELECT tenancy.table_exec(%L, NULL, %L)', lt, f.conrelid::text,
                          format('ALTER TABLE %s DROP CONSTRAINT %I', f.conrelid, f.conname));
            undo_sql := format('ALTER TABLE %s ADD CONSTRAINT %I %s', f.conrelid, f.conname, f.def);
            RETURN NEXT;
            reattach := reattach || jsonb_build_object(
                'rel', r.rel::text,
                'sql', CASE WHEN f.relkind = 'p'
                            THEN format('%sSELECT tenancy.table_exec(%L, NULL, %L)', lt, f.conrelid::text,
                                        format('ALTER TABLE %s ADD CONSTRAINT %I %s', f.conrelid, f.conname, f.def))
                            ELSE format('%sSELECT tenancy.table_exec(%L, NULL, %L); SELECT tenancy.table_exec(%L, NULL, %L)',
                                        lt, f.conrelid::text,
                                        format('ALTER TABLE %s ADD CONSTRAINT %I %s NOT VALID', f.conrelid, f.conname, f.def),
                                        f.conrelid::text,
                                        format('ALTER TABLE %s VALIDATE CONSTRAINT %I', f.conrelid, f.conname)) END,
                'undo', format('ALTER TABLE %s DROP CONSTRAINT IF EXISTS %I', f.conrelid, f.conname));
        END LOOP;
    END LOOP;

    -- 4 and 5: distributed tables, then reference ones, colocated with the
    -- anchor (citus_anchor()), else with the first registered table.
    SELECT a.relation, a.colocation INTO anchor, acoloc FROM tenancy.citus_anchor() a;
    FOR r IN SELECT o.relation AS rel, o.kind, o.column_name AS col FROM tenancy.distribute_order() o
              ORDER BY o.kind, o.depth, o.relation::text LOOP
        ct := tenancy.citus_table(r.rel);
        undo := format('%s%sSELECT tenancy.citus_undistribute(%L)', lt, trig, r.rel::text);
        relation := r.rel;
        IF r.kind = 'reference' THEN
            CONTINUE WHEN ct.kind = 'reference';
            IF ct.kind IN ('distributed', 'single_shard') THEN
                RAISE EXCEPTION 'shared table % is a distributed table', r.rel
                    USING ERRCODE = 'object_not_in_prerequisite_state',
                          DETAIL = 'A shared table is read by every tenant: it belongs on every node, as a reference table.',
                          HINT = format('SELECT undistribute_table(%L); then call it again.', r.rel::text);
            END IF;
            step := step + 1; action := 'create_reference_table';
            sql := format('%s%sSELECT tenancy.citus_run(%L)', lt, trig,
                          format('SELECT pg_catalog.create_reference_table(%L)', r.rel::text));
            undo_sql := undo;
            RETURN NEXT;
            CONTINUE;
        END IF;
        IF anchor IS NULL THEN
            anchor := r.rel;
        END IF;
        IF ct.kind = 'distributed' THEN
            CONTINUE WHEN ct.dist_column = r.col AND (r.rel = anchor OR ct.colocation = acoloc);
            step := step + 1; action := 'alter_distributed_table';
            sql := format('%s%sSELECT tenancy.citus_run(%L)', lt, trig,
                          CASE WHEN r.rel = anchor
                               THEN format('SELECT pg_catalog.alter_distributed_table(%L, distribution_column => %L, cascade_to_colocated => false)',
                                           r.rel::text, r.col)
                               ELSE format('SELECT pg_catalog.alter_distributed_table(%L, distribution_column => %L, colocate_with => %L, cascade_to_colocated => false)',
                                           r.rel::text, r.col, anchor::text) END);
            undo_sql := format('%s%sSELECT tenancy.citus_run(%L)', lt, trig,
                               format('SELECT pg_catalog.alter_distributed_table(%L, distribution_column => %L, cascade_to_colocated => false)',
                                      r.rel::text, ct.dist_column));
        ELSE
            step := step + 1; action := 'create_distributed_table';
            sql := format('%s%sSELECT tenancy.citus_run(%L)', lt, trig,
                          format('SELECT pg_catalog.create_distributed_table(%L, %L, colocate_with => %L)',
                                 r.rel::text, r.col, CASE WHEN r.rel = anchor THEN 'none' ELSE anchor::text END));
            undo_sql := undo;
        END IF;
        RETURN NEXT;
    END LOOP;

    -- 6. the foreign keys of step 3 again (NOT VALID, then validated,
    -- except on a partitioned table, which PostgreSQL validates at once)
    FOR e IN SELECT x FROM jsonb_array_elements(reattach) x LOOP
        step := step + 1; relation := (e->>'rel')::regclass; action := 'reattach_shared_foreign_key';
        sql := e->>'sql'; undo_sql := e->>'undo';
        RETURN NEXT;
    END LOOP;
END
$$;
COMMENT ON FUNCTION tenancy.distribute_plan(boolean) IS 'the steps that distribute the registered tables by their tenant column, colocated, and the shared tables as reference tables, with their undo SQL';

-- The plan as statements for psql's \gexec (run with \set ON_ERROR_STOP
-- on): the timeouts, each step (the contract phase's followed by their
-- log_step(), as scope_constraints_sql() does), the timeouts reset.
-- squawk: ignore prefer-robust-stmts: the steps are computed from the catalog; rerun after a failure, the preview holds only the steps still to do
CREATE FUNCTION tenancy.distribute_sql(allow_triggers boolean DEFAULT false) RETURNS SETOF text
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT x.stmt FROM (
    SELECT 0 AS g, NULL::int AS step, u.o::int AS n, u.s AS stmt FROM unnest(tenancy.preview_set(true)) WITH ORDINALITY u(s, o)
    UNION ALL
    SELECT 2, NULL, u.o::int, u.s FROM unnest(tenancy.preview_reset()) WITH ORDINALITY u(s, o)
    UNION ALL
    SELECT 1, p.step, s.n, s.stmt
    FROM tenancy.distribute_plan(allow_triggers) p,
         LATERAL (VALUES (0, CASE WHEN p.sql ~ '^CREATE (UNIQUE )?INDEX CONCURRENTLY '
                                  THEN format('SET lock_timeout = %L', '100ms') END),
                         (1, p.sql),
                         (2, CASE WHEN p.action NOT IN ('inherit_partition_foreign_key', 'create_reference_table',
                                                        'create_distributed_table', 'alter_distributed_table',
                                                        'detach_shared_foreign_key', 'reattach_shared_foreign_key')
                                  THEN format('SELECT tenancy.log_step(%L, %L, %L, %L)',
                                              p.relation::text, p.action, p.sql, p.undo_sql) END)) s(n, stmt)
    WHERE s.stmt IS NOT NULL
    ) x
    ORDER BY x.g, x.step, x.n;
$$;
COMMENT ON FUNCTION tenancy.distribute_sql(boolean) IS 'statements for \gexec that distribute the registered and shared tables (distribute_plan()), in order';

-- Runs the plan, one step a transaction, each retried when its lock is not
-- granted within the step's lock_timeout.  The steps that build an index
-- CONCURRENTLY cannot run in a procedure: with any, it refuses and names
-- the \gexec form.
CREATE PROCEDURE tenancy.distribute(allow_triggers boolean DEFAULT false, max_attempts integer DEFAULT 10)
LANGUAGE plpgsql AS $$
DECLARE
    sqls    text[];
    rels    regclass[];
    acts    text[];
    undos   text[];
    attempt integer;
BEGIN
    PERFORM pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', true);
    IF allow_triggers IS NULL OR max_attempts IS NULL THEN
        RAISE EXCEPTION 'arguments must not be null' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    IF max_attempts < 1 THEN
        RAISE EXCEPTION 'max_attempts must be positive' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    SELECT coalesce(array_agg(p.sql ORDER BY p.step), '{}'), coalesce(array_agg(p.relation ORDER BY p.step), '{}'),
           coalesce(array_agg(p.action ORDER BY p.step), '{}'), coalesce(array_agg(p.undo_sql ORDER BY p.step), '{}')
      INTO sqls, rels, acts, undos FROM tenancy.distribute_plan(allow_triggers) p;
    IF EXISTS (SELECT FROM unnest(sqls) s WHERE s ~ 'INDEX CONCURRENTLY') THEN
        RAISE EXCEPTION 'tenancy.distribute() cannot build the indexes the plan needs'
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  DETAIL = 'Some unique constraints do not include the tenant column yet; their indexes are built CONCURRENTLY, which a procedure cannot do.',
                  HINT = 'Run the plan with psql instead: SELECT * FROM tenancy.distribute_sql() \gexec';
    END IF;
    IF cardinality(sqls) = 0 THEN
        RAISE NOTICE 'nothing to distribute: every registered and shared table is distributed as planned';
        RETURN;
    END IF;
    IF tenancy.in_transaction_block() THEN
        RAISE EXCEPTION 'tenancy.distribute() cannot run inside a transaction block'
            USING ERRCODE = 'active_sql_transaction',
                  DETAIL = 'It commits after each step, so that no lock is held for long.',
                  HINT = 'Run CALL tenancy.distribute(...) on its own, outside BEGIN ... COMMIT.';
    END IF;
    COMMIT;
    FOR i IN 1 .. cardinality(sqls) LOOP
        PERFORM pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', true);
        attempt := 0;
        LOOP
            attempt := attempt + 1;
            BEGIN
                -- plpgsql_check: the step's text comes from distribute_plan(): every name in it is quoted (%I, %L)
                EXECUTE sqls[i];
                -- the contract phase's steps are logged as scope_constraints_sql() logs them
                IF acts[i] NOT IN ('inherit_partition_foreign_key', 'create_reference_table', 'create_distributed_table',
                                   'alter_distributed_table', 'detach_shared_foreign_key', 'reattach_shared_foreign_key') THEN
                    PERFORM tenancy.log_step(rels[i], acts[i], sqls[i], undos[i]);
                END IF;
                EXIT;
            EXCEPTION
                WHEN lock_not_available THEN
                    IF attempt >= max_attempts THEN
                        RAISE EXCEPTION 'could not lock % in % attempts', rels[i], attempt
                            USING ERRCODE = 'lock_not_available',
                                  DETAIL = format('The earlier steps are done; step %s was not: %s', i, sqls[i]),
                                  HINT = 'Call it again later: the plan goes on where it stopped.';
                    END IF;
                    PERFORM pg_catalog.pg_sleep(least(0.05 * attempt, 1));
            END;
        END LOOP;
        COMMIT;
    END LOOP;
END
$$;
COMMENT ON PROCEDURE tenancy.distribute(boolean, integer) IS 'run distribute_plan() step by step, one transaction each, retrying steps whose lock is not granted';

-- The undo: every registered and shared table Citus holds back to a local
-- table (undistribute_table(), which copies the rows back from the shards),
-- the last distributed first.  Each statement does nothing for a table an
-- earlier one already brought back (through its foreign keys).
CREATE FUNCTION tenancy.undistribute_sql(allow_triggers boolean DEFAULT false) RETURNS SETOF text
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    r record;
BEGIN
    PERFORM tenancy.citus_required('tenancy.undistribute_sql()');
    FOR r IN SELECT o.relation AS rel FROM tenancy.distribute_order() o, LATERAL tenancy.citus_table(o.relation) ct
              WHERE ct.kind IS NOT NULL
              ORDER BY o.kind, o.depth DESC, o.relation::text DESC LOOP
        RETURN NEXT format('%s%sSELECT tenancy.citus_undistribute(%L)',
                           format('SET LOCAL lock_timeout = %L; ', '1s'),
                           CASE WHEN allow_triggers THEN 'SET LOCAL citus.enable_unsafe_triggers = on; ' ELSE '' END,
                           r.rel::text);
    END LOOP;
END
$$;
COMMENT ON FUNCTION tenancy.undistribute_sql(boolean) IS 'statements for \gexec that bring the registered and shared tables Citus holds back to local tables';

------------------------------------------------------------------------------
-- Isolating a large tenant: its rows in shards of their own (one per
-- colocated table), optionally on a node of their own.
------------------------------------------------------------------------------

-- The statements: isolate_tenant_to_new_shard() on the table, CASCADE to
-- the tables colocated with it, then, with node_name, citus_move_shard_placement()
-- of the new shard to that node.
CREATE FUNCTION tenancy.isolate_tenant_sql(tbl regclass, tenant text, node_name text DEFAULT NULL,
                                           node_port integer DEFAULT NULL, shard_transfer_mode text DEFAULT 'auto')
RETURNS SETOF text
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    key text;
    ct  record;
BEGIN
    PERFORM tenancy.citus_required('tenancy.isolate_tenant_sql()');
    IF tbl IS NULL OR tenant IS NULL OR shard_transfer_mode IS NULL THEN
        RAISE EXCEPTION 'table, tenant and shard_transfer_mode must not be NULL' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    IF shard_transfer_mode NOT IN ('auto', 'force_logical', 'block_writes') THEN
        RAISE EXCEPTION 'shard_transfer_mode must be auto, force_logical or block_writes, not %', shard_transfer_mode
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF (node_name IS NULL) <> (node_port IS NULL) THEN
        RAISE EXCEPTION 'node_name and node_port go together' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    PERFORM tenancy.registered_table(tbl);
    ct := tenancy.citus_table(tbl);
    IF ct.kind IS DISTINCT FROM 'distributed' OR ct.dist_column <> tenancy.tenant_column(tbl) THEN
        RAISE EXCEPTION 'table % is not distributed by its tenant column', tbl
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = 'Distribute it first: SELECT * FROM tenancy.distribute_sql() \gexec';
    END IF;
    key := tenancy.tenant_key(tenant);
    IF key IS NULL THEN
        RAISE EXCEPTION 'tenant % does not exist', tenant USING ERRCODE = 'undefined_object';
    END IF;
    RETURN NEXT format('SELECT pg_catalog.isolate_tenant_to_new_shard(%L, %L, %L, shard_transfer_mode => %L)',
                       tbl::text, key, 'CASCADE', shard_transfer_mode);
    IF node_name IS NOT NULL THEN
        RETURN NEXT format('SELECT pg_catalog.citus_move_shard_placement(s.shardid, p.nodename, p.nodeport, %L, %s, shard_transfer_mode => %L)'
                           ' FROM (SELECT pg_catalog.get_shard_id_for_distribution_column(%L, %L) AS shardid) s'
                           ' JOIN pg_catalog.pg_dist_shard_placement p ON p.shardid = s.shardid'
                           ' WHERE (p.nodename, p.nodeport) <> (%L, %s)',
                           node_name, node_port, shard_transfer_mode, tbl::text, key, node_name, node_port);
    END IF;
END
$$;
COMMENT ON FUNCTION tenancy.isolate_tenant_sql(regclass, text, text, integer, text) IS 'the statements isolate_tenant() would run: a shard of its own for one tenant, optionally moved to a node';

-- Where a tenant's rows are: for tbl and each table colocated with it, the
-- tenant's rows counted through the coordinator, the shard that holds the
-- tenant (for a partitioned table, its partitions' shards summed), its
-- node, the rows of that shard and whether the shard holds this tenant's
-- hash value only (isolated).
CREATE FUNCTION tenancy.tenant_shards(tbl regclass, tenant text)
RETURNS TABLE (relation regclass, shard_id bigint, node text, tenant_rows bigint, rows_in_shard bigint, isolated boolean)
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp SET row_security = off AS $$
#variable_conflict use_column
DECLARE
    key   text;
    coloc integer;
    r     record;
    n     bigint;
    q_shard text := $q$SELECT s.shardid, p.nodename || ':' || p.nodeport, d.shardminvalue = d.shardmaxvalue
                     FROM (SELECT pg_catalog.get_shard_id_for_distribution_column($1, $2) AS shardid) s
                     JOIN pg_catalog.pg_dist_shard d ON d.shardid = s.shardid
                     JOIN pg_catalog.pg_dist_shard_placement p ON p.shardid = s.shardid$q$;
    q_rows  text := $q$SELECT sum(p.result::bigint)::bigint
                              FROM (SELECT x.relid FROM pg_catalog.pg_partition_tree($1) x WHERE x.isleaf
                                    UNION SELECT $1 WHERE $3 <> 'p') l,
                                   LATERAL pg_catalog.run_command_on_placements(l.relid, 'SELECT count(*) FROM %s') p
                             WHERE p.shardid = pg_catalog.get_shard_id_for_distribution_column(l.relid, $2) AND p.success$q$;
BEGIN
    PERFORM tenancy.citus_required('tenancy.tenant_shards()');
    IF tbl IS NULL OR tenant IS NULL THEN
        RAISE EXCEPTION 'table and tenant must not be NULL' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    PERFORM tenancy.registered_table(tbl);
    key := tenancy.tenant_key(tenant);
    coloc := (tenancy.citus_table(tbl)).colocation;
    FOR r IN SELECT o.relation AS rel, o.column_name AS col, tenancy.type_sql(a.atttypid) AS typ, c.relkind
               FROM tenancy.distribute_order() o, LATERAL tenancy.citus_table(o.relation) ct, pg_attribute a, pg_class c
              WHERE ct.kind = 'distributed' AND ct.colocation = coloc
                AND a.attrelid = o.relation AND a.attname = o.column_name AND c.oid = o.relation
              ORDER BY o.relation::text LOOP
        relation := r.rel;
        tenant_rows := (tenancy.table_query(r.rel, NULL, format('SELECT count(*) FROM %s WHERE %I = $1::%s', r.rel, r.col, r.typ), key))[1]::bigint;
        -- plpgsql_check: Citus's catalog and functions exist only with Citus: not checked here (a variable)
        EXECUTE q_shard
            INTO shard_id, node, isolated USING r.rel, key;
        rows_in_shard := 0;
        -- plpgsql_check: as above
        FOR n IN EXECUTE q_rows
                     USING r.rel, key, r.relkind::text LOOP
            rows_in_shard := n;
        END LOOP;
        RETURN NEXT;
    END LOOP;
END
$$;
COMMENT ON FUNCTION tenancy.tenant_shards(regclass, text) IS 'a tenant''s rows and shard in each table colocated with tbl: rows counted, shard, node, rows of the shard, whether it holds this tenant only';

-- isolate_tenant_to_new_shard(), then the check: every colocated table's
-- rows of the tenant (counted through the coordinator) the same before and
-- after, and each new shard holding this tenant's hash value only.  Any
-- difference raises XX001 and the isolation rolls back.  The rows of the
-- new shards themselves are counted by tenant_shards(), after the commit:
-- run_command_on_placements() opens connections of its own, which would
-- wait for the isolation's uncommitted shards.  Moving the new shards to a
-- node of their own is a second transaction as well:
-- isolate_tenant_sql(..., node_name, node_port) with \gexec.
CREATE FUNCTION tenancy.isolate_tenant(tbl regclass, tenant text, shard_transfer_mode text DEFAULT 'auto')
RETURNS TABLE (relation regclass, shard_id bigint, rows_before bigint, rows_after bigint, isolated boolean)
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_column
DECLARE
    stmts  text[] := ARRAY(SELECT tenancy.isolate_tenant_sql(tbl, tenant, NULL, NULL, shard_transfer_mode));
    key    text := tenancy.tenant_key(tenant);
    coloc  integer := (tenancy.citus_table(tbl)).colocation;
    before jsonb := '{}'::jsonb;
    r      record;
    s      text;
    q      text := $q$SELECT (pg_catalog.get_shard_id_for_distribution_column($1, $2))::bigint$q$;
    q_iso  text := $q$SELECT d.shardminvalue = d.shardmaxvalue FROM pg_catalog.pg_dist_shard d WHERE d.shardid = $1$q$;
BEGIN
    FOR r IN SELECT o.relation AS rel, o.column_name AS col, tenancy.type_sql(a.atttypid) AS typ
               FROM tenancy.distribute_order() o, LATERAL tenancy.citus_table(o.relation) ct, pg_attribute a
              WHERE ct.kind = 'distributed' AND ct.colocation = coloc
                AND a.attrelid = o.relation AND a.attname = o.column_name
              ORDER BY o.relation::text LOOP
        before := before || jsonb_build_object(r.rel::oid::text,
            (tenancy.table_query(r.rel, NULL, format('SELECT count(*) FROM %s WHERE %I = $1::%s', r.rel, r.col, r.typ), key))[1]::bigint);
    END LOOP;
    FOREACH s IN ARRAY stmts LOOP
        -- plpgsql_check: from isolate_tenant_sql(): every name and value in it is quoted (%L)
        EXECUTE s;
    END LOOP;
    FOR r IN SELECT o.relation AS rel, o.column_name AS col, tenancy.type_sql(a.atttypid) AS typ
               FROM tenancy.distribute_order() o, LATERAL tenancy.citus_table(o.relation) ct, pg_attribute a
              WHERE ct.kind = 'distributed' AND ct.colocation = coloc
                AND a.attrelid = o.relation AND a.attname = o.column_name
              ORDER BY o.relation::text LOOP
        relation := r.rel;
        rows_before := (before->>(r.rel::oid::text))::bigint;
        rows_after := (tenancy.table_query(r.rel, NULL, format('SELECT count(*) FROM %s WHERE %I = $1::%s', r.rel, r.col, r.typ), key))[1]::bigint;
        -- plpgsql_check: Citus's catalog and functions exist only with Citus: not checked here (a variable)
        EXECUTE q INTO shard_id USING r.rel, key;
        -- plpgsql_check: as above
        EXECUTE q_iso
            INTO isolated USING shard_id;
        IF rows_after IS DISTINCT FROM rows_before OR isolated IS NOT TRUE THEN
            RAISE EXCEPTION 'isolating tenant % of % changed its rows or did not isolate it: % before, % after, shard % isolated: %',
                            tenant, r.rel, rows_before, rows_after, shard_id, isolated
                USING ERRCODE = 'data_corrupted',
                      DETAIL = 'The isolation is rolled back.';
        END IF;
        RETURN NEXT;
    END LOOP;
END
$$;
COMMENT ON FUNCTION tenancy.isolate_tenant(regclass, text, text) IS 'move one tenant''s rows to shards of their own in every colocated table, checking the row counts before and after and that each new shard holds this tenant only';

------------------------------------------------------------------------------
-- verify()'s Citus checks (none without Citus):
--   citus_distribution      a registered table not distributed by its tenant column
--   citus_colocation        a registered table not colocated with the registered tables it references
--   citus_policy            a policy Citus cannot run on a distributed table (a subquery)
--   citus_reference_table   a shared table that is not a reference table
------------------------------------------------------------------------------
CREATE FUNCTION tenancy.citus_verify(tbl regclass DEFAULT NULL)
RETURNS TABLE (check_name text, relation regclass, status text, rows_affected bigint,
               detail text, fix text)
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
DECLARE
    r   record;
    f   record;
    ct  record;
    pt  record;
    anc record;
    txt text;
BEGIN
    IF NOT tenancy.citus_installed() THEN
        RETURN;
    END IF;
    anc := tenancy.citus_anchor();
    rows_affected := NULL;
    FOR r IN SELECT o.relation AS rel, o.kind, o.column_name AS col FROM tenancy.distribute_order() o
              WHERE tbl IS NULL OR o.relation = tbl ORDER BY o.relation::text LOOP
        ct := tenancy.citus_table(r.rel);
        relation := r.rel;
        IF r.kind = 'reference' THEN
            check_name := 'citus_reference_table';
            IF ct.kind = 'reference' THEN
                status := 'ok'; detail := 'shared table, a reference table on every node'; fix := NULL;
            ELSE
                status := 'failure';
                detail := format('shared table, but %s: a reference table is what every node reads',
                                 CASE WHEN ct.kind IS NULL THEN 'a local table of the coordinator' ELSE 'a ' || ct.kind || ' Citus table' END);
                fix := CASE WHEN ct.kind IN ('distributed', 'single_shard')
                            THEN format('SELECT undistribute_table(%L); SELECT create_reference_table(%L);', r.rel::text, r.rel::text)
                            ELSE 'SELECT * FROM tenancy.distribute_sql() \gexec' END;
            END IF;
            RETURN NEXT;
            CONTINUE;
        END IF;

        check_name := 'citus_distribution';
        IF ct.kind = 'distributed' AND ct.dist_column = r.col THEN
            status := 'ok'; fix := NULL;
            detail := format('distributed by its tenant column %I (colocation group %s)', r.col, ct.colocation);
        ELSIF ct.kind = 'distributed' THEN
            status := 'failure';
            detail := format('distributed by %I, not by its tenant column %I: a tenant''s rows are spread over every shard and joins with its other tables cross nodes',
                             ct.dist_column, r.col);
            fix := format('SELECT alter_distributed_table(%L, distribution_column => %L, cascade_to_colocated => false);', r.rel::text, r.col);
        ELSE
            status := 'failure';
            detail := format('%s, not distributed by its tenant column %I',
                             CASE WHEN ct.kind IS NULL THEN 'a local table of the coordinator' ELSE 'a ' || ct.kind || ' Citus table' END, r.col);
            fix := 'SELECT * FROM tenancy.distribute_sql() \gexec';
        END IF;
        RETURN NEXT;

        -- colocated with each registered table it references, and with
        -- the group of the other registered tables (citus_anchor())
        IF ct.kind = 'distributed' AND ct.dist_column = r.col THEN
            check_name := 'citus_colocation';
            txt := NULL;
            IF anc.colocation IS DISTINCT FROM ct.colocation THEN
                txt := format('the colocation group %s of %s and most registered tables', anc.colocation, anc.relation);
                fix := format('SELECT alter_distributed_table(%L, colocate_with => %L, cascade_to_colocated => false);', r.rel::text, anc.relation::text);
            END IF;
            FOR f IN SELECT DISTINCT coalesce(pg_partition_root(k.confrelid), k.confrelid)::regclass AS parent
                       FROM tenancy.foreign_keys(r.rel) k
                      WHERE coalesce(pg_partition_root(k.confrelid), k.confrelid) <> r.rel::oid
                        AND EXISTS (SELECT FROM tenancy.tables t WHERE t.relation = coalesce(pg_partition_root(k.confrelid), k.confrelid))
                      ORDER BY 1 LOOP
                pt := tenancy.citus_table(f.parent);
                IF pt.kind = 'distributed' AND pt.colocation IS DISTINCT FROM ct.colocation THEN
                    txt := coalesce(txt || ', ', '') || f.parent::text;
                    fix := format('SELECT alter_distributed_table(%L, colocate_with => %L, cascade_to_colocated => false);', r.rel::text, f.parent::text);
                END IF;
            END LOOP;
            IF txt IS NULL THEN
                status := 'ok'; fix := NULL;
                detail := 'colocated with the registered tables it references';
            ELSE
                status := 'failure';
                detail := format('not colocated with %s, which it references: their joins and foreign keys cross nodes (Citus refuses such keys)', txt);
            END IF;
            RETURN NEXT;
        END IF;

        check_name := 'citus_policy';
        SELECT string_agg(format('%I on %s', pol.polname, pol.polrelid::regclass), ', ' ORDER BY pol.polrelid::regclass::text, pol.polname)
          INTO txt
          FROM pg_policy pol
         WHERE pol.polrelid IN (SELECT r.rel::oid UNION SELECT x.relid FROM pg_partition_tree(r.rel) x)
           AND (coalesce(pol.polqual::text, '') LIKE '%{SUBLINK %' OR coalesce(pol.polwithcheck::text, '') LIKE '%{SUBLINK %');
        IF txt IS NULL THEN
            status := 'ok'; fix := NULL; detail := 'no policy with a subquery';
        ELSE
            status := 'failure'; fix := NULL;
            detail := format('policies with a subquery (%s): Citus refuses them on distributed tables; rewrite them without one', txt);
        END IF;
        RETURN NEXT;
    END LOOP;
END
$$;
COMMENT ON FUNCTION tenancy.citus_verify(regclass) IS 'verify() checks citus_distribution, citus_colocation, citus_policy, citus_reference_table: no row without Citus';

REVOKE EXECUTE ON FUNCTION
    tenancy.citus_names(),
    tenancy.citus_remap(jsonb),
    tenancy.citus_run(text),
    tenancy.citus_undistribute(text),
    tenancy.distribute_plan(boolean),
    tenancy.distribute_sql(boolean),
    tenancy.undistribute_sql(boolean),
    tenancy.isolate_tenant_sql(regclass, text, text, integer, text),
    tenancy.isolate_tenant(regclass, text, text),
    tenancy.tenant_shards(regclass, text)
FROM PUBLIC;
REVOKE EXECUTE ON PROCEDURE tenancy.distribute(boolean, integer) FROM PUBLIC;
-- citus_installed(), citus_required(), citus_table(), citus_anchor(),
-- distribute_order() and citus_verify() read the catalog (Citus's too) and
-- nothing else, as their caller: PUBLIC, so that whoever may run verify()
-- runs its Citus checks.

-- verify(): the Citus checks (src/verify.sql)
-- squawk: ignore require-lock-timeout: each fix is one statement for a DBA to run by itself; its index fixes are CONCURRENTLY (no lock blocking reads or writes)
-- squawk: ignore require-statement-timeout: as above: a statement_timeout would cancel the concurrent build
CREATE OR REPLACE FUNCTION tenancy.verify(tbl regclass DEFAULT NULL, max_rows bigint DEFAULT NULL)
RETURNS TABLE (check_name text, relation regclass, status text, rows_affected bigint,
               detail text, fix text)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
SET row_security = off
AS $$
#variable_conflict use_column
DECLARE
    r          record;
    cp         record;
    conflicted text[];
BEGIN
    IF max_rows IS NOT NULL AND max_rows < 1 THEN
        RAISE EXCEPTION 'max_rows must be positive'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF tbl IS NOT NULL AND NOT EXISTS (SELECT 1 FROM tenancy.tables t WHERE t.relation = tbl) THEN
        RAISE EXCEPTION 'table % is not registered in tenancy.tables', tbl
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = 'Register it with tenancy.add_tenant_column(), or call tenancy.verify() for every registered table.';
    END IF;

    FOR r IN
        SELECT t.relation AS rel, t.column_name AS col, t.stage,
               c.oid IS NOT NULL AS present, c.relkind,
               a.attnum, a.atttypid
        FROM tenancy.tables t
        LEFT JOIN pg_class c ON c.oid = t.relation
        LEFT JOIN pg_attribute a ON a.attrelid = t.relation AND a.attname = t.column_name
                                AND a.attnum > 0 AND NOT a.attisdropped
        WHERE tbl IS NULL OR t.relation = tbl
        ORDER BY t.relation::text
    LOOP
        RETURN QUERY SELECT * FROM tenancy.verify_tenant_column(r.rel, r.col, r.present, r.attnum, r.atttypid);
        -- a table or column that is gone: the other checks skip the table
        CONTINUE WHEN NOT r.present OR r.attnum IS NULL;
        RETURN QUERY SELECT * FROM tenancy.verify_null_tenant(r.rel, r.col, max_rows);
        RETURN QUERY SELECT * FROM tenancy.verify_unknown_tenant(r.rel, r.col, r.atttypid, max_rows);
        -- the foreign keys whose parents disagree: cross_tenant_reference
        -- suggests no fix through them
        conflicted := '{}';
        FOR cp IN SELECT * FROM tenancy.verify_conflicting_parents(r.rel, max_rows) LOOP
            check_name := cp.check_name; relation := cp.relation; status := cp.status;
            rows_affected := cp.rows_affected; detail := cp.detail; fix := cp.fix;
            conflicted := conflicted || coalesce(cp.conflicting_keys, '{}');
            RETURN NEXT;
        END LOOP;
        RETURN QUERY SELECT * FROM tenancy.verify_derived_tenant_mismatch(r.rel, r.col, max_rows);
        RETURN QUERY SELECT * FROM tenancy.verify_cross_tenant_reference(r.rel, r.col, r.atttypid, max_rows, conflicted);
        RETURN QUERY SELECT * FROM tenancy.verify_unique_scope(r.rel, r.col, r.attnum);
        RETURN QUERY SELECT * FROM tenancy.verify_foreign_key_scope(r.rel, r.col);
        RETURN QUERY SELECT * FROM tenancy.verify_row_security(r.rel, r.col, r.stage);
        RETURN QUERY SELECT * FROM tenancy.verify_policy_mode(r.rel, r.col, r.stage);
        RETURN QUERY SELECT * FROM tenancy.verify_shadow_divergence(r.rel);
        RETURN QUERY SELECT * FROM tenancy.verify_tenant_index(r.rel, r.col, r.attnum, r.relkind);
        RETURN QUERY SELECT * FROM tenancy.verify_view_security_invoker(r.rel);
        RETURN QUERY SELECT * FROM tenancy.verify_materialized_view(r.rel);
        RETURN QUERY SELECT * FROM tenancy.verify_security_definer_function(r.rel);
        RETURN QUERY SELECT * FROM tenancy.verify_bypassrls_role(r.rel);
        RETURN QUERY SELECT * FROM tenancy.verify_unregistered_reference(r.rel);
    END LOOP;

    -- on a Citus coordinator: distribution, colocation, policies, reference
    -- tables (src/distribute.sql; no row without Citus)
    RETURN QUERY SELECT * FROM tenancy.citus_verify(tbl);

    IF tbl IS NOT NULL THEN
        RETURN;
    END IF;

    RETURN QUERY SELECT * FROM tenancy.verify_shared_table();
    RETURN QUERY SELECT * FROM tenancy.verify_user_without_tenant(max_rows);
    RETURN QUERY SELECT * FROM tenancy.verify_tenant_without_owner();
END
$$;
COMMENT ON FUNCTION tenancy.verify(regclass, bigint) IS 'readiness report: one row per check and finding (ok, warning, failure) with a suggested fix';

-- issue 17: verify() checks the workers' context (citus_context); verify() carries
-- every branch's checks (rollout, citus_verify, citus_context)
-- verify()'s check citus_context: on a Citus coordinator, every worker
-- checks the forwarded tenant as this node does (citus_context_problems()).
-- Without Citus, and on a worker, no row.  The probe connects to the
-- workers and reads their role bindings: a caller without EXECUTE on
-- citus_context_problems() gets a warning, not the workers' settings.
CREATE FUNCTION tenancy.verify_citus_context()
RETURNS TABLE (check_name text, relation regclass, status text, rows_affected bigint,
               detail text, fix text)
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    p record;
    n integer := 0;
    coordinator boolean;
BEGIN
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_extension WHERE extname = 'citus') THEN
        RETURN;
    END IF;
    -- plpgsql_check: Citus's functions exist only where Citus is installed: named at run time.
    EXECUTE format('SELECT pg_catalog.%I()', 'citus_is_coordinator') INTO coordinator;
    IF NOT coordinator THEN
        RETURN;
    END IF;
    check_name := 'citus_context';
    relation := NULL;
    fix := NULL;
    IF NOT has_function_privilege('tenancy.citus_context_problems()', 'EXECUTE') THEN
        status := 'warning';
        rows_affected := NULL;
        detail := 'not checked: the workers'' settings are read by tenancy.citus_context_problems(), which this role may not run';
        RETURN NEXT;
        RETURN;
    END IF;
    FOR p IN SELECT * FROM tenancy.citus_context_problems() LOOP
        n := n + 1;
        status := 'failure';
        rows_affected := NULL;
        detail := format('worker %s, %s: %s', p.node, p.check_name, p.detail);
        RETURN NEXT;
    END LOOP;
    IF n = 0 THEN
        status := 'ok';
        rows_affected := 0;
        detail := 'every worker runs this version of tenancy after citus, with the same tenant type, context source and role bindings, and a keys file in token mode';
        RETURN NEXT;
    END IF;
END
$$;
COMMENT ON FUNCTION tenancy.verify_citus_context() IS 'verify() check citus_context: on a Citus coordinator, the workers that would check a forwarded tenant differently (citus_context_problems()); no row without Citus';
REVOKE EXECUTE ON FUNCTION tenancy.verify_citus_context() FROM PUBLIC;

CREATE OR REPLACE FUNCTION tenancy.verify(tbl regclass DEFAULT NULL, max_rows bigint DEFAULT NULL)
RETURNS TABLE (check_name text, relation regclass, status text, rows_affected bigint,
               detail text, fix text)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
SET row_security = off
AS $$
#variable_conflict use_column
DECLARE
    r          record;
    cp         record;
    conflicted text[];
BEGIN
    IF max_rows IS NOT NULL AND max_rows < 1 THEN
        RAISE EXCEPTION 'max_rows must be positive'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF tbl IS NOT NULL AND NOT EXISTS (SELECT 1 FROM tenancy.tables t WHERE t.relation = tbl) THEN
        RAISE EXCEPTION 'table % is not registered in tenancy.tables', tbl
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = 'Register it with tenancy.add_tenant_column(), or call tenancy.verify() for every registered table.';
    END IF;

    FOR r IN
        SELECT t.relation AS rel, t.column_name AS col, t.stage,
               c.oid IS NOT NULL AS present, c.relkind,
               a.attnum, a.atttypid
        FROM tenancy.tables t
        LEFT JOIN pg_class c ON c.oid = t.relation
        LEFT JOIN pg_attribute a ON a.attrelid = t.relation AND a.attname = t.column_name
                                AND a.attnum > 0 AND NOT a.attisdropped
        WHERE tbl IS NULL OR t.relation = tbl
        ORDER BY t.relation::text
    LOOP
        RETURN QUERY SELECT * FROM tenancy.verify_tenant_column(r.rel, r.col, r.present, r.attnum, r.atttypid);
        -- a table or column that is gone: the other checks skip the table
        CONTINUE WHEN NOT r.present OR r.attnum IS NULL;
        RETURN QUERY SELECT * FROM tenancy.verify_null_tenant(r.rel, r.col, max_rows);
        RETURN QUERY SELECT * FROM tenancy.verify_unknown_tenant(r.rel, r.col, r.atttypid, max_rows);
        -- the foreign keys whose parents disagree: cross_tenant_reference
        -- suggests no fix through them
        conflicted := '{}';
        FOR cp IN SELECT * FROM tenancy.verify_conflicting_parents(r.rel, max_rows) LOOP
            check_name := cp.check_name; relation := cp.relation; status := cp.status;
            rows_affected := cp.rows_affected; detail := cp.detail; fix := cp.fix;
            conflicted := conflicted || coalesce(cp.conflicting_keys, '{}');
            RETURN NEXT;
        END LOOP;
        RETURN QUERY SELECT * FROM tenancy.verify_derived_tenant_mismatch(r.rel, r.col, max_rows);
        RETURN QUERY SELECT * FROM tenancy.verify_cross_tenant_reference(r.rel, r.col, r.atttypid, max_rows, conflicted);
        RETURN QUERY SELECT * FROM tenancy.verify_unique_scope(r.rel, r.col, r.attnum);
        RETURN QUERY SELECT * FROM tenancy.verify_foreign_key_scope(r.rel, r.col);
        RETURN QUERY SELECT * FROM tenancy.verify_row_security(r.rel, r.col, r.stage);
        RETURN QUERY SELECT * FROM tenancy.verify_policy_mode(r.rel, r.col, r.stage);
        RETURN QUERY SELECT * FROM tenancy.verify_rollout(r.rel);
        RETURN QUERY SELECT * FROM tenancy.verify_shadow_divergence(r.rel);
        RETURN QUERY SELECT * FROM tenancy.verify_tenant_index(r.rel, r.col, r.attnum, r.relkind);
        RETURN QUERY SELECT * FROM tenancy.verify_view_security_invoker(r.rel);
        RETURN QUERY SELECT * FROM tenancy.verify_materialized_view(r.rel);
        RETURN QUERY SELECT * FROM tenancy.verify_security_definer_function(r.rel);
        RETURN QUERY SELECT * FROM tenancy.verify_bypassrls_role(r.rel);
        RETURN QUERY SELECT * FROM tenancy.verify_unregistered_reference(r.rel);
    END LOOP;

    -- on a Citus coordinator: distribution, colocation, policies, reference
    -- tables (src/distribute.sql; no row without Citus)
    RETURN QUERY SELECT * FROM tenancy.citus_verify(tbl);

    IF tbl IS NOT NULL THEN
        RETURN;
    END IF;

    RETURN QUERY SELECT * FROM tenancy.verify_shared_table();
    -- on a Citus coordinator: the workers check a forwarded tenant as here
    -- (src/citus_context.sql; no row without Citus)
    RETURN QUERY SELECT * FROM tenancy.verify_citus_context();
    RETURN QUERY SELECT * FROM tenancy.verify_user_without_tenant(max_rows);
    RETURN QUERY SELECT * FROM tenancy.verify_tenant_without_owner();
END
$$;

-- issue 18: report's rollout column (src/report.sql): tenancy.migration_overview.rollout
-- from the per-tenant rollout (src/rollout.sql) instead of NULL, and its
-- changes in last_change; same columns.
CREATE OR REPLACE VIEW tenancy.migration_overview AS
SELECT t.relation,
       t.stage,
       r.mode,
       ro.rollout,
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
       GREATEST(t.registered_at, r.enabled_at, ro.rollout_changed, c.last_step) AS last_change
  FROM tenancy.tables t
  LEFT JOIN tenancy.rls_tables r ON r.relation OPERATOR(pg_catalog.=) t.relation
  LEFT JOIN LATERAL (
        SELECT string_agg(m.mode OPERATOR(pg_catalog.||) ': ' OPERATOR(pg_catalog.||) concat_ws(' + ',
                   CASE WHEN n.listed OPERATOR(pg_catalog.>) 0
                        THEN n.listed OPERATOR(pg_catalog.||) CASE WHEN n.listed OPERATOR(pg_catalog.=) 1 THEN ' tenant' ELSE ' tenants' END END,
                   CASE WHEN p.relation IS NOT NULL
                        THEN trim_scale(p.buckets OPERATOR(pg_catalog./) 100.0) OPERATOR(pg_catalog.||) '%' END),
                          '; ' ORDER BY m.ord) AS rollout,
               (SELECT max(l.at) FROM tenancy.rollout_log l
                 WHERE l.relation OPERATOR(pg_catalog.=) r.root) AS rollout_changed
          FROM unnest(ARRAY['enforce', 'migrating', 'shadow']) WITH ORDINALITY AS m(mode, ord)
          LEFT JOIN tenancy.rollouts p ON p.relation OPERATOR(pg_catalog.=) r.root
                AND p.buckets OPERATOR(pg_catalog.>) 0 AND p.percent_mode OPERATOR(pg_catalog.=) m.mode
          CROSS JOIN LATERAL (
                SELECT count(*) AS listed FROM tenancy.rollout_tenants x
                 WHERE x.relation OPERATOR(pg_catalog.=) r.root AND x.mode OPERATOR(pg_catalog.=) m.mode) n
         WHERE n.listed OPERATOR(pg_catalog.>) 0 OR p.relation IS NOT NULL) ro ON true
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

-- issue 18: rollout_run() retries a lock for about 20 s (autovacuum does not yield to a 100 ms waiter)
CREATE OR REPLACE FUNCTION tenancy.rollout_run(stmts text[]) RETURNS text
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    prior text := current_setting('lock_timeout');
    attempt integer := 0;
    s text;
BEGIN
    LOOP
        attempt := attempt + 1;
        BEGIN
            PERFORM set_config('lock_timeout', '100ms', true);
            FOREACH s IN ARRAY stmts LOOP
                -- plpgsql_check: built by rollout_stmts(), every name through %I/%L.
                EXECUTE s;
            END LOOP;
            PERFORM set_config('lock_timeout', prior, true);
            EXIT;
        EXCEPTION WHEN lock_not_available THEN
            PERFORM set_config('lock_timeout', prior, true);
            IF attempt >= 30 THEN
                RAISE;
            END IF;
            PERFORM pg_sleep_for(tenancy.backoff_delay(attempt, interval '50ms', interval '1s'));
        END;
    END LOOP;
    RETURN tenancy.rls_script(stmts);
END
$$;

-- issue 18: last change counts mode changes (tenancy.rls_tables.mode_changed_at,
-- set by rls_record_internal() when set_mode() changes the mode) in
-- migration_overview.last_change, with the rollout's changes; same columns.
ALTER TABLE tenancy.rls_tables ADD COLUMN mode_changed_at timestamptz;     -- the last set_mode() that changed mode; NULL: none since enable_rls()

CREATE OR REPLACE FUNCTION tenancy.rls_record_internal(op text, tbl regclass, root regclass,
                                            column_name name, mode text)
RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    cur_stage text;
    reg_column name;
    found_reg boolean;
    r record;
BEGIN
    IF op = 'forget_dropped' THEN
        DELETE FROM tenancy.rls_tables t
         WHERE NOT EXISTS (SELECT 1 FROM pg_class c WHERE c.oid = t.relation);
        PERFORM tenancy.rollout_forget(NULL);
        RETURN;
    END IF;

    -- Rows left behind by dropped tables must not claim a reused OID.
    DELETE FROM tenancy.rls_tables t
     WHERE NOT EXISTS (SELECT 1 FROM pg_class c WHERE c.oid = t.relation);

    IF op = 'register' THEN
        IF mode IS NULL OR mode <> ALL (ARRAY['migrating', 'shadow', 'enforce']) THEN
            RAISE EXCEPTION 'unknown row level security mode "%"', mode
                USING ERRCODE = 'invalid_parameter_value',
                      HINT = 'The modes are shadow, migrating and enforce.';
        END IF;
        -- Only what enable_rls() records (rls_record() is executable by
        -- every role, and the worker and verify() trust this table): a table
        -- with a tenant column of the key type, under its own root or the
        -- partitioned table it belongs to.
        PERFORM tenancy.rls_check(tbl, column_name, mode);
        IF tbl <> root THEN
            PERFORM tenancy.rls_check(root, column_name, mode);
            IF tbl NOT IN (SELECT tenancy.rls_members(root)) THEN
                RAISE EXCEPTION 'table % is not a partition of %', tbl, root
                    USING ERRCODE = 'invalid_parameter_value',
                          HINT = 'Register a partition with the partitioned table above it, as tenancy.enable_rls() does.';
            END IF;
        END IF;
        SELECT t.stage, t.column_name INTO cur_stage, reg_column
          FROM tenancy.tables t WHERE t.relation = tbl;
        found_reg := FOUND;
        IF tbl = root AND found_reg AND reg_column <> column_name THEN
            RAISE EXCEPTION 'table % is registered with tenant column "%", not "%"', tbl, reg_column, column_name
                USING ERRCODE = 'invalid_parameter_value',
                      HINT = format('Pass column_name => %L.', reg_column);
        END IF;
        INSERT INTO tenancy.rls_tables AS t (relation, root, column_name, mode, prior_rls, prior_force, prior_stage)
        SELECT tbl, root, column_name, mode, c.relrowsecurity, c.relforcerowsecurity,
               CASE WHEN tbl = root THEN cur_stage END
          FROM pg_class c WHERE c.oid = tbl
        ON CONFLICT (relation) DO UPDATE
               SET mode = EXCLUDED.mode,
                   mode_changed_at = CASE WHEN t.mode IS DISTINCT FROM EXCLUDED.mode THEN pg_catalog.now()
                                          ELSE t.mode_changed_at END
         WHERE t.root = EXCLUDED.root AND t.column_name = EXCLUDED.column_name;
        IF NOT FOUND THEN
            RAISE EXCEPTION 'table % already carries the tenancy policy of another table or column', tbl
                USING ERRCODE = 'duplicate_object',
                      HINT = 'Call tenancy.disable_rls() on it first.';
        END IF;
        IF tbl = root THEN
            INSERT INTO tenancy.tables (relation, column_name, stage)
            VALUES (tbl, column_name, mode)
            ON CONFLICT (relation) DO UPDATE SET stage = EXCLUDED.stage;
        END IF;
    ELSIF op = 'unregister' THEN
        DELETE FROM tenancy.rls_tables t WHERE t.relation = tbl RETURNING * INTO r;
        IF FOUND AND r.relation = r.root THEN
            PERFORM tenancy.rollout_forget(tbl);     -- the rollout goes with the policy
            IF r.prior_stage IS NOT NULL THEN
                UPDATE tenancy.tables t SET stage = r.prior_stage WHERE t.relation = tbl;
            ELSE
                -- enable_rls() registered the table: forget it, unless another
                -- feature has recorded something about it since (a source, or
                -- rows referencing it).
                BEGIN
                    DELETE FROM tenancy.tables t WHERE t.relation = tbl AND t.source IS NULL;
                EXCEPTION WHEN foreign_key_violation THEN
                    NULL;
                END;
                UPDATE tenancy.tables t SET stage = 'expand' WHERE t.relation = tbl;
            END IF;
        END IF;
    ELSE
        RAISE EXCEPTION 'unknown operation "%"', op USING ERRCODE = 'invalid_parameter_value';
    END IF;
END
$$;
REVOKE ALL ON FUNCTION tenancy.rls_record_internal(text, regclass, regclass, name, text) FROM PUBLIC;

CREATE OR REPLACE VIEW tenancy.migration_overview AS
SELECT t.relation,
       t.stage,
       r.mode,
       ro.rollout,
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
       GREATEST(t.registered_at, r.enabled_at, r.mode_changed_at, ro.rollout_changed, c.last_step) AS last_change
  FROM tenancy.tables t
  LEFT JOIN tenancy.rls_tables r ON r.relation OPERATOR(pg_catalog.=) t.relation
  LEFT JOIN LATERAL (
        SELECT string_agg(m.mode OPERATOR(pg_catalog.||) ': ' OPERATOR(pg_catalog.||) concat_ws(' + ',
                   CASE WHEN n.listed OPERATOR(pg_catalog.>) 0
                        THEN n.listed OPERATOR(pg_catalog.||) CASE WHEN n.listed OPERATOR(pg_catalog.=) 1 THEN ' tenant' ELSE ' tenants' END END,
                   CASE WHEN p.relation IS NOT NULL
                        THEN trim_scale(p.buckets OPERATOR(pg_catalog./) 100.0) OPERATOR(pg_catalog.||) '%' END),
                          '; ' ORDER BY m.ord) AS rollout,
               (SELECT max(l.at) FROM tenancy.rollout_log l
                 WHERE l.relation OPERATOR(pg_catalog.=) r.root) AS rollout_changed
          FROM unnest(ARRAY['enforce', 'migrating', 'shadow']) WITH ORDINALITY AS m(mode, ord)
          LEFT JOIN tenancy.rollouts p ON p.relation OPERATOR(pg_catalog.=) r.root
                AND p.buckets OPERATOR(pg_catalog.>) 0 AND p.percent_mode OPERATOR(pg_catalog.=) m.mode
          CROSS JOIN LATERAL (
                SELECT count(*) AS listed FROM tenancy.rollout_tenants x
                 WHERE x.relation OPERATOR(pg_catalog.=) r.root AND x.mode OPERATOR(pg_catalog.=) m.mode) n
         WHERE n.listed OPERATOR(pg_catalog.>) 0 OR p.relation IS NOT NULL) ro ON true
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

-- issue 17: Citus gaps: the workers' dropped shadow counts (cluster_shadow_stats_dropped(),
-- verify()'s shadow_divergence), the implicit tenant copied to the workers
-- (citus_implicit_tenant, is_implicit_tenant(); citus_context_problems() compares it)
CREATE FUNCTION tenancy.cluster_shadow_stats_dropped(OUT rows_dropped bigint, OUT divergences_dropped bigint,
                                                     OUT nodes integer)
RETURNS record
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    ok boolean;
    res text;
    host text;
    port integer;
    r bigint;
BEGIN
    SELECT d.rows_dropped, d.divergences_dropped INTO rows_dropped, divergences_dropped
      FROM tenancy.shadow_stats_dropped() d;
    nodes := CASE WHEN rows_dropped > 0 THEN 1 ELSE 0 END;
    IF to_regclass('pg_catalog.pg_dist_node') IS NOT NULL THEN
        -- plpgsql_check: dynamic: Citus's function is absent where Citus is not installed; a constant command.
        FOR host, port, ok, res IN EXECUTE format('SELECT nodename, nodeport, success, result FROM pg_catalog.%I($1)',
                                                  'run_command_on_workers') USING
                    $q$SELECT d.rows_dropped::pg_catalog.text OPERATOR(pg_catalog.||) ',' OPERATOR(pg_catalog.||)
                              d.divergences_dropped::pg_catalog.text FROM tenancy.shadow_stats_dropped() d$q$ LOOP
            IF NOT ok THEN
                RAISE EXCEPTION 'cannot read the dropped shadow counts of worker %:%', host, port
                    USING ERRCODE = 'external_routine_exception',
                          DETAIL = res;
            END IF;
            r := split_part(res, ',', 1)::bigint;
            rows_dropped := rows_dropped + r;
            divergences_dropped := divergences_dropped + split_part(res, ',', 2)::bigint;
            IF r > 0 THEN
                nodes := nodes + 1;
            END IF;
        END LOOP;
    END IF;
END
$$;
COMMENT ON FUNCTION tenancy.cluster_shadow_stats_dropped() IS 'shadow_stats_dropped() of every node of a Citus cluster (this node and its workers), summed, with the number of nodes whose counters were full';
REVOKE ALL ON FUNCTION tenancy.cluster_shadow_stats_dropped() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION tenancy.cluster_shadow_stats_dropped() TO pg_read_all_stats;

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
        ELSIF tenancy.rls_citus_distributed(rel)
              AND (SELECT d.rows_dropped FROM tenancy.cluster_shadow_stats_dropped() d) > 0 THEN
            -- a node's counters were full (citus_shadow.sql): the workers
            -- count the shards, so this table's divergences may be missing
            status := 'failure'; rows_affected := NULL;
            SELECT d.rows_dropped, d.nodes::bigint INTO n, m FROM tenancy.cluster_shadow_stats_dropped() d;
            detail := format('shadow counters incomplete: %s rows of tables past tenancy.shadow_max_tables on %s were not counted, so divergences may be missing: raise tenancy.shadow_max_tables on every node (restart), reset the counters of the cluster and run the workload again',
                             n, CASE WHEN m = 1 THEN '1 node' ELSE m || ' nodes' END);
            fix := 'SELECT tenancy.reset_cluster_shadow_stats();';
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
COMMENT ON FUNCTION tenancy.verify_shadow_divergence(regclass) IS 'verify() check shadow_divergence: its report rows';

CREATE TABLE tenancy.citus_implicit_tenant (
    tenant text NOT NULL,
    only_row boolean PRIMARY KEY DEFAULT true CHECK (only_row)
);
COMMENT ON TABLE tenancy.citus_implicit_tenant IS 'Citus worker: the key of the coordinator''s implicit tenant (copied from the coordinator), read by is_implicit_tenant()';
REVOKE ALL ON TABLE tenancy.citus_implicit_tenant FROM PUBLIC;
SELECT pg_catalog.pg_extension_config_dump('tenancy.citus_implicit_tenant', '');
CREATE TRIGGER citus_implicit_tenant_changed
    AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON tenancy.citus_implicit_tenant
    FOR EACH STATEMENT EXECUTE FUNCTION tenancy.registry_changed();

CREATE FUNCTION tenancy.citus_forward_implicit() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    coordinator boolean;
    k text;
    stmt text;
    r record;
BEGIN
    IF NOT ((TG_OP <> 'INSERT' AND OLD.is_implicit) OR (TG_OP <> 'DELETE' AND NEW.is_implicit))
       OR NOT EXISTS (SELECT FROM pg_catalog.pg_extension WHERE extname = 'citus') THEN
        RETURN NULL;
    END IF;
    -- Citus's functions by name: they exist only where Citus is installed.
    EXECUTE 'SELECT pg_catalog.citus_is_coordinator()' INTO coordinator;
    IF NOT coordinator THEN
        RETURN NULL;
    END IF;
    -- the implicit tenant as the transaction commits
    k := (SELECT t.id::text FROM tenancy.tenants t WHERE t.is_implicit);
    stmt := 'DELETE FROM tenancy.citus_implicit_tenant'
        || CASE WHEN k IS NULL THEN ''
                ELSE format('; INSERT INTO tenancy.citus_implicit_tenant (tenant) VALUES (%L)', k) END;
    FOR r IN EXECUTE 'SELECT nodename, nodeport, success, result FROM pg_catalog.run_command_on_workers($1)'
             USING stmt LOOP
        IF NOT r.success THEN
            RAISE EXCEPTION 'could not copy the implicit tenant to the Citus worker %:%', r.nodename, r.nodeport
                USING ERRCODE = 'connection_failure', DETAIL = r.result,
                      HINT = 'Set the implicit tenant again once every worker is reachable.';
        END IF;
    END LOOP;
    RETURN NULL;
END
$$;
REVOKE EXECUTE ON FUNCTION tenancy.citus_forward_implicit() FROM PUBLIC;

CREATE CONSTRAINT TRIGGER tenants_citus_implicit
    AFTER INSERT OR UPDATE OR DELETE ON tenancy.tenants
    DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW EXECUTE FUNCTION tenancy.citus_forward_implicit();

CREATE OR REPLACE FUNCTION tenancy.citus_context_problems(OUT check_name text, OUT node text, OUT detail text)
RETURNS SETOF record
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    probe constant text := $q$SELECT pg_catalog.json_build_object(
        'version', (SELECT e.extversion FROM pg_catalog.pg_extension e WHERE e.extname = 'tenancy'),
        'preload', pg_catalog.current_setting('shared_preload_libraries'),
        'tenant_type', pg_catalog.current_setting('tenancy.tenant_type', true),
        'context_source', pg_catalog.current_setting('tenancy.context_source', true),
        'keys_file', coalesce(pg_catalog.current_setting('tenancy.token_keys_file', true), '') <> '',
        'bindings', (SELECT pg_catalog.string_agg(b.role::text || '=' || b.tenant, ',' ORDER BY b.role::text)
                       FROM tenancy.role_bindings b),
        'implicit', coalesce((SELECT t.id::pg_catalog.text FROM tenancy.tenants t WHERE t.is_implicit),
                             (SELECT c.tenant FROM tenancy.citus_implicit_tenant c)))::text$q$;
    here json;
    ok boolean;
    result text;
    v json;
    coordinator boolean;
BEGIN
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_extension WHERE extname = 'citus') THEN
        RETURN;
    END IF;
    -- plpgsql_check: Citus's functions exist only where Citus is installed: named at run time.
    EXECUTE format('SELECT pg_catalog.%I()', 'citus_is_coordinator') INTO coordinator;
    IF NOT coordinator THEN
        RAISE EXCEPTION 'tenancy.citus_context_problems() runs on the Citus coordinator'
            USING ERRCODE = 'object_not_in_prerequisite_state';
    END IF;
    -- plpgsql_check: the probe is a constant.
    EXECUTE probe INTO here;
    -- plpgsql_check: VOLATILE: run_command_on_workers() opens connections to the workers.
    -- plpgsql_check: Citus's functions by name, as above; the probe is a constant.
    FOR node, ok, result IN EXECUTE format('SELECT n.nodename || '':'' || n.nodeport AS node, x.success, x.result
                               FROM pg_catalog.%I($1) x
                               JOIN pg_catalog.%I n ON n.nodename = x.nodename AND n.nodeport = x.nodeport
                              ORDER BY 1', 'run_command_on_workers', 'pg_dist_node') USING probe LOOP
        IF NOT ok THEN
            check_name := 'unreachable'; detail := result;
            RETURN NEXT;
            CONTINUE;
        END IF;
        v := result::json;
        IF (v->>'version') IS DISTINCT FROM (here->>'version') THEN
            check_name := 'version';
            detail := format('tenancy %s on the worker, %s on the coordinator', coalesce(v->>'version', 'absent'), here->>'version');
            RETURN NEXT;
        END IF;
        IF (v->>'preload') !~ '(^|,)\s*citus\s*,(.*,)?\s*tenancy\s*(,|$)' THEN
            check_name := 'preload';
            detail := format('shared_preload_libraries is %L: it must name citus, then tenancy', v->>'preload');
            RETURN NEXT;
        END IF;
        IF (v->>'tenant_type') IS DISTINCT FROM (here->>'tenant_type') THEN
            check_name := 'tenant_type';
            detail := format('tenancy.tenant_type is %s on the worker, %s on the coordinator', v->>'tenant_type', here->>'tenant_type');
            RETURN NEXT;
        END IF;
        IF (v->>'context_source') IS DISTINCT FROM (here->>'context_source') THEN
            check_name := 'context_source';
            detail := format('tenancy.context_source is %s on the worker, %s on the coordinator', v->>'context_source', here->>'context_source');
            RETURN NEXT;
        END IF;
        IF (v->>'context_source') = 'token' AND NOT (v->>'keys_file')::boolean THEN
            check_name := 'token_keys_file';
            detail := 'tenancy.context_source is token but no tenancy.token_keys_file is set: the worker refuses every forwarded token';
            RETURN NEXT;
        END IF;
        IF (v->>'bindings') IS DISTINCT FROM (here->>'bindings') THEN
            check_name := 'role_bindings';
            detail := format('tenancy.role_bindings holds %s on the worker, %s on the coordinator',
                             coalesce(v->>'bindings', 'nothing'), coalesce(here->>'bindings', 'nothing'));
            RETURN NEXT;
        END IF;
        IF (v->>'implicit') IS DISTINCT FROM (here->>'implicit') THEN
            check_name := 'implicit_tenant';
            detail := format('the implicit tenant is %s on the worker, %s on the coordinator (copy it again: UPDATE tenancy.tenants SET is_implicit = true WHERE is_implicit)',
                             coalesce(v->>'implicit', 'none'), coalesce(here->>'implicit', 'none'));
            RETURN NEXT;
        END IF;
    END LOOP;
END
$$;
COMMENT ON FUNCTION tenancy.citus_context_problems() IS 'Citus coordinator: the workers whose tenancy version, preload, key type, context source, keys file, role bindings or implicit tenant differ from what forwarding the tenant relies on';
REVOKE EXECUTE ON FUNCTION tenancy.citus_context_problems() FROM PUBLIC;

-- issue 19: move cut-over window (typed tenant filter in the checksums; tenant_checksums() by move_checksums(); drop, then sequences in one statement)
CREATE OR REPLACE FUNCTION tenancy.move_checksums(tenant_key text, rels text[], cols name[])
RETURNS TABLE (relation text, row_count bigint, checksum numeric)
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    res text[];
    filter text;
BEGIN
    FOR i IN 1 .. coalesce(array_length(rels, 1), 0) LOOP
        filter := '';
        IF cols[i] IS NOT NULL THEN
            SELECT format(' WHERE t.%I OPERATOR(pg_catalog.=) CAST($1 AS %s)', a.attname, format_type(a.atttypid, a.atttypmod))
              INTO filter
              FROM pg_attribute a
             WHERE a.attrelid = rels[i]::regclass AND a.attname = cols[i] AND a.attnum > 0 AND NOT a.attisdropped;
            IF NOT FOUND THEN
                RAISE EXCEPTION 'table % has no column "%"', rels[i], cols[i]
                    USING ERRCODE = 'undefined_column';
            END IF;
        END IF;
        BEGIN
            -- Each column hashed by its type's hash function (twice as
            -- fast as hashing the row's text) ...
            res := tenancy.table_query(rels[i]::regclass, NULL,
                       format('SELECT count(*), coalesce(sum(pg_catalog.hash_record_extended(t, 0)), 0) FROM %s t%s',
                              rels[i]::regclass, filter), tenant_key);
        EXCEPTION WHEN undefined_function THEN
            -- ... unless a column's type has none (json, point, xml): the
            -- row's text.  The same on both sides: the schemas are the same.
            res := tenancy.table_query(rels[i]::regclass, NULL,
                       format('SELECT count(*), coalesce(sum(pg_catalog.hashtextextended(t::pg_catalog.text, 0)), 0) FROM %s t%s',
                              rels[i]::regclass, filter), tenant_key);
        END;
        relation := rels[i]; row_count := res[1]::bigint; checksum := res[2]::numeric;
        RETURN NEXT;
    END LOOP;
END
$$;

CREATE OR REPLACE FUNCTION tenancy.tenant_checksums(tenant text)
RETURNS TABLE (relation regclass, row_count bigint, checksum text)
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_variable
DECLARE
    k text := tenancy.tenant_key(tenant);
    rels text[];
    cols name[];
BEGIN
    SELECT array_agg(o.relation::text ORDER BY o.relation::text), array_agg(o.column_name ORDER BY o.relation::text)
      INTO rels, cols FROM tenancy.erase_order() o;
    RETURN QUERY SELECT c.relation::regclass, c.row_count, c.checksum::text
                 FROM tenancy.move_checksums(k, rels, cols) c;
END
$$;

COMMENT ON FUNCTION tenancy.tenant_checksums(text) IS 'per registered table: the tenant''s row count and an order-free checksum of its rows (move_checksums()), to compare two copies';

CREATE OR REPLACE FUNCTION tenancy.move_plan(tenant text, home text, source_conninfo text DEFAULT NULL)
RETURNS TABLE (step integer, phase text, side text, sql text)
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp
    SET datestyle = 'ISO, YMD' SET intervalstyle = 'postgres' SET extra_float_digits = 3 AS $$
DECLARE
    k text := tenancy.tenant_key(tenant);
    n name := tenancy.move_object_name(k);
    src text := coalesce(source_conninfo, tenancy.move_default_source_conninfo());
    s text;
    r record;
BEGIN
    PERFORM tenancy.move_check_home(home);
    IF NOT EXISTS (SELECT 1 FROM tenancy.move_tables() m WHERE m.kind = 'tenant') THEN
        RAISE EXCEPTION 'no registered tenant table to move'
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = 'Register the tenant tables first (tenancy.add_tenant_column()).';
    END IF;
    step := 0;
    FOR r IN SELECT * FROM tenancy.move_replica_identity() x WHERE NOT x.covered LOOP
        step := step + 1; phase := 'replica identity'; side := 'source'; sql := r.fix; RETURN NEXT;
    END LOOP;
    step := step + 1; phase := 'publication'; side := 'source'; sql := tenancy.move_publication_sql(k); RETURN NEXT;
    step := step + 1; phase := 'slot'; side := 'source';
    sql := format('SELECT pg_create_logical_replication_slot(%L, %L);', n, 'pgoutput'); RETURN NEXT;
    FOR s IN SELECT * FROM tenancy.move_target_schema_sql(k) LOOP
        step := step + 1; phase := 'schema'; side := 'target'; sql := s; RETURN NEXT;
    END LOOP;
    step := step + 1; phase := 'subscription'; side := 'target'; sql := tenancy.move_subscription_sql(k, src); RETURN NEXT;
    step := step + 1; phase := 'cut-over'; side := 'source';
    sql := format('SELECT tenancy.suspend_tenant(%L);', k); RETURN NEXT;
    FOR r IN SELECT * FROM tenancy.move_fence_sql(k) LOOP
        step := step + 1; phase := 'cut-over'; side := 'source'; sql := r.sql; RETURN NEXT;
    END LOOP;
    step := step + 1; phase := 'cut-over'; side := 'source';
    sql := '-- wait out transactions older than the fence, then take SELECT pg_current_wal_lsn() as the fence position'; RETURN NEXT;
    step := step + 1; phase := 'cut-over'; side := 'source';
    sql := format('-- wait until SELECT confirmed_flush_lsn FROM pg_replication_slots WHERE slot_name = %L reaches it; verify again', n); RETURN NEXT;
    step := step + 1; phase := 'drop'; side := 'target';
    sql := format('DROP SUBSCRIPTION %I;  -- drops its slot at the source too', n); RETURN NEXT;
    step := step + 1; phase := 'drop'; side := 'source';
    sql := format('DROP PUBLICATION %I;', n); RETURN NEXT;
    FOR r IN SELECT DISTINCT m.relation, a.attname
             FROM tenancy.move_tables() m
             JOIN pg_depend d ON d.refobjid = m.relation AND d.classid = 'pg_class'::regclass
                             AND d.refclassid = 'pg_class'::regclass AND d.deptype IN ('a', 'i')
             JOIN pg_sequence sq ON sq.seqrelid = d.objid
             JOIN pg_attribute a ON a.attrelid = d.refobjid AND a.attnum = d.refobjsubid
             ORDER BY 1, 2 LOOP
        step := step + 1; phase := 'sequences'; side := 'target';
        sql := format('SELECT setval(pg_get_serial_sequence(%L, %L), <last_value at the source>, true);',
                      r.relation::text, r.attname);
        RETURN NEXT;
    END LOOP;
    step := step + 1; phase := 'home'; side := 'source';
    sql := format('INSERT INTO tenancy.tenant_homes (tenant, home) VALUES (%L, %L);', k, home); RETURN NEXT;
    step := step + 1; phase := 'next'; side := 'source';
    sql := '-- erase the tenant''s rows at the source (after the subscription and publication are gone)'; RETURN NEXT;
END
$$;

CREATE FUNCTION tenancy.move_sequences_sql() RETURNS text
LANGUAGE sql SET search_path = pg_catalog, pg_temp AS $$
    SELECT 'SELECT ARRAY[' || string_agg(format('pg_catalog.setval(pg_catalog.pg_get_serial_sequence(%L, %L), %s, true)::text',
                                                x.relation::text, x.attname, x.last_value), ', ' ORDER BY x.relation::text, x.attname) || ']'
    FROM (SELECT DISTINCT m.relation, a.attname, ps.last_value
          FROM tenancy.move_tables() m
          JOIN pg_depend d ON d.refobjid = m.relation AND d.classid = 'pg_class'::regclass
                          AND d.refclassid = 'pg_class'::regclass AND d.deptype IN ('a', 'i')
          JOIN pg_sequence sq ON sq.seqrelid = d.objid
          JOIN pg_attribute a ON a.attrelid = d.refobjid AND a.attnum = d.refobjsubid
          JOIN pg_class sc ON sc.oid = d.objid
          JOIN pg_namespace sn ON sn.oid = sc.relnamespace
          JOIN pg_sequences ps ON ps.schemaname = sn.nspname AND ps.sequencename = sc.relname
          WHERE ps.last_value IS NOT NULL) x;
$$;
COMMENT ON FUNCTION tenancy.move_sequences_sql() IS 'the statement setting a move target''s sequences to the source''s values (NULL: none has one)';
REVOKE EXECUTE ON FUNCTION tenancy.move_sequences_sql() FROM PUBLIC;

CREATE OR REPLACE FUNCTION tenancy.move_drop_replication(j tenancy.move_jobs) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    deadline timestamptz := clock_timestamp() + interval '30 s';
BEGIN
    -- DROP SUBSCRIPTION stops its workers and drops its slot and any
    -- table-sync slot here.  IF EXISTS: one round trip (a subscription is
    -- of the database it is dropped in: the target's).
    PERFORM tenancy.move_remote_exec(j.target_conninfo,
        format('DROP SUBSCRIPTION IF EXISTS %I', j.subscription));
    WHILE EXISTS (SELECT 1 FROM pg_replication_slots s WHERE s.slot_name = j.slot AND s.active) LOOP
        IF clock_timestamp() > deadline THEN
            RAISE EXCEPTION 'replication slot "%" is still in use', j.slot
                USING ERRCODE = 'object_in_use';
        END IF;
        PERFORM pg_sleep(0.05);
    END LOOP;
    PERFORM pg_drop_replication_slot(s.slot_name) FROM pg_replication_slots s WHERE s.slot_name = j.slot;
    IF EXISTS (SELECT 1 FROM pg_publication p WHERE p.pubname = j.publication) THEN
        PERFORM tenancy.move_ddl(format('DROP PUBLICATION %I', j.publication));
    END IF;
END
$$;

CREATE OR REPLACE PROCEDURE tenancy.move_cutover(tenant text, timeout interval DEFAULT '60s')
LANGUAGE plpgsql AS $$
DECLARE
    j tenancy.move_jobs;
    f record;
    deadline timestamptz;
    bad text;
    v jsonb;
    seq text;
BEGIN
    PERFORM pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', true);
    IF tenancy.in_transaction_block() THEN
        RAISE EXCEPTION 'CALL tenancy.move_cutover() cannot run inside a transaction block'
            USING ERRCODE = 'active_sql_transaction',
                  HINT = 'It commits after each part; run it on its own.';
    END IF;
    j := tenancy.move_job(tenant);
    deadline := clock_timestamp() + timeout;
    IF j.state = 'planned' THEN
        RAISE EXCEPTION 'the move of tenant "%" has not started', tenant
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = 'CALL tenancy.move_start() again: it resumes.';
    END IF;
    IF j.state = 'started' THEN
        IF NOT tenancy.move_copied(j) THEN
            RAISE EXCEPTION 'the initial copy of tenant "%" is not done', tenant
                USING ERRCODE = 'object_not_in_prerequisite_state',
                      HINT = 'SELECT * FROM tenancy.move_wait(...) waits for it.';
        END IF;
        IF j.suspended_at IS NULL THEN
            UPDATE tenancy.move_jobs
               SET prior_status = (SELECT t.status FROM tenancy.tenants t WHERE t.id::text = j.tenant),
                   suspended_at = clock_timestamp()
             WHERE id = j.id;
            RAISE DEBUG 'move_cutover: suspended at %', clock_timestamp();
            PERFORM tenancy.suspend_tenant(j.tenant);
            COMMIT;
            PERFORM pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', true);
        END IF;
        FOR f IN SELECT * FROM tenancy.move_fence_sql(j.tenant) x
                 WHERE NOT EXISTS (SELECT 1 FROM pg_trigger g WHERE g.tgrelid = x.relation
                                     AND g.tgname = tenancy.move_object_name(j.tenant)::text || '_fence_i') LOOP
            PERFORM tenancy.move_ddl(f.sql);
        END LOOP;
        RAISE DEBUG 'move_cutover: fenced at %', clock_timestamp();
        UPDATE tenancy.move_jobs SET state = 'fenced' WHERE id = j.id;
        COMMIT;
        PERFORM pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', true);
        UPDATE tenancy.move_jobs SET fenced_at = clock_timestamp() WHERE id = j.id;
        COMMIT;
        PERFORM pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', true);
        j := tenancy.move_job(tenant);
    END IF;
    -- Transactions older than the fence may have written the tenant's rows
    -- without meeting it: wait until they are gone.
    WHILE EXISTS (SELECT 1 FROM pg_stat_activity a
                  WHERE a.backend_xid IS NOT NULL AND a.xact_start < j.fenced_at
                    AND a.pid <> pg_backend_pid()) LOOP
        IF clock_timestamp() > deadline THEN
            RAISE EXCEPTION 'transactions older than the fence of tenant "%" are still open after %', tenant, timeout
                USING ERRCODE = 'object_in_use',
                      DETAIL = (SELECT string_agg(a.pid::text, ', ') FROM pg_stat_activity a
                                WHERE a.backend_xid IS NOT NULL AND a.xact_start < j.fenced_at AND a.pid <> pg_backend_pid()),
                      HINT = 'The tenant stays suspended and fenced: CALL move_cutover() again, or roll back with move_rollback().';
        END IF;
        PERFORM pg_sleep(0.01);
    END LOOP;
    RAISE DEBUG 'move_cutover: older transactions gone at %', clock_timestamp();
    IF j.fence_lsn IS NULL THEN
        UPDATE tenancy.move_jobs SET fence_lsn = pg_current_wal_lsn() WHERE id = j.id RETURNING * INTO j;
        COMMIT;
        PERFORM pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', true);
    END IF;
    RAISE DEBUG 'move_cutover: fence position taken at %', clock_timestamp();
    WHILE coalesce((SELECT s.confirmed_flush_lsn < j.fence_lsn FROM pg_replication_slots s
                    WHERE s.slot_name = j.slot), true) LOOP
        IF NOT EXISTS (SELECT 1 FROM pg_replication_slots s WHERE s.slot_name = j.slot) THEN
            EXIT;   -- dropped by an interrupted run: verify decides
        END IF;
        IF clock_timestamp() > deadline THEN
            RAISE EXCEPTION 'the subscription of tenant "%" has not applied the fence position % after %', tenant, j.fence_lsn, timeout
                USING ERRCODE = 'object_not_in_prerequisite_state',
                      HINT = 'The tenant stays suspended and fenced: CALL move_cutover() again, or roll back with move_rollback().';
        END IF;
        PERFORM pg_sleep(0.01);
    END LOOP;
    RAISE DEBUG 'move_cutover: fence position applied at %', clock_timestamp();
    SELECT jsonb_agg(to_jsonb(x) ORDER BY x.relation), string_agg(x.relation, ', ') FILTER (WHERE NOT coalesce(x.equal, false))
      INTO v, bad FROM tenancy.move_verify(j.tenant) x;
    UPDATE tenancy.move_jobs SET last_check = v WHERE id = j.id;
    IF bad IS NOT NULL THEN
        COMMIT;
        RAISE EXCEPTION 'the tenant''s rows differ between source and target in %', bad
            USING ERRCODE = 'data_exception',
                  DETAIL = v::text,
                  HINT = 'Nothing was dropped: the tenant stays suspended and fenced; roll back with move_rollback(), or look at tenancy.move_verify().';
    END IF;
    RAISE DEBUG 'move_cutover: verified at %', clock_timestamp();
    PERFORM tenancy.move_drop_replication(j);
    RAISE DEBUG 'move_cutover: replication dropped at %', clock_timestamp();
    -- Sequences (PostgreSQL 15 does not replicate them), once nothing
    -- arrives any more: the source's values are then at least every value
    -- the target holds, shared tables' too.  One statement at the target.
    seq := tenancy.move_sequences_sql();
    IF seq IS NOT NULL THEN
        PERFORM tenancy.move_remote_query(j.target_conninfo, seq);
    END IF;
    RAISE DEBUG 'move_cutover: sequences set at %', clock_timestamp();
    INSERT INTO tenancy.tenant_homes (tenant, home, move_id) VALUES (j.tenant, j.home, j.id)
        ON CONFLICT ON CONSTRAINT tenant_homes_pkey DO UPDATE SET home = excluded.home, move_id = excluded.move_id, moved_at = now();
    UPDATE tenancy.tenants SET status = 'suspended' WHERE id::text = j.tenant;
    UPDATE tenancy.move_jobs SET state = 'cut_over', done_at = clock_timestamp() WHERE id = j.id;
    RAISE DEBUG 'move_cutover: home recorded at %', clock_timestamp();
    COMMIT;
END
$$;

COMMENT ON PROCEDURE tenancy.move_cutover(text, interval) IS 'cut a tenant move over: suspend, fence, wait, verify, drop the replication, sequences, record the new home; resumable';

-- src/citus_shadow.sql: staged modes, shadow counters and counts on Citus distributed tables (C: citus_shadow.c).

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

-- What the shadow counters of every node could not count
-- (shadow_stats_dropped(): their tables past tenancy.shadow_max_tables), on
-- the coordinator: its own and each worker's, summed, and how many nodes
-- dropped any.  verify()'s shadow_divergence reports a Citus table's
-- counters incomplete when a node dropped counts.
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
REVOKE ALL ON FUNCTION tenancy.cluster_shadow_stats_dropped() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION tenancy.cluster_shadow_stats_dropped() TO pg_read_all_stats;

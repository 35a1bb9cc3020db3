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

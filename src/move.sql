-- src/move.sql: move one tenant to a database of its own, online, by
-- logical replication with row filters (issue 19).  C: the refusal of a
-- moved tenant is in src/context.c and src/registry.c.
--
-- A move runs from the source database, as a superuser (CREATE
-- SUBSCRIPTION needs one in PostgreSQL 15), through dblink to the target:
--   move_plan()          every statement, previewed (nothing runs)
--   CALL move_start()    publication, slot, target schema, subscription
--   move_wait()          initial copy and catch-up (progress, lag)
--   move_verify()        per-table counts and checksums, both sides
--   CALL move_cutover()  suspend, fence, wait, verify, drop, sequences,
--                        record the new home
--   move_rollback()      before the cut-over is done: undo, source untouched
-- The next step after a cut-over is erasing the tenant's rows at the
-- source (issue 19, erase: another capability).

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
-- Counts and checksums: the same function on both sides (and in
-- tenant_checksums()).  The checksum is the sum of a 64-bit hash of each
-- row (order-free: no sort, no string of all the rows; a lost or a
-- duplicated row changes it, a changed row too).  The tenant's rows are
-- found by the tenant column's own type (= on that type, as the
-- publication's row filter: the index can serve it, and no row's key is
-- cast to text).  Run as the table's owner (table_query()), which sees
-- every row under FORCE ROW LEVEL SECURITY.
------------------------------------------------------------------------------

CREATE FUNCTION tenancy.move_checksums(tenant_key text, rels text[], cols name[])
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

-- The target's sequences set to the source's values: one statement for the
-- target (NULL: no sequence has a value).
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

-- Drop what replicates (subscription at the target, slot and publication
-- here), each only if present.
CREATE FUNCTION tenancy.move_drop_replication(j tenancy.move_jobs) RETURNS void
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

-- cut over: suspend the tenant (set_tenant refuses it), fence its writes
-- (every other route), wait out older transactions, take the fence
-- position, wait until the subscription has applied it, verify, drop
-- subscription, slot and publication, set the target's sequences, record
-- the new home.  Commits after each part; run it again after an
-- interruption.
CREATE PROCEDURE tenancy.move_cutover(tenant text, timeout interval DEFAULT '60s')
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
    tenancy.move_sequences_sql(),
    tenancy.move_drop_replication(tenancy.move_jobs),
    tenancy.move_rollback(text)
FROM PUBLIC;
REVOKE EXECUTE ON PROCEDURE
    tenancy.move_start(text, text, text, text),
    tenancy.move_cutover(text, interval)
FROM PUBLIC;

-- src/verify.sql: the readiness report: one function per check, and verify().

-- The readiness report's checks: one function per check (verify_row_security
-- runs rls_enabled, rls_forced and tenancy_policy, which it reports per
-- partition), each returning the report's rows for one table (or, for the
-- last three, for the database).  verify() runs them in the report's order;
-- they run as its caller (revoked from PUBLIC, as verify()).
-- tenant_column: the registered column exists and has the key type
CREATE FUNCTION tenancy.verify_tenant_column(rel regclass, tenant_col name, present boolean, tenant_attnum smallint, tenant_type oid)
RETURNS TABLE (check_name text, relation regclass, status text, rows_affected bigint,
               detail text, fix text)
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
SET row_security = off
AS $$
#variable_conflict use_column
DECLARE
    keytype text := format_type(tenancy.key_type(), NULL);
BEGIN
    check_name := 'tenant_column'; relation := rel; rows_affected := NULL;
    IF NOT present THEN
        status := 'failure';
        detail := format('registered relation %s no longer exists', rel::oid);
        fix := format('DELETE FROM tenancy.tables WHERE relation = %s;', rel::oid);
        RETURN NEXT;
        RETURN;
    ELSIF tenant_attnum IS NULL THEN
        status := 'failure';
        detail := format('tenant column %I does not exist; the other checks skip this table', tenant_col);
        fix := format('SELECT tenancy.add_tenant_column(%L, column_name => %L);', rel::text, tenant_col);
        RETURN NEXT;
        RETURN;
    ELSIF tenant_type <> tenancy.key_type() THEN
        status := 'warning';
        detail := format('tenant column %I is of type %s but tenant keys are %s: comparisons cast and cannot use indexes',
                         tenant_col, format_type(tenant_type, NULL), keytype);
        fix := format('ALTER TABLE %s ALTER COLUMN %I TYPE %s USING %I::%s;', rel, tenant_col, keytype, tenant_col, keytype);
    ELSE
        status := 'ok';
        detail := format('tenant column %I of type %s', tenant_col, keytype);
        fix := NULL;
    END IF;
    RETURN NEXT;
END
$$;
COMMENT ON FUNCTION tenancy.verify_tenant_column(regclass, name, boolean, smallint, oid) IS 'verify() check tenant_column: its report rows';

-- null_tenant: rows the backfill has not reached
CREATE FUNCTION tenancy.verify_null_tenant(rel regclass, tenant_col name, max_rows bigint)
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
COMMENT ON FUNCTION tenancy.verify_null_tenant(regclass, name, bigint) IS 'verify() check null_tenant: its report rows';

-- unknown_tenant: rows whose tenant is not in the registry
CREATE FUNCTION tenancy.verify_unknown_tenant(rel regclass, tenant_col name, tenant_type oid, max_rows bigint)
RETURNS TABLE (check_name text, relation regclass, status text, rows_affected bigint,
               detail text, fix text)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
SET row_security = off
AS $$
#variable_conflict use_column
DECLARE
    keytype text := format_type(tenancy.key_type(), NULL);
    lim     text := coalesce(max_rows::text, 'ALL');
    n       bigint;
    cond    text;
    atleast text;
    keys    text[] := ARRAY(SELECT k.id::text FROM tenancy.tenants k);
BEGIN
    relation := rel;
    cond := CASE WHEN tenant_type = tenancy.key_type()
                 THEN format('k.id = x.%I', tenant_col)
                 ELSE format('k.id::text = x.%I::text', tenant_col) END;
    n := (tenancy.table_query(rel, NULL,
              format('SELECT count(*) FROM (SELECT 1 FROM %s x WHERE x.%I IS NOT NULL'
                     ' AND NOT EXISTS (SELECT 1 FROM pg_catalog.unnest($1::%s[]) k(id) WHERE %s) LIMIT %s) s',
                     rel, tenant_col, keytype, cond, lim),
              keys))[1]::bigint;
    atleast := CASE WHEN n = max_rows THEN 'at least ' ELSE '' END;
    check_name := 'unknown_tenant'; rows_affected := n;
    IF n > 0 THEN
        status := 'failure';
        detail := format('%s%s rows name a tenant that is not in tenancy.tenants: register the listed keys with tenancy.create_tenant() or reassign the rows',
                         atleast, n);
        fix := format('SELECT DISTINCT x.%I FROM %s x WHERE x.%I IS NOT NULL AND NOT EXISTS (SELECT 1 FROM tenancy.tenants k WHERE %s);',
                      tenant_col, rel, tenant_col, cond);
    ELSE
        status := 'ok'; detail := 'every tenant is registered'; fix := NULL;
    END IF;
    RETURN NEXT;
END
$$;
COMMENT ON FUNCTION tenancy.verify_unknown_tenant(regclass, name, oid, bigint) IS 'verify() check unknown_tenant: its report rows';

-- conflicting_parents: rows whose foreign keys to registered tables
-- lead to parents of different tenants.  No tenant is right for
-- them: cross_tenant_reference's one-line fix through one key would
-- break the other, so it gives none for the keys involved.  One row
-- per pair of keys; no row for a table with fewer than two keys.
CREATE FUNCTION tenancy.verify_conflicting_parents(rel regclass, max_rows bigint)
RETURNS TABLE (check_name text, relation regclass, status text, rows_affected bigint,
               detail text, fix text, conflicting_keys text[])
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
SET row_security = off
AS $$
#variable_conflict use_column
DECLARE
    lim      text := coalesce(max_rows::text, 'ALL');
    n        bigint;
    cnt      bigint;
    txt      text;
    txt2     text;
    bad      integer;
    keyexpr  text;
    keynames text;
    qrel     regclass;
    f        record;
BEGIN
    relation := rel;
    check_name := 'conflicting_parents'; bad := 0; cnt := 0;
    SELECT string_agg(format('x.%I', a.attname), ', ' ORDER BY k.i),
           '(' || string_agg(quote_ident(a.attname), ', ' ORDER BY k.i) || ')'
      INTO keyexpr, keynames
      FROM pg_index i, unnest(i.indkey::int2[]) WITH ORDINALITY k(attnum, i)
      JOIN pg_attribute a ON a.attnum = k.attnum
     WHERE i.indrelid = rel AND i.indisprimary AND a.attrelid = rel;
    -- Keys declared on partitions count (foreign_keys()): a pair of keys on
    -- the same partition, or one on the table and one on a partition, is
    -- compared on that partition.
    FOR f IN
        WITH fk AS (
            SELECT k.conoid, k.conname, k.partition, k.cols, k.refcols, k.confrelid AS parent,
                   pt.column_name AS pcol, pa.atttypid AS ptype
            FROM tenancy.foreign_keys(rel) k
            JOIN tenancy.tables pt ON pt.relation = k.confrelid
            JOIN pg_attribute pa ON pa.attrelid = k.confrelid AND pa.attname = pt.column_name
                                AND pa.attnum > 0 AND NOT pa.attisdropped
        )
        SELECT a.conname AS con1, b.conname AS con2, a.parent AS parent1, b.parent AS parent2,
               coalesce(a.partition, b.partition, rel) AS src,
               CASE WHEN a.ptype = b.ptype THEN format('p1.%I <> p2.%I', a.pcol, b.pcol)
                    ELSE format('p1.%I::text <> p2.%I::text', a.pcol, b.pcol) END AS cond,
               (SELECT string_agg(format('x.%I = p1.%I', u.ck, u.pk), ' AND ' ORDER BY u.i)
                FROM unnest(a.cols, a.refcols) WITH ORDINALITY AS u(ck, pk, i)) AS join1,
               (SELECT string_agg(format('x.%I = p2.%I', u.ck, u.pk), ' AND ' ORDER BY u.i)
                FROM unnest(b.cols, b.refcols) WITH ORDINALITY AS u(ck, pk, i)) AS join2
        FROM fk a JOIN fk b ON (a.conname, a.conoid) < (b.conname, b.conoid)
        WHERE a.partition IS NULL OR b.partition IS NULL OR a.partition = b.partition
        ORDER BY coalesce(a.partition, b.partition, rel)::text, a.conname, b.conname
    LOOP
        cnt := cnt + 1;
        txt := current_setting('enable_nestloop');
        PERFORM set_config('enable_nestloop', 'off', true);
        txt2 := format(' FROM %s x JOIN %s p1 ON %s JOIN %s p2 ON %s WHERE %s',
                       f.src, f.parent1, f.join1, f.parent2, f.join2, f.cond);
        qrel := f.src;
        BEGIN
            n := (tenancy.table_query(qrel, NULL,
                      format('SELECT count(*) FROM (SELECT 1%s LIMIT %s) s', txt2, lim)))[1]::bigint;
        EXCEPTION WHEN insufficient_privilege THEN
            qrel := f.parent1;
            BEGIN
                n := (tenancy.table_query(qrel, NULL,
                          format('SELECT count(*) FROM (SELECT 1%s LIMIT %s) s', txt2, lim)))[1]::bigint;
            EXCEPTION WHEN insufficient_privilege THEN
                n := NULL; txt2 := SQLERRM;
            END;
        END;
        IF n > 0 THEN
            -- up to 5 sample keys: the primary key (else the ctid), lowest first
            txt2 := (tenancy.table_query(qrel, NULL,
                         format('SELECT pg_catalog.array_to_string(ARRAY(SELECT %s%s ORDER BY %s LIMIT 5), ''; '')',
                                CASE WHEN keyexpr IS NULL THEN 'x.ctid::text'
                                     ELSE format('pg_catalog.concat_ws('', '', %s)', keyexpr) END,
                                txt2, coalesce(keyexpr, 'x.ctid'))))[1];
        END IF;
        PERFORM set_config('enable_nestloop', txt, true);
        relation := rel; conflicting_keys := NULL;
        IF n IS NULL THEN
            bad := bad + 1;
            status := 'warning'; rows_affected := NULL;
            detail := format('cannot compare the parents through %I and %I: neither the owner of %s nor the owner of %s can read %s, %s and %s (%s)',
                             f.con1, f.con2, rel, f.parent1, rel, f.parent1, f.parent2, txt2);
            fix := format('GRANT SELECT ON %s, %s TO %I;', f.parent1, f.parent2,
                          (SELECT pg_get_userbyid(cl.relowner) FROM pg_class cl WHERE cl.oid = rel));
            IF txt2 LIKE 'statement reads tables of owners that do not share their privileges%' THEN
                fix := NULL;    -- no role may read them all without lending one owner's rights to another's code
            END IF;
            RETURN NEXT;
        ELSIF n > 0 THEN
            bad := bad + 1;
            conflicting_keys := ARRAY[f.con1::text, f.con2::text];
            status := 'failure'; rows_affected := n; fix := NULL;
            detail := format('%s%s%s rows reference through %I a row of %s and through %I a row of %s whose tenants differ (%s %s %s): no tenant is right for both, so a person must decide, row by row, which parent the row keeps and change the other reference; no fix is suggested',
                             CASE WHEN f.src <> rel THEN format('partition %s: ', f.src) ELSE '' END,
                             CASE WHEN n = max_rows THEN 'at least ' ELSE '' END, n, f.con1, f.parent1, f.con2, f.parent2,
                             CASE WHEN n > 5 THEN 'for example' ELSE 'namely' END,
                             coalesce(keynames, 'ctid'), txt2);
            RETURN NEXT;
        END IF;
    END LOOP;
    IF cnt > 0 AND bad = 0 THEN
        status := 'ok'; rows_affected := 0; fix := NULL;
        detail := format('%s pairs of foreign keys to registered tables, their parents agree on the tenant of every row', cnt);
        RETURN NEXT;
    END IF;
END
$$;
COMMENT ON FUNCTION tenancy.verify_conflicting_parents(regclass, bigint) IS 'verify() check conflicting_parents: its report rows, with the pair of foreign keys of each failure (conflicting_keys)';

-- derived_tenant_mismatch: rows whose tenant is not the one their
-- derivation gives (only for tables with tenancy.derive_tenant())
CREATE FUNCTION tenancy.verify_derived_tenant_mismatch(rel regclass, tenant_col name, max_rows bigint)
RETURNS TABLE (check_name text, relation regclass, status text, rows_affected bigint,
               detail text, fix text)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
SET row_security = off
AS $$
#variable_conflict use_column
DECLARE
    lim  text := coalesce(max_rows::text, 'ALL');
    n    bigint;
    txt  text;
    txt2 text;
    f    record;
BEGIN
    relation := rel;
    FOR f IN
        SELECT s.value_sql, d.source_kind, d.source
          FROM tenancy.derived_tenants d,
               LATERAL tenancy.derive_source(d.relation,
                                             CASE WHEN d.source_kind = 'expression' THEN d.source END,
                                             CASE WHEN d.source_kind = 'foreign_key' THEN d.source::name END) s
         WHERE d.relation = rel
    LOOP
        check_name := 'derived_tenant_mismatch';
        txt2 := format('SELECT count(*) FROM (SELECT 1 FROM %s t WHERE t.%I OPERATOR(pg_catalog.<>) %s LIMIT %s) s',
                       rel, tenant_col, f.value_sql, lim);
        BEGIN
            n := (tenancy.table_query(rel, NULL, txt2))[1]::bigint;
        EXCEPTION WHEN insufficient_privilege THEN
            n := NULL; txt2 := SQLERRM;
        END;
        txt := CASE f.source_kind WHEN 'expression' THEN format('the expression %s', f.source)
                                  ELSE format('foreign key %I', f.source) END;
        rows_affected := n;
        IF n IS NULL THEN
            status := 'warning';
            detail := format('cannot compare the tenants with their derivation from %s (%s)', txt, txt2);
            fix := NULL;
        ELSIF n > 0 THEN
            status := 'failure';
            detail := format('%s%s rows have another tenant than the one derived from %s: new rows get the derived one; review these',
                             CASE WHEN n = max_rows THEN 'at least ' ELSE '' END, n, txt);
            fix := format('UPDATE %s t SET %I = %s WHERE t.%I <> %s;', rel, tenant_col, f.value_sql, tenant_col, f.value_sql);
        ELSE
            status := 'ok'; fix := NULL;
            detail := format('every tenant matches its derivation from %s', txt);
        END IF;
        RETURN NEXT;
    END LOOP;
END
$$;
COMMENT ON FUNCTION tenancy.verify_derived_tenant_mismatch(regclass, name, bigint) IS 'verify() check derived_tenant_mismatch: its report rows';

-- cross_tenant_reference, per foreign key to a registered table
CREATE FUNCTION tenancy.verify_cross_tenant_reference(rel regclass, tenant_col name, tenant_type oid, max_rows bigint, conflicted text[])
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
COMMENT ON FUNCTION tenancy.verify_cross_tenant_reference(regclass, name, oid, bigint, text[]) IS 'verify() check cross_tenant_reference: its report rows';

-- unique_scope: unique constraints and indexes without the tenant column
CREATE FUNCTION tenancy.verify_unique_scope(rel regclass, tenant_col name, tenant_attnum smallint)
RETURNS TABLE (check_name text, relation regclass, status text, rows_affected bigint,
               detail text, fix text)
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
SET row_security = off
AS $$
#variable_conflict use_column
DECLARE
    txt2 text;
    bad  integer;
    f    record;
BEGIN
    relation := rel;
    check_name := 'unique_scope'; bad := 0; rows_affected := NULL; txt2 := '';
    FOR f IN
        SELECT ic.relname AS idxname, con.conname, con.contype, u.surrogate_key,
               tenancy.column_list(rel, u.keys) AS cols
        FROM tenancy.unscoped_unique_indexes(rel, tenant_attnum) u
        JOIN pg_class ic ON ic.oid = u.indexrelid
        LEFT JOIN pg_constraint con ON con.oid = u.conoid
        ORDER BY ic.relname
    LOOP
        IF f.surrogate_key THEN
            txt2 := format('; primary key %I (%s) is a generated surrogate key, unique across tenants by construction',
                           f.conname, f.cols);
            CONTINUE;
        END IF;
        bad := bad + 1;
        status := 'failure';
        detail := format('%s %I (%s) is unique across all tenants: a tenant can be refused a value another tenant holds, and so learn that it exists',
                         CASE f.contype WHEN 'p' THEN 'primary key' WHEN 'u' THEN 'unique constraint' ELSE 'unique index' END,
                         coalesce(f.conname, f.idxname), coalesce(f.cols, 'expression'));
        fix := format('SELECT * FROM tenancy.scope_constraints_sql(%L) \gexec', rel::text);
        RETURN NEXT;
    END LOOP;
    IF bad = 0 THEN
        status := 'ok'; fix := NULL;
        detail := format('every unique constraint and index includes %I%s', tenant_col, txt2);
        RETURN NEXT;
    END IF;
END
$$;
COMMENT ON FUNCTION tenancy.verify_unique_scope(regclass, name, smallint) IS 'verify() check unique_scope: its report rows';

-- foreign_key_scope: foreign keys to registered tables that are not (tenant, key)
CREATE FUNCTION tenancy.verify_foreign_key_scope(rel regclass, tenant_col name)
RETURNS TABLE (check_name text, relation regclass, status text, rows_affected bigint,
               detail text, fix text)
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
SET row_security = off
AS $$
#variable_conflict use_column
DECLARE
    cnt bigint;
    bad integer;
    f   record;
BEGIN
    relation := rel;
    check_name := 'foreign_key_scope'; bad := 0; cnt := 0; rows_affected := NULL;
    -- (keys declared on partitions included, reported on their partition)
    FOR f IN
        SELECT c.conname, c.conrelid AS child, c.partition, c.confrelid AS parent,
               (SELECT string_agg(quote_ident(k.col), ', ' ORDER BY k.i)
                  FROM unnest(c.cols) WITH ORDINALITY k(col, i)) AS cols,
               EXISTS (SELECT 1 FROM unnest(c.cols, c.refcols) k(ck, pk)
                       WHERE k.ck = tenant_col AND k.pk = pt.column_name) AS scoped
        FROM tenancy.foreign_keys(rel) c
        JOIN tenancy.tables pt ON pt.relation = c.confrelid
    LOOP
        cnt := cnt + 1;
        CONTINUE WHEN f.scoped;
        bad := bad + 1;
        relation := f.child; status := 'failure';
        detail := format('foreign key %I %s(%s) references %s without the tenant column: a row can reference another tenant''s row, which shows that row exists and lets one tenant block the other''s deletes; enforce does not close this, the contract phase does',
                         f.conname, CASE WHEN f.partition IS NOT NULL THEN format('of partition %s ', f.partition) ELSE '' END,
                         f.cols, f.parent);
        fix := format('SELECT * FROM tenancy.scope_constraints_sql(%L) \gexec', rel::text);
        RETURN NEXT;
    END LOOP;
    relation := rel;
    IF bad = 0 THEN
        status := 'ok'; fix := NULL;
        detail := CASE WHEN cnt = 0 THEN 'no foreign key to a registered table'
                       ELSE format('%s foreign keys to registered tables, all (tenant, key)', cnt) END;
        RETURN NEXT;
    END IF;
END
$$;
COMMENT ON FUNCTION tenancy.verify_foreign_key_scope(regclass, name) IS 'verify() check foreign_key_scope: its report rows';

-- rls_enabled, rls_forced, tenancy_policy: the table and each partition
-- and inheritance child; the mode is the one enable_rls()/set_mode()
-- recorded, not tenancy.tables.stage
CREATE FUNCTION tenancy.verify_row_security(rel regclass, tenant_col name, rel_stage text)
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
COMMENT ON FUNCTION tenancy.verify_row_security(regclass, name, text) IS 'verify() checks rls_enabled, rls_forced and tenancy_policy: their report rows, per partition';

-- policy_mode: the policy must be enforced.  The mode is the one
-- enable_rls()/set_mode() recorded in tenancy.rls_tables, of a
-- tenancy_policy that exists (rls_enabled and rls_forced check row
-- security), never tenancy.tables.stage: a stage is only a record.
CREATE FUNCTION tenancy.verify_policy_mode(rel regclass, tenant_col name, rel_stage text)
RETURNS TABLE (check_name text, relation regclass, status text, rows_affected bigint,
               detail text, fix text)
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
SET row_security = off
AS $$
#variable_conflict use_column
DECLARE
    pmode text;
BEGIN
    relation := rel;
    check_name := 'policy_mode'; rows_affected := NULL;
    fix := format('SELECT tenancy.set_mode(%L, %L);', rel::text, 'enforce');
    pmode := (SELECT rt.mode FROM tenancy.rls_tables rt
               WHERE rt.relation = rel
                 AND EXISTS (SELECT 1 FROM pg_policy pp
                              WHERE pp.polrelid = rt.relation AND pp.polname = 'tenancy_policy'));
    IF pmode = 'enforce' THEN
        status := 'ok'; fix := NULL;
        detail := format('stage %s: the policy is enforced', CASE WHEN rel_stage = 'contract' THEN rel_stage ELSE pmode END);
    ELSIF pmode = 'shadow' THEN
        status := 'warning';
        detail := 'stage shadow: the policy hides no rows yet; then migrating while the backfill runs, and enforce once it is finished and the shadow divergences are drained';
    ELSIF pmode = 'migrating' THEN
        status := 'warning';
        detail := 'stage migrating: rows not backfilled yet are visible to every tenant; enforce once the backfill is finished and the shadow divergences are drained';
    ELSIF EXISTS (SELECT 1 FROM pg_policy pp WHERE pp.polrelid = rel AND pp.polname = 'tenancy_policy') THEN
        status := 'failure'; fix := NULL;
        detail := format('stage %s is recorded, but policy tenancy_policy was not made by tenancy.enable_rls() (it is not in tenancy.rls_tables): its mode is unknown', rel_stage);
    ELSIF rel_stage IN ('migrating', 'shadow', 'enforce', 'contract') THEN
        status := 'failure';
        detail := format('stage %s is recorded, but the table carries no tenancy policy: it is not protected', rel_stage);
        fix := format('SELECT tenancy.enable_rls(%L, column_name => %L, mode => %L);', rel::text, tenant_col, 'shadow');
    ELSE
        status := 'failure';
        detail := format('stage %s: the table is not protected yet; shadow first, then migrating while the backfill runs, and enforce once it is finished', rel_stage);
        fix := format('SELECT tenancy.set_mode(%L, %L);', rel::text, 'shadow');
    END IF;
    RETURN NEXT;
END
$$;
COMMENT ON FUNCTION tenancy.verify_policy_mode(regclass, name, text) IS 'verify() check policy_mode: its report rows';

-- shadow_divergence: what shadow mode counted and nobody drained
CREATE FUNCTION tenancy.verify_shadow_divergence(rel regclass)
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

-- tenant_index: an index led by the tenant column
CREATE FUNCTION tenancy.verify_tenant_index(rel regclass, tenant_col name, tenant_attnum smallint, rel_kind "char")
RETURNS TABLE (check_name text, relation regclass, status text, rows_affected bigint,
               detail text, fix text)
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
SET row_security = off
AS $$
#variable_conflict use_column
BEGIN
    relation := rel;
    check_name := 'tenant_index'; rows_affected := NULL;
    IF EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = rel AND i.indkey[0] = tenant_attnum) THEN
        status := 'ok'; detail := format('an index is led by %I', tenant_col); fix := NULL;
    ELSE
        status := 'warning';
        detail := format('no index is led by %I: every policy-filtered query scans the whole table', tenant_col);
        fix := CASE WHEN rel_kind = 'p'
                    THEN format('CREATE INDEX ON %s (%I);', rel, tenant_col)
                    ELSE format('CREATE INDEX CONCURRENTLY ON %s (%I);', rel, tenant_col) END;
    END IF;
    RETURN NEXT;
END
$$;
COMMENT ON FUNCTION tenancy.verify_tenant_index(regclass, name, smallint, "char") IS 'verify() check tenant_index: its report rows';

-- view_security_invoker: views over the table (directly or through
-- other views) that run with their owner's rights
CREATE FUNCTION tenancy.verify_view_security_invoker(rel regclass)
RETURNS TABLE (check_name text, relation regclass, status text, rows_affected bigint,
               detail text, fix text)
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
SET row_security = off
AS $$
#variable_conflict use_column
DECLARE
    cnt bigint;
    bad integer;
    ak  record;
    f   record;
BEGIN
    relation := rel;
    check_name := 'view_security_invoker'; bad := 0; cnt := 0;
    FOR f IN
        WITH RECURSIVE deps(view) AS (
            SELECT rw.ev_class
            FROM pg_depend d JOIN pg_rewrite rw ON rw.oid = d.objid
            WHERE d.classid = 'pg_rewrite'::regclass AND d.refclassid = 'pg_class'::regclass
              AND d.refobjid = rel AND rw.ev_class <> rel
            UNION
            SELECT rw.ev_class
            FROM deps JOIN pg_depend d ON d.refobjid = deps.view
            JOIN pg_rewrite rw ON rw.oid = d.objid
            WHERE d.classid = 'pg_rewrite'::regclass AND d.refclassid = 'pg_class'::regclass
              AND rw.ev_class <> deps.view
        )
        SELECT v.oid::regclass AS view, pg_get_userbyid(v.relowner) AS owner,
               EXISTS (SELECT 1 FROM pg_options_to_table(v.reloptions) o
                       WHERE o.option_name = 'security_invoker'
                         AND lower(o.option_value) IN ('true', 'on', 'yes', '1')) AS invoker
        FROM deps JOIN pg_class v ON v.oid = deps.view
        WHERE v.relkind = 'v'
        ORDER BY v.oid::regclass::text
    LOOP
        cnt := cnt + 1;
        CONTINUE WHEN f.invoker;
        bad := bad + 1;
        relation := f.view; status := 'failure'; rows_affected := NULL;
        detail := format('view %s reads %s with the rights of its owner %I, not of the caller: row level security is checked against the owner',
                         f.view, rel, f.owner);
        fix := format('ALTER VIEW %s SET (security_invoker = true);', f.view);
        SELECT * INTO ak FROM tenancy.ack_state(check_name, f.view::text);
        IF ak.state = 'acknowledged' THEN
            status := 'acknowledged';
        END IF;
        detail := detail || coalesce('; ' || ak.note, '');
        RETURN NEXT;
    END LOOP;
    relation := rel;
    IF bad = 0 THEN
        status := 'ok'; rows_affected := NULL; fix := NULL;
        detail := CASE WHEN cnt = 0 THEN 'no view reads this table'
                       ELSE format('%s views read this table, all with security_invoker', cnt) END;
        RETURN NEXT;
    END IF;
END
$$;
COMMENT ON FUNCTION tenancy.verify_view_security_invoker(regclass) IS 'verify() check view_security_invoker: its report rows';

-- materialized_view: materialized views over the table (directly or
-- through views) that a role row security applies to can read: they
-- hold the rows their owner saw at refresh, every tenant's.
CREATE FUNCTION tenancy.verify_materialized_view(rel regclass)
RETURNS TABLE (check_name text, relation regclass, status text, rows_affected bigint,
               detail text, fix text)
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
SET row_security = off
AS $$
#variable_conflict use_column
DECLARE
    cnt bigint;
    bad integer;
    ak  record;
    f   record;
BEGIN
    relation := rel;
    check_name := 'materialized_view'; bad := 0; cnt := 0;
    FOR f IN
        WITH RECURSIVE deps(view) AS (
            SELECT rw.ev_class
            FROM pg_depend d JOIN pg_rewrite rw ON rw.oid = d.objid
            WHERE d.classid = 'pg_rewrite'::regclass AND d.refclassid = 'pg_class'::regclass
              AND d.refobjid = rel AND rw.ev_class <> rel
            UNION
            SELECT rw.ev_class
            FROM deps JOIN pg_depend d ON d.refobjid = deps.view
            JOIN pg_rewrite rw ON rw.oid = d.objid
            WHERE d.classid = 'pg_rewrite'::regclass AND d.refclassid = 'pg_class'::regclass
              AND rw.ev_class <> deps.view
        )
        SELECT v.oid::regclass AS view, v.relowner,
               EXISTS (SELECT 1 FROM aclexplode(coalesce(v.relacl, acldefault('r', v.relowner))) a
                       WHERE a.grantee = 0 AND a.privilege_type = 'SELECT')
               OR EXISTS (SELECT 1 FROM pg_attribute at, aclexplode(at.attacl) a
                          WHERE at.attrelid = v.oid AND a.grantee = 0 AND a.privilege_type = 'SELECT') AS public_reads,
               (SELECT string_agg(quote_ident(ro.rolname), ', ' ORDER BY ro.rolname)
                  FROM pg_roles ro
                 WHERE ro.oid >= 16384 AND ro.oid <> v.relowner AND NOT ro.rolsuper AND NOT ro.rolbypassrls
                   AND has_any_column_privilege(ro.oid, v.oid, 'SELECT')) AS readers,
               (SELECT string_agg(format('REVOKE SELECT ON %s FROM %s;', v.oid::regclass,
                                         CASE WHEN g.grantee = 0 THEN 'PUBLIC' ELSE quote_ident(pg_get_userbyid(g.grantee)) END),
                                  E'\n' ORDER BY g.grantee <> 0, pg_get_userbyid(g.grantee))
                  FROM (SELECT DISTINCT a.grantee
                          FROM (SELECT (aclexplode(coalesce(v.relacl, acldefault('r', v.relowner)))).*
                                UNION ALL
                                SELECT (aclexplode(at.attacl)).* FROM pg_attribute at WHERE at.attrelid = v.oid) a
                         WHERE a.privilege_type = 'SELECT' AND a.grantee <> v.relowner
                           AND NOT EXISTS (SELECT 1 FROM pg_roles ro WHERE ro.oid = a.grantee
                                            AND (ro.rolsuper OR ro.rolbypassrls))) g) AS revokes
        FROM deps JOIN pg_class v ON v.oid = deps.view
        WHERE v.relkind = 'm'
        ORDER BY v.oid::regclass::text
    LOOP
        cnt := cnt + 1;
        CONTINUE WHEN NOT f.public_reads AND f.readers IS NULL;
        bad := bad + 1;
        relation := f.view; status := 'failure'; rows_affected := NULL;
        detail := format('materialized view %s holds the rows of %s its owner %I saw at refresh, every tenant''s, and row security does not apply to reading it; %s can read it: revoke SELECT, or replace it with a view with security_invoker (or a table with the tenant column and the policy)',
                         f.view, rel, pg_get_userbyid(f.relowner),
                         CASE WHEN f.public_reads THEN 'every role (PUBLIC)' ELSE f.readers END);
        fix := coalesce(f.revokes, format('-- %s reads it through a role it is a member of: revoke that membership', f.readers));
        SELECT * INTO ak FROM tenancy.ack_state(check_name, f.view::text);
        IF ak.state = 'acknowledged' THEN
            status := 'acknowledged';
        END IF;
        detail := detail || coalesce('; ' || ak.note, '');
        RETURN NEXT;
    END LOOP;
    relation := rel;
    IF bad = 0 THEN
        status := 'ok'; rows_affected := NULL; fix := NULL;
        detail := CASE WHEN cnt = 0 THEN 'no materialized view reads this table'
                       ELSE format('%s materialized views read this table, none readable by a role row security applies to', cnt) END;
        RETURN NEXT;
    END IF;
END
$$;
COMMENT ON FUNCTION tenancy.verify_materialized_view(regclass) IS 'verify() check materialized_view: its report rows';

-- security_definer_function: SECURITY DEFINER functions owned by a
-- superuser or a BYPASSRLS role that read the table (pg_depend for
-- SQL-standard bodies, else a word match of the table's name in the
-- source, as the advisories) and that an application role may run:
-- they return every tenant's rows.
CREATE FUNCTION tenancy.verify_security_definer_function(rel regclass)
RETURNS TABLE (check_name text, relation regclass, status text, rows_affected bigint,
               detail text, fix text)
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
SET row_security = off
AS $$
#variable_conflict use_column
DECLARE
    cnt        bigint;
    bad        integer;
    ak         record;
    relname_re text;
    f          record;
BEGIN
    relation := rel;
    check_name := 'security_definer_function'; bad := 0; cnt := 0;
    relname_re := '\m' || regexp_replace(lower((SELECT cl.relname FROM pg_class cl WHERE cl.oid = rel)),
                                         '([^a-z0-9_])', '\\\1', 'g') || '\M';
    FOR f IN
        SELECT p.oid::regprocedure AS fn, o.rolname AS owner, o.rolsuper,
               EXISTS (SELECT 1 FROM pg_depend d
                       WHERE d.classid = 'pg_proc'::regclass AND d.objid = p.oid
                         AND d.refclassid = 'pg_class'::regclass AND d.refobjid = rel) AS depends,
               EXISTS (SELECT 1 FROM aclexplode(coalesce(p.proacl, acldefault('f', p.proowner))) a
                       WHERE a.grantee = 0 AND a.privilege_type = 'EXECUTE') AS public_runs,
               (SELECT string_agg(quote_ident(ro.rolname), ', ' ORDER BY ro.rolname)
                  FROM pg_roles ro
                 WHERE ro.oid >= 16384 AND ro.oid <> p.proowner AND NOT ro.rolsuper AND NOT ro.rolbypassrls
                   AND has_function_privilege(ro.oid, p.oid, 'EXECUTE')) AS runners
        FROM pg_proc p JOIN pg_roles o ON o.oid = p.proowner
        WHERE p.prosecdef AND (o.rolsuper OR o.rolbypassrls)
          AND NOT EXISTS (SELECT 1 FROM pg_depend e
                          WHERE e.classid = 'pg_proc'::regclass AND e.objid = p.oid AND e.deptype = 'e')
          AND (EXISTS (SELECT 1 FROM pg_depend d
                       WHERE d.classid = 'pg_proc'::regclass AND d.objid = p.oid
                         AND d.refclassid = 'pg_class'::regclass AND d.refobjid = rel)
               OR lower(p.prosrc) ~ relname_re)
        ORDER BY p.oid::regprocedure::text
    LOOP
        cnt := cnt + 1;
        CONTINUE WHEN NOT f.public_runs AND f.runners IS NULL;
        bad := bad + 1;
        relation := rel; status := 'failure'; rows_affected := NULL;
        detail := format('SECURITY DEFINER function %s runs as %I, %s, and %s %s: %s can call it and get every tenant''s rows; make it SECURITY INVOKER, or REVOKE EXECUTE from PUBLIC and grant it only to roles that may see every tenant, or give it an owner row security applies to',
                         f.fn, f.owner, CASE WHEN f.rolsuper THEN 'a superuser' ELSE 'a role with BYPASSRLS' END,
                         CASE WHEN f.depends THEN 'depends on' ELSE 'its source mentions' END, rel,
                         CASE WHEN f.public_runs THEN 'every role (PUBLIC)' ELSE f.runners END);
        fix := format('ALTER FUNCTION %s SECURITY INVOKER;', f.fn);
        SELECT * INTO ak FROM tenancy.ack_state(check_name, f.fn::text);
        IF ak.state = 'acknowledged' THEN
            status := 'acknowledged';
        END IF;
        detail := detail || coalesce('; ' || ak.note, '');
        RETURN NEXT;
    END LOOP;
    IF bad = 0 THEN
        status := 'ok'; rows_affected := NULL; fix := NULL;
        detail := CASE WHEN cnt = 0 THEN 'no SECURITY DEFINER function of a superuser or BYPASSRLS role reads this table'
                       ELSE format('%s SECURITY DEFINER functions of a superuser or BYPASSRLS role read this table, none callable by a role row security applies to', cnt) END;
        RETURN NEXT;
    END IF;
END
$$;
COMMENT ON FUNCTION tenancy.verify_security_definer_function(regclass) IS 'verify() check security_definer_function: its report rows';

-- bypassrls_role: roles that skip the policy and can read the table.
-- Superusers are left out: they bypass every check by design.  An
-- acknowledged role gets its own row.
CREATE FUNCTION tenancy.verify_bypassrls_role(rel regclass)
RETURNS TABLE (check_name text, relation regclass, status text, rows_affected bigint,
               detail text, fix text)
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
SET row_security = off
AS $$
#variable_conflict use_column
DECLARE
    n    bigint;
    cnt  bigint;
    txt  text;
    txt2 text;
    cond text;
    ak   record;
    f    record;
BEGIN
    relation := rel;
    check_name := 'bypassrls_role'; n := 0; cnt := 0; txt := NULL; txt2 := NULL; cond := NULL;
    FOR f IN
        SELECT ro.oid::regrole::text AS role
          FROM pg_roles ro
         WHERE ro.rolbypassrls AND NOT ro.rolsuper
           AND has_any_column_privilege(ro.oid, rel, 'SELECT')
         ORDER BY ro.rolname
    LOOP
        cnt := cnt + 1;
        SELECT * INTO ak FROM tenancy.ack_state(check_name, f.role);
        IF ak.state = 'acknowledged' THEN
            status := 'acknowledged'; rows_affected := 1; fix := NULL;
            detail := format('role %s has BYPASSRLS and can read every tenant''s rows; %s', f.role, ak.note);
            RETURN NEXT;
            CONTINUE;
        END IF;
        n := n + 1;
        txt := concat_ws(', ', txt, f.role);
        txt2 := concat_ws(E'\n', txt2, format('ALTER ROLE %s NOBYPASSRLS;', f.role));
        IF ak.note IS NOT NULL THEN
            cond := concat_ws('; ', cond, ak.note);
        END IF;
    END LOOP;
    rows_affected := n;
    IF n > 0 THEN
        status := 'warning';
        detail := format('roles with BYPASSRLS can read every tenant''s rows: %s', txt) || coalesce('; ' || cond, '');
        fix := txt2;
        RETURN NEXT;
    ELSIF cnt = 0 THEN
        status := 'ok'; detail := 'no non-superuser role with BYPASSRLS can read this table'; fix := NULL;
        RETURN NEXT;
    END IF;
END
$$;
COMMENT ON FUNCTION tenancy.verify_bypassrls_role(regclass) IS 'verify() check bypassrls_role: its report rows';

-- unregistered_reference: tables whose foreign keys point here but
-- that are not registered (nor partitions of a registered table); a
-- key declared on a partition is reported on its partitioned table
CREATE FUNCTION tenancy.verify_unregistered_reference(rel regclass)
RETURNS TABLE (check_name text, relation regclass, status text, rows_affected bigint,
               detail text, fix text)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
SET row_security = off
AS $$
#variable_conflict use_column
DECLARE
    bad integer;
    f   record;
BEGIN
    relation := rel;
    check_name := 'unregistered_reference'; bad := 0; rows_affected := NULL;
    FOR f IN
        SELECT c.root::regclass AS child,
               string_agg(CASE WHEN c.conrelid = c.root THEN quote_ident(c.conname)
                               ELSE format('%I of partition %s', c.conname, c.conrelid::regclass) END,
                          ', ' ORDER BY c.conrelid::regclass::text, c.conname) AS cons
        FROM (SELECT c.conname, c.conrelid, coalesce(pg_partition_root(c.conrelid), c.conrelid) AS root
                FROM pg_constraint c
               WHERE c.contype = 'f' AND c.confrelid = rel AND c.conparentid = 0 AND c.conrelid <> rel
                 AND NOT EXISTS (SELECT 1 FROM tenancy.tables t2
                                 WHERE t2.relation = c.conrelid
                                    OR t2.relation IN (SELECT pg_partition_ancestors(c.conrelid)))) c
        GROUP BY c.root
        ORDER BY c.root::regclass::text
    LOOP
        bad := bad + 1;
        relation := f.child; status := 'failure';
        detail := format('%s references %s (%s) but is not registered: its rows carry no tenant and no policy protects them',
                         f.child, rel, f.cons);
        fix := format('SELECT tenancy.add_tenant_column(%L);', f.child::text);
        RETURN NEXT;
    END LOOP;
    relation := rel;
    IF bad = 0 THEN
        status := 'ok'; fix := NULL;
        detail := 'every table referencing this one is registered';
        RETURN NEXT;
    END IF;
END
$$;
COMMENT ON FUNCTION tenancy.verify_unregistered_reference(regclass) IS 'verify() check unregistered_reference: its report rows';

-- shared_table: tables marked shared (tenancy.mark_shared()); a failure
-- when a role other than the owner (and superusers) may write one of
-- them or a partition: one tenant's write changes every tenant's data.
CREATE FUNCTION tenancy.verify_shared_table()
RETURNS TABLE (check_name text, relation regclass, status text, rows_affected bigint,
               detail text, fix text)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
SET row_security = off
AS $$
#variable_conflict use_column
DECLARE
    cnt  bigint;
    txt  text;
    txt2 text;
    ak   record;
    f    record;
BEGIN
    check_name := 'shared_table'; cnt := 0; rows_affected := NULL;
    FOR f IN
        SELECT s.relation AS rel, c.oid IS NOT NULL AS present, c.relowner
          FROM tenancy.shared_tables s LEFT JOIN pg_class c ON c.oid = s.relation
         ORDER BY s.relation::text
    LOOP
        cnt := cnt + 1; relation := f.rel;
        IF NOT f.present THEN
            status := 'failure';
            detail := format('relation %s marked shared no longer exists', f.rel::oid);
            fix := format('SELECT tenancy.unmark_shared(%s);', f.rel::oid);
            RETURN NEXT;
            CONTINUE;
        END IF;
        -- direct grants of a write privilege (PUBLIC included), on the
        -- table, its partitions and their columns
        SELECT string_agg(DISTINCT w.who, ', '),
               string_agg(DISTINCT format('REVOKE INSERT, UPDATE, DELETE, TRUNCATE ON %s FROM %s;', w.member, w.who), E'\n')
          INTO txt, txt2
          FROM (SELECT m.relid::regclass AS member,
                       CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE quote_ident(pg_get_userbyid(a.grantee)) END AS who
                  FROM (SELECT f.rel AS relid UNION SELECT t.relid FROM pg_partition_tree(f.rel) t) m
                  JOIN pg_class c ON c.oid = m.relid,
                       LATERAL (SELECT (aclexplode(coalesce(c.relacl, acldefault('r', c.relowner)))).*
                                UNION ALL
                                SELECT (aclexplode(at.attacl)).* FROM pg_attribute at WHERE at.attrelid = c.oid) a
                 WHERE a.privilege_type IN ('INSERT', 'UPDATE', 'DELETE', 'TRUNCATE')
                   AND a.grantee <> c.relowner
                   AND NOT EXISTS (SELECT 1 FROM pg_roles ro WHERE ro.oid = a.grantee AND ro.rolsuper)) w;
        IF txt IS NULL THEN
            -- roles that write through a membership (of the owner, of
            -- pg_write_all_data)
            SELECT string_agg(quote_ident(ro.rolname), ', ' ORDER BY ro.rolname) INTO txt
              FROM pg_roles ro
             WHERE ro.oid >= 16384 AND ro.oid <> f.relowner AND NOT ro.rolsuper
               AND (has_table_privilege(ro.oid, f.rel, 'INSERT, UPDATE, DELETE, TRUNCATE')
                    OR has_any_column_privilege(ro.oid, f.rel, 'INSERT, UPDATE'));
            txt2 := CASE WHEN txt IS NOT NULL
                         THEN format('-- %s: write access through a membership (of the owner, of pg_write_all_data): revoke that membership', txt) END;
        END IF;
        IF txt IS NULL THEN
            status := 'ok'; fix := NULL;
            detail := format('shared by every tenant; only its owner %I (and superusers) can write it',
                             pg_get_userbyid(f.relowner));
        ELSE
            status := 'failure'; fix := txt2;
            detail := format('shared by every tenant, but %s can write it: one tenant''s write changes every tenant''s data; let only its owner write it',
                             CASE WHEN txt = 'PUBLIC' THEN 'every role (PUBLIC)' ELSE txt END);
            SELECT * INTO ak FROM tenancy.ack_state(check_name, f.rel::text);
            IF ak.state = 'acknowledged' THEN
                status := 'acknowledged';
            END IF;
            detail := detail || coalesce('; ' || ak.note, '');
        END IF;
        RETURN NEXT;
    END LOOP;
    IF cnt = 0 THEN
        relation := NULL; status := 'ok'; fix := NULL;
        detail := 'no table is marked shared (tenancy.mark_shared())';
        RETURN NEXT;
    END IF;
END
$$;
COMMENT ON FUNCTION tenancy.verify_shared_table() IS 'verify() check shared_table: its report rows for the database';

-- user_without_tenant: users owning resources without any membership
CREATE FUNCTION tenancy.verify_user_without_tenant(max_rows bigint)
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
    txt     text;
    bad     integer;
    ownkeys text[];
    f       record;
BEGIN
    check_name := 'user_without_tenant'; bad := 0;
    FOR f IN
        SELECT s.users, s.key_column, s.name_column, s.slug_prefix,
               array_agg(s.resource::text ORDER BY s.resource::text, s.owner_column) AS resources,
               array_agg(s.owner_column ORDER BY s.resource::text, s.owner_column) AS owners,
               array_agg(s.resource ORDER BY s.resource::text, s.owner_column) AS rels
        FROM tenancy.identity_sources s
        GROUP BY s.users, s.key_column, s.name_column, s.slug_prefix
        ORDER BY s.users::text
    LOOP
        bad := bad + 1;
        -- Each table as its owner, one table per statement: the owner keys
        -- of each resource table, then the users table, with the owner keys
        -- and the member keys as parameters.
        BEGIN
            ownkeys := '{}';
            FOR i IN 1 .. cardinality(f.rels) LOOP
                -- plpgsql_check: the table through %s of regclass, the column through %I.
                ownkeys := ownkeys || coalesce((tenancy.table_query(f.rels[i], NULL,
                             format('SELECT pg_catalog.array_agg(DISTINCT o.%1$I::pg_catalog.text) FROM %2$s o WHERE o.%1$I IS NOT NULL',
                                    f.owners[i], f.rels[i])))[1]::text[], '{}');
            END LOOP;
            n := (tenancy.table_query(f.users, NULL,
                      format('SELECT count(*) FROM (SELECT 1 FROM %s u WHERE u.%I::pg_catalog.text OPERATOR(pg_catalog.=) ANY ($1::pg_catalog.text[])'
                             ' AND NOT EXISTS (SELECT 1 FROM pg_catalog.unnest($2::pg_catalog.text[]) mb(user_key)'
                             ' WHERE mb.user_key OPERATOR(pg_catalog.=) u.%I::pg_catalog.text) LIMIT %s) s',
                             f.users, f.key_column, f.key_column, lim),
                      ownkeys, ARRAY(SELECT DISTINCT mb.user_key FROM tenancy.memberships mb)))[1]::bigint;
        EXCEPTION WHEN insufficient_privilege THEN
            n := NULL; txt := SQLERRM;
        END;
        relation := f.users; rows_affected := n;
        IF n IS NULL THEN
            status := 'warning';
            detail := format('cannot count the users: %s', txt);
            fix := NULL;
        ELSIF n > 0 THEN
            status := 'failure';
            detail := format('%s%s users own resources but belong to no tenant: they lose their data once policies are enforced',
                             CASE WHEN n = max_rows THEN 'at least ' ELSE '' END, n);
            fix := format('SELECT * FROM tenancy.create_personal_tenants(%L, %L, %L, %L, %L, %L);',
                          f.users::text, f.key_column, f.name_column, f.resources, f.owners, f.slug_prefix);
        ELSE
            status := 'ok'; detail := 'every user owning resources belongs to a tenant'; fix := NULL;
        END IF;
        RETURN NEXT;
    END LOOP;
    IF bad = 0 THEN
        relation := NULL; status := 'ok'; rows_affected := 0; fix := NULL;
        detail := 'no identity source recorded: tenancy.create_personal_tenants() has not run';
        RETURN NEXT;
    END IF;
END
$$;
COMMENT ON FUNCTION tenancy.verify_user_without_tenant(bigint) IS 'verify() check user_without_tenant: its report rows for the database';

-- tenant_without_owner: once memberships are in use, every tenant needs one
CREATE FUNCTION tenancy.verify_tenant_without_owner()
RETURNS TABLE (check_name text, relation regclass, status text, rows_affected bigint,
               detail text, fix text)
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
SET row_security = off
AS $$
#variable_conflict use_column
DECLARE
    n    bigint;
    txt  text;
    txt2 text;
BEGIN
    check_name := 'tenant_without_owner'; relation := 'tenancy.memberships'::regclass;
    IF NOT EXISTS (SELECT 1 FROM tenancy.memberships) AND NOT EXISTS (SELECT 1 FROM tenancy.identity_sources) THEN
        status := 'ok'; rows_affected := 0; fix := NULL;
        detail := 'memberships are not in use';
    ELSE
        SELECT count(*),
               string_agg(quote_literal(t.slug), ', ' ORDER BY t.slug) FILTER (WHERE t.rn <= 10),
               string_agg(format('SELECT tenancy.add_member(%L, %L, %L);', t.slug, '<user key>', 'owner'), E'\n' ORDER BY t.slug)
                   FILTER (WHERE t.rn <= 10)
          INTO n, txt, txt2
          FROM (SELECT k.slug, row_number() OVER (ORDER BY k.slug) AS rn
                FROM tenancy.tenants k
                WHERE NOT EXISTS (SELECT 1 FROM tenancy.memberships mb
                                  WHERE mb.tenant = k.id AND mb.role = 'owner')) t;
        rows_affected := n;
        IF n > 0 THEN
            status := 'warning';
            detail := format('%s tenants have no owner (%s%s): nobody can administer them', n, txt,
                             CASE WHEN n > 10 THEN ', ...' ELSE '' END);
            fix := txt2;
        ELSE
            status := 'ok'; detail := 'every tenant has an owner'; fix := NULL;
        END IF;
    END IF;
    RETURN NEXT;
END
$$;
COMMENT ON FUNCTION tenancy.verify_tenant_without_owner() IS 'verify() check tenant_without_owner: its report rows for the database';

REVOKE EXECUTE ON FUNCTION
    tenancy.verify_tenant_column(regclass,name,boolean,smallint,oid),
    tenancy.verify_null_tenant(regclass,name,bigint),
    tenancy.verify_unknown_tenant(regclass,name,oid,bigint),
    tenancy.verify_conflicting_parents(regclass,bigint),
    tenancy.verify_derived_tenant_mismatch(regclass,name,bigint),
    tenancy.verify_cross_tenant_reference(regclass,name,oid,bigint,text[]),
    tenancy.verify_unique_scope(regclass,name,smallint),
    tenancy.verify_foreign_key_scope(regclass,name),
    tenancy.verify_row_security(regclass,name,text),
    tenancy.verify_policy_mode(regclass,name,text),
    tenancy.verify_shadow_divergence(regclass),
    tenancy.verify_tenant_index(regclass,name,smallint,"char"),
    tenancy.verify_view_security_invoker(regclass),
    tenancy.verify_materialized_view(regclass),
    tenancy.verify_security_definer_function(regclass),
    tenancy.verify_bypassrls_role(regclass),
    tenancy.verify_unregistered_reference(regclass),
    tenancy.verify_shared_table(),
    tenancy.verify_user_without_tenant(bigint),
    tenancy.verify_tenant_without_owner()
FROM PUBLIC;

-- The readiness report.  One row per finding; a clean database gives one
-- 'ok' row per check and table, so the report shows what was checked.
-- Counting runs through tenancy.table_query(): as the table's owner when the
-- caller has its privileges (a superuser does), else as the caller, under
-- SECURITY_RESTRICTED_OPERATION, so code the owner planted (index
-- expressions and predicates, operators) never runs with more rights than
-- the owner's; the owner sees every row, FORCE ROW LEVEL SECURITY or not.
-- row_security is off: a role that RLS would filter gets an error instead
-- of a wrong count.  A count that joins two tables runs as the first owner
-- that can read both (the child's, then the parent's), else is a warning.
-- The registry is passed as a parameter (table owners cannot read it).
-- max_rows caps each count.
-- squawk: ignore require-lock-timeout: each fix is one statement for a DBA to run by itself; its index fixes are CONCURRENTLY (no lock blocking reads or writes)
-- squawk: ignore require-statement-timeout: as above: a statement_timeout would cancel the concurrent build
CREATE FUNCTION tenancy.verify(tbl regclass DEFAULT NULL, max_rows bigint DEFAULT NULL)
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
COMMENT ON FUNCTION tenancy.verify(regclass, bigint) IS 'readiness report: one row per check and finding (ok, warning, failure) with a suggested fix';
REVOKE EXECUTE ON FUNCTION
    tenancy.verify(regclass, bigint)
FROM PUBLIC;

-- One capability, one place (issue 15): each check of the readiness report
-- is its own function, tenancy.verify_<check>() (verify_row_security for
-- rls_enabled, rls_forced and tenancy_policy), and verify() runs them in the
-- report's order.  Called alone, a check gives the report's rows for it.
SET tenancy.tenant_type = 'bigint';
CREATE EXTENSION tenancy;
\set ECHO none
\ir ../test/fixtures/store_rental.sql
\set ECHO all
ALTER TABLE rental.rental ADD COLUMN store_id bigint;
UPDATE rental.rental r SET store_id = i.store_id FROM rental.inventory i WHERE i.inventory_id = r.inventory_id;
INSERT INTO tenancy.tables (relation, column_name) VALUES
    ('rental.store', 'store_id'), ('rental.staff', 'store_id'), ('rental.customer', 'store_id'),
    ('rental.inventory', 'store_id'), ('rental.rental', 'store_id');
SELECT a.attnum AS col_num, t.stage FROM tenancy.tables t JOIN pg_attribute a ON a.attrelid = t.relation AND a.attname = t.column_name
 WHERE t.relation = 'rental.rental'::regclass \gset

-- Every check the report names has its function.
SELECT DISTINCT v.check_name,
       to_regproc('tenancy.verify_' || CASE WHEN v.check_name IN ('rls_enabled', 'rls_forced', 'tenancy_policy')
                                            THEN 'row_security' ELSE v.check_name END) AS function
  FROM tenancy.verify() v ORDER BY 1;

-- The report on rental.rental is its checks' rows, in order.
CREATE TEMP TABLE report AS
SELECT row_number() OVER () AS ord, v.* FROM tenancy.verify('rental.rental') v;
CREATE TEMP TABLE direct AS
SELECT row_number() OVER () AS ord, d.*
  FROM (SELECT * FROM tenancy.verify_tenant_column('rental.rental', 'store_id', true, :col_num::smallint, 'bigint'::regtype)
        UNION ALL SELECT * FROM tenancy.verify_null_tenant('rental.rental', 'store_id', NULL)
        UNION ALL SELECT * FROM tenancy.verify_unknown_tenant('rental.rental', 'store_id', 'bigint'::regtype, NULL)
        UNION ALL SELECT check_name, relation, status, rows_affected, detail, fix
                    FROM tenancy.verify_conflicting_parents('rental.rental', NULL)
        UNION ALL SELECT * FROM tenancy.verify_derived_tenant_mismatch('rental.rental', 'store_id', NULL)
        UNION ALL SELECT * FROM tenancy.verify_cross_tenant_reference('rental.rental', 'store_id', 'bigint'::regtype, NULL,
                    ARRAY(SELECT unnest(c.conflicting_keys) FROM tenancy.verify_conflicting_parents('rental.rental', NULL) c))
        UNION ALL SELECT * FROM tenancy.verify_unique_scope('rental.rental', 'store_id', :col_num::smallint)
        UNION ALL SELECT * FROM tenancy.verify_foreign_key_scope('rental.rental', 'store_id')
        UNION ALL SELECT * FROM tenancy.verify_row_security('rental.rental', 'store_id', :'stage')
        UNION ALL SELECT * FROM tenancy.verify_policy_mode('rental.rental', 'store_id', :'stage')
        UNION ALL SELECT * FROM tenancy.verify_shadow_divergence('rental.rental')
        UNION ALL SELECT * FROM tenancy.verify_tenant_index('rental.rental', 'store_id', :col_num::smallint, 'r')
        UNION ALL SELECT * FROM tenancy.verify_view_security_invoker('rental.rental')
        UNION ALL SELECT * FROM tenancy.verify_materialized_view('rental.rental')
        UNION ALL SELECT * FROM tenancy.verify_security_definer_function('rental.rental')
        UNION ALL SELECT * FROM tenancy.verify_bypassrls_role('rental.rental')
        UNION ALL SELECT * FROM tenancy.verify_unregistered_reference('rental.rental')) d;
SELECT count(*) AS report_rows,
       count(*) FILTER (WHERE (r.check_name, r.relation, r.status, r.rows_affected, r.detail, r.fix)
                              IS NOT DISTINCT FROM (d.check_name, d.relation, d.status, d.rows_affected, d.detail, d.fix)) AS same
  FROM report r FULL JOIN direct d USING (ord);

-- The database-wide checks close the whole report.
CREATE TEMP TABLE report_db AS
SELECT row_number() OVER () AS ord, v.* FROM tenancy.verify() v
 WHERE v.check_name IN ('shared_table', 'user_without_tenant', 'tenant_without_owner');
CREATE TEMP TABLE direct_db AS
SELECT row_number() OVER () AS ord, d.*
  FROM (SELECT * FROM tenancy.verify_shared_table()
        UNION ALL SELECT * FROM tenancy.verify_user_without_tenant(NULL)
        UNION ALL SELECT * FROM tenancy.verify_tenant_without_owner()) d;
SELECT count(*) AS report_rows,
       count(*) FILTER (WHERE (r.check_name, r.relation, r.status, r.rows_affected, r.detail, r.fix)
                              IS NOT DISTINCT FROM (d.check_name, d.relation, d.status, d.rows_affected, d.detail, d.fix)) AS same
  FROM report_db r FULL JOIN direct_db d USING (ord);
SELECT array_agg(v.check_name ORDER BY v.o) FILTER (WHERE v.o > v.n - 3) AS last_three
  FROM (SELECT v.check_name, v.o, count(*) OVER () AS n FROM tenancy.verify() WITH ORDINALITY v(check_name, relation, status, rows_affected, detail, fix, o)) v;

-- Half the rentals have the customer of the next store: the parents
-- disagree.  conflicting_parents names the keys of each failing pair, and
-- cross_tenant_reference gives no fix through the keys it is passed.
SELECT status, rows_affected, conflicting_keys FROM tenancy.verify_conflicting_parents('rental.rental', NULL) ORDER BY detail;
SELECT detail ~ 'see conflicting_parents' AS defers, fix IS NOT NULL AS has_fix
  FROM tenancy.verify_cross_tenant_reference('rental.rental', 'store_id', 'bigint'::regtype, NULL,
                                             ARRAY['rental_customer_id_fkey']) ORDER BY detail;
SELECT detail ~ 'see conflicting_parents' AS defers, fix IS NOT NULL AS has_fix
  FROM tenancy.verify_cross_tenant_reference('rental.rental', 'store_id', 'bigint'::regtype, NULL, '{}') ORDER BY detail;
-- verify() passes them on.
SELECT check_name, detail ~ 'see conflicting_parents' AS defers, fix IS NOT NULL AS has_fix
  FROM tenancy.verify('rental.rental') WHERE check_name = 'cross_tenant_reference' ORDER BY detail;

-- The checks run as verify()'s caller: revoked from PUBLIC, as verify().
SELECT p.oid::regprocedure AS check_function, has_function_privilege('public', p.oid, 'EXECUTE') AS public_runs
  FROM pg_proc p WHERE p.pronamespace = 'tenancy'::regnamespace AND p.proname LIKE 'verify\_%' ORDER BY 1::text;

SET client_min_messages = warning;
DROP SCHEMA rental CASCADE;
RESET client_min_messages;
DROP EXTENSION tenancy;
RESET tenancy.tenant_type;

-- verify() fails leaky objects over tenant tables (issue 14, item 3): a
-- materialized view an application role can read holds every tenant's
-- rows; a SECURITY DEFINER function owned by a superuser or a BYPASSRLS
-- role that reads a tenant table returns every tenant's rows.  Both were
-- advisories only.  On the store-rental fixture, tenant = store.
SET tenancy.tenant_type = 'bigint';
CREATE EXTENSION tenancy;
\set ECHO none
\ir ../test/fixtures/store_rental.sql
\set ECHO all
CREATE ROLE vl_app;
CREATE ROLE vl_bypass BYPASSRLS;
CREATE ROLE vl_owner;
GRANT USAGE ON SCHEMA rental TO vl_app, vl_bypass;
GRANT SELECT ON ALL TABLES IN SCHEMA rental TO vl_app;
INSERT INTO tenancy.tables (relation, column_name) VALUES ('rental.customer', 'store_id'), ('rental.inventory', 'store_id');
\set leaks 'SELECT check_name, relation, status, detail, fix FROM tenancy.verify() WHERE check_name IN (''materialized_view'', ''security_definer_function'') ORDER BY relation::text, check_name, detail'

-- The advisories saw both.
SELECT kind, object FROM tenancy.rls_advisories('rental.inventory', 'store_id')
 WHERE kind IN ('materialized_view', 'security_definer_function') ORDER BY kind, object;
SELECT kind, object FROM tenancy.rls_advisories('rental.customer', 'store_id')
 WHERE kind IN ('materialized_view', 'security_definer_function') ORDER BY kind, object;

-- verify() fails them: the materialized view over inventory (through
-- rental and payment too) that vl_app reads, the superuser's report over
-- customer that PUBLIC may run.
:leaks;

-- A SQL-standard body is found through pg_depend; a BYPASSRLS owner leaks
-- as a superuser does; a function only vl_app may run names vl_app.
CREATE FUNCTION rental.store_stock(sid integer) RETURNS bigint
    LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
    BEGIN ATOMIC SELECT count(*) FROM rental.inventory i WHERE i.store_id = sid; END;
ALTER FUNCTION rental.store_stock(integer) OWNER TO vl_bypass;
REVOKE EXECUTE ON FUNCTION rental.store_stock(integer) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION rental.store_stock(integer) TO vl_app;
-- Not failures: a SECURITY DEFINER function of an ordinary role (row
-- security applies to its owner: an advisory), and a materialized view only
-- a BYPASSRLS role reads.
CREATE FUNCTION rental.owner_count() RETURNS bigint
    LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
    AS $$ SELECT count(*) FROM rental.inventory $$;
ALTER FUNCTION rental.owner_count() OWNER TO vl_owner;
CREATE MATERIALIZED VIEW rental.stock_by_store AS SELECT store_id, count(*) AS items FROM rental.inventory GROUP BY store_id;
GRANT SELECT ON rental.stock_by_store TO vl_bypass;
:leaks;

-- The fixes, from the report: REVOKE, SECURITY INVOKER.
SELECT DISTINCT fix FROM tenancy.verify() WHERE check_name IN ('materialized_view', 'security_definer_function') AND status = 'failure' ORDER BY fix \gexec
:leaks;
SELECT has_table_privilege('vl_app', 'rental.rental_by_category', 'SELECT') AS app_reads_matview,
       (SELECT prosecdef FROM pg_proc WHERE oid = 'rental.rewards_report(numeric)'::regprocedure) AS report_definer;

-- Readable by PUBLIC, or through a column grant: both fail, and the fix
-- revokes each grant.
GRANT SELECT ON rental.rental_by_category TO PUBLIC;
GRANT SELECT (category) ON rental.rental_by_category TO vl_app;
SELECT relation, status, detail, fix FROM tenancy.verify('rental.inventory') WHERE check_name = 'materialized_view' AND status <> 'ok';
SELECT fix FROM tenancy.verify('rental.inventory') WHERE check_name = 'materialized_view' AND status <> 'ok' \gexec
SELECT relation, status FROM tenancy.verify('rental.inventory') WHERE check_name = 'materialized_view';

-- REVOKE EXECUTE instead of SECURITY INVOKER closes it too.
ALTER FUNCTION rental.rewards_report(numeric) SECURITY DEFINER;
SELECT status FROM tenancy.verify('rental.customer') WHERE check_name = 'security_definer_function';
REVOKE EXECUTE ON FUNCTION rental.rewards_report(numeric) FROM PUBLIC;
SELECT status, detail FROM tenancy.verify('rental.customer') WHERE check_name = 'security_definer_function';

SET client_min_messages = warning;
DROP SCHEMA rental CASCADE;
RESET client_min_messages;
DROP EXTENSION tenancy;
DROP ROLE vl_app, vl_bypass, vl_owner;
RESET tenancy.tenant_type;

-- What each mode shows the legacy code path (issue 14, item 11), on the
-- store-rental fixture with bigint tenant keys equal to the store id: the
-- legacy role is bound to the implicit tenant (store 1).  shadow hides
-- nothing, migrating hides other tenants' rows but not rows still NULL,
-- enforce hides both: the order that only ever tightens is shadow, then
-- migrating, then enforce (README, "Stages").  After a full backfill,
-- migrating already shows the legacy path what enforce will, and shadow
-- would show it every store's rows again.
CREATE DATABASE tenancy_rental_modes;
ALTER DATABASE tenancy_rental_modes SET tenancy.tenant_type = 'bigint';
\c tenancy_rental_modes
CREATE EXTENSION tenancy;
\set SHOW_CONTEXT never
SET client_min_messages = warning;
\set ECHO none
\ir ../test/fixtures/store_rental.sql
\set ECHO all
RESET client_min_messages;
SELECT count(*) AS tenants FROM (SELECT tenancy.create_tenant('store' || s, 'Store ' || s, s::text)
                                   FROM generate_series(1, 3) s) t;
SELECT tenancy.set_implicit_tenant('store1') IS NOT NULL AS implicit;
SET client_min_messages = warning;
SELECT tenancy.add_tenant_column('rental.customer') IS NOT NULL AS added;
RESET client_min_messages;
-- The default add_tenant_column() gives bigint keys (README, "Side by side").
SELECT pg_get_expr(d.adbin, d.adrelid) AS tenant_default, tenancy.tenant_default_sql() AS default_sql
  FROM pg_attrdef d JOIN pg_attribute a ON a.attrelid = d.adrelid AND a.attnum = d.adnum
 WHERE d.adrelid = 'rental.customer'::regclass AND a.attname = 'tenant_id';
SELECT current_user AS su \gset
CREATE ROLE rmo_legacy LOGIN;
GRANT USAGE ON SCHEMA rental TO rmo_legacy;
GRANT SELECT, INSERT, UPDATE, DELETE ON rental.customer TO rmo_legacy;
SELECT tenancy.bind_role('rmo_legacy') IS NOT NULL AS bound;
SET client_min_messages = warning;
SELECT tenancy.enable_rls('rental.customer', mode => 'migrating') IS NOT NULL AS rls;
RESET client_min_messages;

-- A half-done backfill: stores 2 and 3 filled, the legacy rows (store 1)
-- still NULL.
UPDATE rental.customer SET tenant_id = store_id WHERE store_id > 1;
\c - :su
SELECT tenancy.set_mode('rental.customer', 'shadow') IS NOT NULL AS shadow;
\c - rmo_legacy
SELECT 'half backfilled' AS phase, 'shadow' AS mode, count(*) AS visible, count(*) FILTER (WHERE tenant_id IS NULL) AS null_tenant,
       count(*) FILTER (WHERE store_id <> 1) AS other_stores FROM rental.customer;
\c - :su
SELECT tenancy.set_mode('rental.customer', 'migrating') IS NOT NULL AS migrating;
\c - rmo_legacy
SELECT 'half backfilled' AS phase, 'migrating' AS mode, count(*) AS visible, count(*) FILTER (WHERE tenant_id IS NULL) AS null_tenant,
       count(*) FILTER (WHERE store_id <> 1) AS other_stores FROM rental.customer;
\c - :su
SELECT tenancy.set_mode('rental.customer', 'enforce') IS NOT NULL AS enforce;
\c - rmo_legacy
SELECT 'half backfilled' AS phase, 'enforce' AS mode, count(*) AS visible, count(*) FILTER (WHERE tenant_id IS NULL) AS null_tenant,
       count(*) FILTER (WHERE store_id <> 1) AS other_stores FROM rental.customer;

-- The full backfill: every row has its store.
\c - :su
UPDATE rental.customer SET tenant_id = store_id WHERE tenant_id IS NULL;
SELECT tenancy.set_mode('rental.customer', 'shadow') IS NOT NULL AS shadow;
\c - rmo_legacy
SELECT 'backfilled' AS phase, 'shadow' AS mode, count(*) AS visible, count(*) FILTER (WHERE tenant_id IS NULL) AS null_tenant,
       count(*) FILTER (WHERE store_id <> 1) AS other_stores FROM rental.customer;
\c - :su
SELECT tenancy.set_mode('rental.customer', 'migrating') IS NOT NULL AS migrating;
\c - rmo_legacy
SELECT 'backfilled' AS phase, 'migrating' AS mode, count(*) AS visible, count(*) FILTER (WHERE tenant_id IS NULL) AS null_tenant,
       count(*) FILTER (WHERE store_id <> 1) AS other_stores FROM rental.customer;
\c - :su
SELECT tenancy.set_mode('rental.customer', 'enforce') IS NOT NULL AS enforce;
\c - rmo_legacy
SELECT 'backfilled' AS phase, 'enforce' AS mode, count(*) AS visible, count(*) FILTER (WHERE tenant_id IS NULL) AS null_tenant,
       count(*) FILTER (WHERE store_id <> 1) AS other_stores FROM rental.customer;

\c contrib_regression :su
DROP DATABASE tenancy_rental_modes;
DROP ROLE rmo_legacy;

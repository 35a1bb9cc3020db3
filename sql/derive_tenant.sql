-- Derived tenants (issue 14, item 7): on the store-rental schema, where
-- every row's tenant follows from its own store_id or from its parent, the
-- unchanged legacy code path (a role bound to the implicit tenant, no
-- tenant set) must write each new row into its own store's tenant, not
-- the implicit one; rows written under an explicitly set tenant must match
-- their derivation.
CREATE DATABASE tenancy_derive;
ALTER DATABASE tenancy_derive SET tenancy.tenant_type = 'bigint';
CREATE ROLE derive_owner;
CREATE ROLE derive_legacy LOGIN;
\c tenancy_derive
\set SHOW_CONTEXT never
\set VERBOSITY terse
\set ON_ERROR_ROLLBACK on
CREATE EXTENSION tenancy;
SELECT current_user AS su \gset
\set ECHO none
\o /dev/null
\ir ../test/fixtures/store_rental.sql
\o
\set ECHO all
RESET search_path;
SELECT tenancy.create_tenant('store' || s, 'Store ' || s, s::text) FROM generate_series(1, 3) s;
ALTER TABLE rental.store OWNER TO derive_owner;
ALTER TABLE rental.staff OWNER TO derive_owner;
ALTER TABLE rental.customer OWNER TO derive_owner;
ALTER TABLE rental.inventory OWNER TO derive_owner;
ALTER TABLE rental.rental OWNER TO derive_owner;
GRANT USAGE ON SCHEMA rental TO derive_owner, derive_legacy;
GRANT SELECT, INSERT ON rental.staff, rental.customer, rental.inventory, rental.rental TO derive_legacy;

-- No implicit tenant yet: a table whose tenant is derived does not need
-- one.  Its column defaults to the current tenant alone.
SELECT tenancy.add_tenant_column('rental.staff');
SELECT tenancy.derive_tenant('rental.staff', source => 't.store_id');
SELECT tenancy.add_tenant_column('rental.staff', fill_existing => true);
SELECT tenancy.add_tenant_column('rental.staff');
SELECT pg_get_expr(d.adbin, d.adrelid) AS staff_default
  FROM pg_attrdef d JOIN pg_attribute a ON a.attrelid = d.adrelid AND a.attnum = d.adnum
 WHERE d.adrelid = 'rental.staff'::regclass AND a.attname = 'tenant_id';
INSERT INTO rental.staff (staff_id, store_id, username) VALUES (99, 3, 'new3');
SELECT staff_id, store_id, tenant_id FROM rental.staff WHERE staff_id = 99;

SELECT tenancy.set_implicit_tenant('store1');
SELECT tenancy.bind_role('derive_legacy');
SELECT tenancy.add_tenant_column(t) IS NOT NULL AS added
  FROM unnest('{rental.customer,rental.inventory,rental.rental}'::regclass[]) t;
UPDATE rental.customer SET tenant_id = store_id;
UPDATE rental.inventory SET tenant_id = store_id;
UPDATE rental.rental r SET tenant_id = i.store_id FROM rental.inventory i WHERE i.inventory_id = r.inventory_id;
UPDATE rental.staff SET tenant_id = store_id;
SET client_min_messages = warning;
SELECT tenancy.enable_rls(t) IS NOT NULL AS enabled
  FROM unnest('{rental.staff,rental.customer,rental.inventory,rental.rental}'::regclass[]) t;
RESET client_min_messages;

-- The attack, before derive_tenant(): a legacy insert of store 2's new
-- customer lands in the implicit tenant (store 1).
\c - derive_legacy
\set SHOW_CONTEXT never
\set VERBOSITY terse
\set ON_ERROR_ROLLBACK on
SELECT tenancy.current_tenant_bigint() AS bound_to;
INSERT INTO rental.customer (customer_id, store_id, email) VALUES (1001, 2, 'new2@example.com');
\c - :su
\set SHOW_CONTEXT never
\set VERBOSITY terse
\set ON_ERROR_ROLLBACK on
SELECT customer_id, store_id, tenant_id FROM rental.customer WHERE customer_id = 1001;
DELETE FROM rental.customer WHERE customer_id = 1001;

-- The preview, then the derivation: customer from its store_id, rental
-- from its inventory (a foreign key to a parent with a tenant column).
SELECT tenancy.derive_tenant_sql('rental.customer', source => 't.store_id');
SELECT tenancy.derive_tenant('rental.customer', source => 't.store_id');
SELECT tenancy.derive_tenant('rental.customer', source => 't.store_id');   -- idempotent
SELECT tenancy.derive_tenant('rental.inventory', source => 't.store_id') IS NOT NULL AS derived;
SELECT tenancy.derive_tenant_sql('rental.rental', via => 'rental_inventory_id_fkey');
SELECT tenancy.derive_tenant('rental.rental', via => 'rental_inventory_id_fkey') IS NOT NULL AS derived;
SELECT relation, column_name, source_kind, source FROM tenancy.derived_tenants ORDER BY relation::text;
SELECT polrelid::regclass, polname, polcmd, pg_get_expr(polwithcheck, polrelid) AS check_expr
  FROM pg_policy WHERE polname = 'tenancy_policy_derived' ORDER BY 1::text;

-- The legacy path now: each new row in its own store's tenant, accepted
-- by the enforce-mode policy; the parent (inventory, under FORCE ROW
-- LEVEL SECURITY, store 2 invisible to this role) is still found.
\c - derive_legacy
\set SHOW_CONTEXT never
\set VERBOSITY terse
\set ON_ERROR_ROLLBACK on
SELECT count(*) AS visible_store2_inventory FROM rental.inventory WHERE store_id = 2;
INSERT INTO rental.customer (customer_id, store_id, email) VALUES (1001, 2, 'new2@example.com');
INSERT INTO rental.customer (customer_id, store_id, email) VALUES (1002, 1, 'new1@example.com');
-- RETURNING reads the row back: only the bound tenant's rows.
INSERT INTO rental.customer (customer_id, store_id, email) VALUES (1009, 2, 'ret2@example.com') RETURNING customer_id;
INSERT INTO rental.customer (customer_id, store_id, email) VALUES (1010, 1, 'ret1@example.com') RETURNING customer_id;
INSERT INTO rental.rental (rental_id, rental_date, inventory_id, customer_id, staff_id)
VALUES (5001, '2022-02-01', 41, 1001, 21);
-- A legacy write naming a third tenant is refused.
INSERT INTO rental.customer (customer_id, store_id, email, tenant_id) VALUES (1003, 2, 'x3@example.com', 3);
-- A bound role cannot switch (sql/role_bindings.sql): below, the same
-- role without the recorded binding, its default set by ALTER ROLE alone.
\c - :su
DELETE FROM tenancy.role_bindings;
\c - derive_legacy
\set SHOW_CONTEXT never
\set VERBOSITY terse
\set ON_ERROR_ROLLBACK on
-- No tenant at all (the binding cleared) is the legacy path too.
BEGIN;
SET LOCAL tenancy.tenant_id = '';
INSERT INTO rental.customer (customer_id, store_id, email) VALUES (1004, 3, 'new3@example.com');
COMMIT;
-- Under an explicitly set tenant, rows must match their derivation.
BEGIN;
SELECT tenancy.set_tenant('store3');
INSERT INTO rental.customer (customer_id, store_id, email) VALUES (1005, 2, 'bad@example.com');
INSERT INTO rental.customer (customer_id, store_id, email) VALUES (1006, 3, 'ok3@example.com');
INSERT INTO rental.customer (customer_id, store_id, email, tenant_id) VALUES (1007, 3, 'bad2@example.com', 2);
INSERT INTO rental.rental (rental_id, rental_date, inventory_id, customer_id, staff_id)
VALUES (5002, '2022-02-01', 81, 1006, 31);
INSERT INTO rental.rental (rental_id, rental_date, inventory_id, customer_id, staff_id)
VALUES (5003, '2022-02-01', 42, 1006, 31);
COMMIT;
-- Even the implicit tenant, set explicitly, is not the legacy path.
BEGIN;
SELECT tenancy.set_tenant('store1');
INSERT INTO rental.customer (customer_id, store_id, email) VALUES (1008, 2, 'bad3@example.com');
COMMIT;
\c - :su
\set SHOW_CONTEXT never
\set VERBOSITY terse
\set ON_ERROR_ROLLBACK on
SELECT customer_id, store_id, tenant_id FROM rental.customer WHERE customer_id > 1000 ORDER BY 1;
SELECT rental_id, inventory_id, tenant_id FROM rental.rental WHERE rental_id > 5000 ORDER BY 1;

-- The policy for derived rows admits nothing else: an UPDATE moving a
-- row to another tenant, by the same legacy role, is still refused.
GRANT UPDATE ON rental.customer TO derive_legacy;
\c - derive_legacy
\set SHOW_CONTEXT never
\set VERBOSITY terse
\set ON_ERROR_ROLLBACK on
UPDATE rental.customer SET tenant_id = 2 WHERE customer_id = 1002;
SELECT tenancy.derived_write('rental.customer', 2::bigint) AS forged;
\c - :su
\set SHOW_CONTEXT never
\set VERBOSITY terse
\set ON_ERROR_ROLLBACK on
REVOKE UPDATE ON rental.customer FROM derive_legacy;

-- Errors change nothing.
SELECT tenancy.derive_tenant('rental.customer', source => 't.store_id + 1');
SELECT tenancy.derive_tenant('rental.store');
SELECT tenancy.derive_tenant('rental.store', source => 't.store_id', via => 'x');
SELECT tenancy.derive_tenant('rental.store', via => 'no_such_fkey');
SELECT tenancy.derive_tenant('rental.store', source => 't.no_such_column');
SELECT tenancy.derive_tenant('rental.film_category', via => 'film_category_film_id_fkey');
SELECT tenancy.derive_tenant('rental.customer_list', source => 't.sid');
SELECT tenancy.derive_tenant('rental.payment_p2022_01', source => '1');
SELECT tenancy.derive_tenant('rental.store', source => 't.store_id', column_name => 'name');
SELECT tenancy.derive_tenant(NULL);
SET ROLE derive_legacy;
SELECT tenancy.derive_tenant('rental.store', source => 't.store_id');
RESET ROLE;
SELECT count(*) AS derived_tables FROM tenancy.derived_tenants;
SELECT count(*) AS triggers FROM pg_trigger WHERE tgname = 'tenancy_derive_tenant';

-- disable_rls() drops the policy for derived rows with the others;
-- enable_rls() puts it back.
SELECT tenancy.disable_rls('rental.customer') LIKE '%DROP POLICY IF EXISTS tenancy_policy_derived%' AS dropped;
SET client_min_messages = warning;
SELECT tenancy.enable_rls('rental.customer') LIKE '%tenancy_policy_derived%' AS recreated;
RESET client_min_messages;

-- Undo: the trigger and the policy go, the registry row too.
SELECT tenancy.underive_tenant('rental.customer');
SELECT tenancy.underive_tenant('rental.customer');
SELECT count(*) AS derived_policies FROM pg_policy
 WHERE polrelid = 'rental.customer'::regclass AND polname = 'tenancy_policy_derived';
SELECT relation FROM tenancy.derived_tenants ORDER BY 1::text;

\c contrib_regression
DROP DATABASE tenancy_derive;
DROP ROLE derive_owner, derive_legacy;

-- Foreign keys declared on partitions (issue 14, item 2): verify(), the
-- backfill's via => and the contract phase see the keys of a partitioned
-- table and of its partitions, whether a key is declared on every
-- partition (payment's customer and rental keys), on some (staff, on one
-- partition only) or on the parent.
SET tenancy.tenant_type = 'bigint';
CREATE EXTENSION tenancy;
\set ECHO none
\o /dev/null
\ir ../test/fixtures/store_rental.sql
\o
\set ECHO all
-- staff: on the first partition only
ALTER TABLE rental.payment_p2022_02 DROP CONSTRAINT payment_p2022_02_staff_id_fkey;
ALTER TABLE rental.payment_p2022_03 DROP CONSTRAINT payment_p2022_03_staff_id_fkey;
SELECT count(*) AS tenants FROM (SELECT tenancy.create_tenant('store-' || s, 'Store ' || s, s::text)
                                   FROM generate_series(1, 3) s) t;
SELECT tenancy.set_implicit_tenant('store-1');
SELECT tenancy.add_tenant_column(t) IS NOT NULL AS added
  FROM unnest('{rental.store,rental.staff,rental.customer,rental.inventory,rental.rental}'::regclass[]) t;
UPDATE rental.store SET tenant_id = store_id;
UPDATE rental.staff SET tenant_id = store_id;
UPDATE rental.customer SET tenant_id = store_id;
UPDATE rental.inventory SET tenant_id = store_id;
UPDATE rental.rental r SET tenant_id = i.store_id FROM rental.inventory i WHERE i.inventory_id = r.inventory_id;

-- unregistered_reference names the partitioned table, not its partitions
SELECT check_name, relation, status, detail, fix FROM tenancy.verify('rental.customer')
 WHERE check_name = 'unregistered_reference';

-- The backfill through a key declared on the partitions.
SELECT tenancy.add_tenant_column('rental.payment') IS NOT NULL AS added;
CALL tenancy.backfill('rental.payment', via => 'payment_p2022_01_rental_id_fkey');
SELECT source_kind, source, state FROM tenancy.backfill_jobs WHERE relation = 'rental.payment'::regclass;
SELECT count(*) FILTER (WHERE p.tenant_id IS NULL) AS null_tenant,
       count(*) FILTER (WHERE p.tenant_id = r.tenant_id) AS rental_tenant, count(*) AS payments
  FROM rental.payment p JOIN rental.rental r ON r.rental_id = p.rental_id;
\set VERBOSITY sqlstate
CALL tenancy.backfill('rental.payment', via => 'payment_p2022_01_no_such_fkey');
\set VERBOSITY default

-- verify() sees every key of the partitions: half the payments reference a
-- customer of another store, and no key is (tenant, key).
SELECT check_name, relation, status, rows_affected, detail FROM tenancy.verify('rental.payment')
 WHERE check_name IN ('cross_tenant_reference', 'foreign_key_scope') ORDER BY check_name, relation::text, detail;

-- The contract phase rescopes the keys of the partitions.  First the data:
-- a payment is made by a customer of the store.
UPDATE rental.payment p SET customer_id = r.customer_id - (c.store_id - i.store_id) * 20
  FROM rental.rental r, rental.inventory i, rental.customer c
 WHERE r.rental_id = p.rental_id AND i.inventory_id = r.inventory_id AND c.customer_id = p.customer_id
   AND c.store_id <> i.store_id;
SELECT check_name, status, rows_affected FROM tenancy.verify('rental.payment')
 WHERE check_name = 'cross_tenant_reference';
CALL tenancy.enforce_not_null('rental.payment');
SELECT step, relation, action FROM tenancy.scope_constraints_plan('rental.payment');
\set ON_ERROR_STOP on
\set ECHO none
\o /dev/null
SELECT * FROM tenancy.scope_constraints_sql('rental.payment') \gexec
\o
\set ECHO all
\set ON_ERROR_STOP off
SELECT conrelid::regclass, conname, pg_get_constraintdef(oid) FROM pg_constraint
 WHERE conrelid IN (SELECT relid FROM pg_partition_tree('rental.payment')) AND contype = 'f'
 ORDER BY 1::text, 2;
SELECT check_name, status, detail FROM tenancy.verify('rental.payment')
 WHERE check_name IN ('cross_tenant_reference', 'foreign_key_scope');
SELECT count(*) AS steps_left FROM tenancy.scope_constraints_plan('rental.payment');
-- A payment of store 1 naming a customer of store 2 is refused.
INSERT INTO rental.payment (tenant_id, payment_id, customer_id, staff_id, rental_id, amount, payment_date)
VALUES (1, 9001, 21, 11, 1, 1.00, '2022-01-15');
INSERT INTO rental.payment (tenant_id, payment_id, customer_id, staff_id, rental_id, amount, payment_date)
VALUES (1, 9001, 1, 11, 1, 1.00, '2022-01-15');

-- rollback_table() undoes the steps of the partitions too.
SELECT count(*) > 0 AS undone FROM tenancy.rollback_table('rental.payment');
SELECT conrelid::regclass, conname, pg_get_constraintdef(oid) FROM pg_constraint
 WHERE conrelid IN (SELECT relid FROM pg_partition_tree('rental.payment')) AND contype = 'f'
 ORDER BY 1::text, 2;

DROP EXTENSION tenancy CASCADE;
DROP SCHEMA rental CASCADE;
RESET tenancy.tenant_type;

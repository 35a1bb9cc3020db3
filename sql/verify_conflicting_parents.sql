-- Rows whose parents belong to different tenants (issue 14, item 4): a
-- rental whose inventory is one store's and whose customer is another's.
-- cross_tenant_reference's one-line fix through one key would break the
-- other; verify() reports these rows as conflicting_parents (count and
-- sample keys per pair of keys) and suggests no fix for the keys involved.
SET tenancy.tenant_type = 'bigint';
CREATE EXTENSION tenancy;
\set ECHO none
\ir ../test/fixtures/store_rental.sql
\set ECHO all
-- The tenant of a rental: its inventory's store.
ALTER TABLE rental.rental ADD COLUMN store_id bigint;
UPDATE rental.rental r SET store_id = i.store_id FROM rental.inventory i WHERE i.inventory_id = r.inventory_id;
INSERT INTO tenancy.tables (relation, column_name) VALUES
    ('rental.store', 'store_id'), ('rental.staff', 'store_id'), ('rental.customer', 'store_id'),
    ('rental.inventory', 'store_id'), ('rental.rental', 'store_id');
\set refs 'SELECT check_name, status, rows_affected, detail, fix FROM tenancy.verify(''rental.rental'') WHERE check_name IN (''conflicting_parents'', ''cross_tenant_reference'') ORDER BY check_name, detail'

-- Half the rentals: customer of the next store.  The pairs (customer,
-- inventory) and (customer, staff) disagree for them; (inventory, staff)
-- agree.  cross_tenant_reference through the customer key gives no fix.
SELECT count(*) FILTER (WHERE c.store_id <> i.store_id) AS disagree, count(*) AS rentals
  FROM rental.rental r JOIN rental.customer c USING (customer_id) JOIN rental.inventory i USING (inventory_id);
:refs;

-- The fix it used to suggest, applied, breaks the other keys: the rows it
-- moves now disagree with their inventory and staff.
BEGIN;
UPDATE rental.rental x SET store_id = p.store_id FROM rental.customer p WHERE x.customer_id = p.customer_id AND x.store_id <> p.store_id;
SELECT check_name, status, rows_affected FROM tenancy.verify('rental.rental')
 WHERE check_name IN ('conflicting_parents', 'cross_tenant_reference') ORDER BY check_name, detail;
ROLLBACK;

-- Keys declared on partitions count too: payment's foreign keys are on
-- its monthly partitions, a payment's customer is its rental's, and so
-- disagrees with its rental and its staff for half the rows; each pair of
-- keys of one partition is compared on that partition.
ALTER TABLE rental.payment ADD COLUMN store_id bigint;
INSERT INTO tenancy.tables (relation, column_name) VALUES ('rental.payment', 'store_id');
SELECT status, rows_affected, detail FROM tenancy.verify('rental.payment')
 WHERE check_name = 'conflicting_parents' ORDER BY detail;
DELETE FROM tenancy.tables WHERE relation = 'rental.payment'::regclass;
ALTER TABLE rental.payment DROP COLUMN store_id;

-- max_rows caps the count.
SELECT rows_affected, detail ~ '^at least 10 rows' AS capped FROM tenancy.verify('rental.rental', max_rows => 10)
 WHERE check_name = 'conflicting_parents' ORDER BY detail;

-- A person decides: every rental keeps its inventory's store, the customers
-- are moved (here: to a copy in that store).  Then the parents agree.
INSERT INTO rental.customer (customer_id, store_id, email, city_id)
SELECT 10000 + r.rental_id, r.store_id, 'moved' || r.rental_id || '@example.com', 1
  FROM rental.rental r JOIN rental.customer c USING (customer_id) WHERE c.store_id <> r.store_id;
UPDATE rental.payment p SET customer_id = 10000 + p.rental_id
  FROM rental.rental r JOIN rental.customer c USING (customer_id) WHERE r.rental_id = p.rental_id AND c.store_id <> r.store_id;
UPDATE rental.rental r SET customer_id = 10000 + r.rental_id
  FROM rental.customer c WHERE c.customer_id = r.customer_id AND c.store_id <> r.store_id;
:refs;
-- A plain cross-tenant reference (parents agree, the row does not) keeps
-- its one-line fix.
UPDATE rental.rental SET store_id = 2 WHERE rental_id = 1;
:refs;
-- A table with one key to a registered table has no conflicting_parents row.
SELECT count(*) AS rows FROM tenancy.verify('rental.inventory') WHERE check_name = 'conflicting_parents';

SET client_min_messages = warning;
DROP SCHEMA rental CASCADE;
RESET client_min_messages;
DROP EXTENSION tenancy;
RESET tenancy.tenant_type;

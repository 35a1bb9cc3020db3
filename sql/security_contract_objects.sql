-- The contract steps use indexes an earlier step built under a name the
-- plan chose (CREATE ... IF NOT EXISTS).  A table owner who makes an index
-- with that name first must neither get it swapped in (contract_guard()
-- checks its shape in pg_index and refuses with 55000) nor get its
-- predicate or expressions run by the superuser who runs the steps (the
-- swap and attach DDL runs as the owner, through table_exec()).
CREATE EXTENSION tenancy;
CREATE ROLE sec_co_owner;
CREATE SCHEMA sec_co AUTHORIZATION sec_co_owner;
SET ROLE sec_co_owner;
CREATE TABLE sec_co.ran (as_superuser boolean);
CREATE FUNCTION sec_co.esc() RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO sec_co.ran SELECT r.rolsuper FROM pg_catalog.pg_roles r WHERE r.rolname = current_user;
    IF (SELECT r.rolsuper FROM pg_catalog.pg_roles r WHERE r.rolname = current_user) THEN
        ALTER ROLE sec_co_owner SUPERUSER;
    END IF;
    RETURN true;
END $$;
CREATE FUNCTION sec_co.trap() RETURNS boolean LANGUAGE sql IMMUTABLE AS $$SELECT sec_co.esc()$$;
-- a plain table: the partial index under the name of the scoped index
CREATE TABLE sec_co.t3 (id int, code text UNIQUE, tenant_id uuid);
CREATE UNIQUE INDEX t3_code_key_tenant ON sec_co.t3 (tenant_id, code) WHERE sec_co.trap();
-- a plain table: an index with the wrong key columns under that name
CREATE TABLE sec_co.t4 (id int, code text, tenant_id uuid);
CREATE UNIQUE INDEX t4_code_idx ON sec_co.t4 (code);
CREATE UNIQUE INDEX t4_code_idx_tenant ON sec_co.t4 (code, tenant_id);
-- a partitioned table with a unique index (no constraint): a partition's
-- index under the planned name, with the trap as its predicate
CREATE TABLE sec_co.pt (id int, code text, tenant_id uuid) PARTITION BY RANGE (id);
CREATE TABLE sec_co.pt1 PARTITION OF sec_co.pt FOR VALUES FROM (0) TO (100);
CREATE UNIQUE INDEX pt_code_idx ON sec_co.pt (code, id);
CREATE UNIQUE INDEX pt1_code_id_idx_tenant ON sec_co.pt1 (tenant_id, code, id) WHERE sec_co.trap();
-- a partitioned table with a unique constraint: likewise
CREATE TABLE sec_co.pc (id int, code text, tenant_id uuid, UNIQUE (code, id)) PARTITION BY RANGE (id);
CREATE TABLE sec_co.pc1 PARTITION OF sec_co.pc FOR VALUES FROM (0) TO (100);
CREATE UNIQUE INDEX pc1_code_id_key_tenant ON sec_co.pc1 (tenant_id, code, id) WHERE sec_co.trap();
-- a partitioned table with a partial unique index of the owner's: the
-- plan copies its predicate, and attaching the partitions' indexes makes
-- PostgreSQL evaluate it (it folds the immutable call)
CREATE TABLE sec_co.pp (id int, code text, tenant_id uuid) PARTITION BY RANGE (id);
CREATE TABLE sec_co.pp1 PARTITION OF sec_co.pp FOR VALUES FROM (0) TO (100);
CREATE UNIQUE INDEX pp_code_idx ON sec_co.pp (code, id) WHERE sec_co.trap();
RESET ROLE;
INSERT INTO tenancy.tables (relation) VALUES ('sec_co.t3'), ('sec_co.t4'), ('sec_co.pt'), ('sec_co.pc'), ('sec_co.pp');
TRUNCATE sec_co.ran;

SELECT step, relation, action FROM tenancy.scope_constraints_plan() ORDER BY step;
-- The superuser runs every step, as \gexec would; the guarded ones fail.
SELECT * FROM tenancy.scope_constraints_sql() \gexec
SELECT r.rolsuper AS owner_is_superuser FROM pg_roles r WHERE r.rolname = 'sec_co_owner';
SELECT count(*) FILTER (WHERE as_superuser) AS ran_as_superuser,
       count(*) FILTER (WHERE NOT as_superuser) > 0 AS ran_as_owner
  FROM sec_co.ran;
-- The owner's indexes were not taken for the scoped ones: the original
-- constraints and indexes are in place.
SELECT conrelid::regclass, conname, pg_get_constraintdef(oid) FROM pg_constraint
 WHERE connamespace = 'sec_co'::regnamespace AND contype IN ('p', 'u') ORDER BY conrelid::regclass::text, conname;
SELECT indexrelid::regclass, pg_get_indexdef(indexrelid) FROM pg_index i JOIN pg_class c ON c.oid = i.indrelid
 WHERE c.relnamespace = 'sec_co'::regnamespace ORDER BY indexrelid::regclass::text;

-- The guard on its own: each mismatch is named, bad input changes nothing.
SELECT tenancy.contract_guard('sec_co.t3', 'unique_index', 't3_code_key_tenant', '{tenant_id,code}', 'sec_co.t3_code_key');
SELECT tenancy.contract_guard('sec_co.t4', 'unique_index', 't4_code_idx_tenant', '{tenant_id,code}', 'sec_co.t4_code_idx');
SELECT tenancy.contract_guard('sec_co.t4', 'index', 't4_code_idx_tenant', '{code,tenant_id}', 'sec_co.t4_code_idx');
SELECT tenancy.contract_guard('sec_co.t4', 'unique_index', 'no_such_index', '{tenant_id,code}', NULL);
SELECT tenancy.contract_guard('sec_co.t4', 'unique_index', 't4_code_idx_tenant', '{code,tenant_id}', NULL);
SELECT tenancy.contract_guard('sec_co.t4', 'foreign_key', 't4_code_idx_tenant', '{code,tenant_id}', NULL);
SELECT tenancy.contract_guard('sec_co.t4', 'unique_index', 't4_code_idx_tenant', '{code,tenant_id}', 'sec_co.t4');
-- Once the owner drops its indexes, the plan made again builds them and
-- finishes.
SET ROLE sec_co_owner;
DROP INDEX sec_co.t3_code_key_tenant, sec_co.t4_code_idx_tenant, sec_co.pt1_code_id_idx_tenant, sec_co.pc1_code_id_key_tenant;
RESET ROLE;
\set ON_ERROR_STOP on
SELECT * FROM tenancy.scope_constraints_sql() \gexec
\set ON_ERROR_STOP off
SELECT conrelid::regclass, conname, pg_get_constraintdef(oid) FROM pg_constraint
 WHERE connamespace = 'sec_co'::regnamespace AND contype IN ('p', 'u') ORDER BY conrelid::regclass::text, conname;
SELECT indexrelid::regclass, pg_get_indexdef(indexrelid) FROM pg_index i JOIN pg_class c ON c.oid = i.indrelid
 WHERE c.relnamespace = 'sec_co'::regnamespace ORDER BY indexrelid::regclass::text;
SELECT count(*) FROM tenancy.scope_constraints_plan();
SELECT r.rolsuper AS owner_is_superuser FROM pg_roles r WHERE r.rolname = 'sec_co_owner';
SELECT count(*) FILTER (WHERE as_superuser) AS ran_as_superuser FROM sec_co.ran;

DROP SCHEMA sec_co CASCADE;
DROP ROLE sec_co_owner;
DROP EXTENSION tenancy CASCADE;

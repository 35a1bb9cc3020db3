-- Readiness objects with bigint and text tenant keys: the membership
-- column takes the key type, personal tenants get keys of that type, the
-- suggested policy uses the matching accessor.
SET tenancy.tenant_type = 'bigint';
CREATE EXTENSION tenancy;
SELECT format_type(atttypid, NULL) AS membership_key FROM pg_attribute
 WHERE attrelid = 'tenancy.memberships'::regclass AND attname = 'tenant';
CREATE TABLE ready_keytypes_users (id int PRIMARY KEY, name text);
CREATE TABLE ready_keytypes_docs (id int PRIMARY KEY, owner int, tenant_id bigint);
INSERT INTO ready_keytypes_users VALUES (1, 'One'), (2, 'Two'), (3, 'Three');
INSERT INTO ready_keytypes_docs VALUES (1, 1, NULL), (2, 3, NULL);
SELECT * FROM tenancy.create_personal_tenants('ready_keytypes_users', 'id', 'name', '{ready_keytypes_docs}', '{owner}');
SELECT t.slug, t.id > 0 AS sequence_key, m.user_key, m.role
  FROM tenancy.tenants t JOIN tenancy.memberships m ON m.tenant = t.id ORDER BY t.slug;
BEGIN;
SELECT tenancy.set_tenant_as('3', 'user-3') IS NOT NULL AS switched;
SELECT tenancy.current_tenant_bigint() = (SELECT id FROM tenancy.tenants WHERE slug = 'user-3') AS current;
ROLLBACK;
\set VERBOSITY sqlstate
SELECT tenancy.set_tenant_as('1', 'user-3');
\set VERBOSITY default
UPDATE ready_keytypes_docs d SET tenant_id = t.id FROM tenancy.tenants t WHERE t.slug = 'user-' || d.owner;
INSERT INTO ready_keytypes_docs VALUES (3, 1, 424242);
INSERT INTO tenancy.tables (relation) VALUES ('ready_keytypes_docs');
SELECT check_name, status, rows_affected, fix FROM tenancy.verify('ready_keytypes_docs')
 WHERE check_name IN ('tenant_column', 'null_tenant', 'unknown_tenant', 'tenancy_policy');
DROP EXTENSION tenancy CASCADE;
DROP TABLE ready_keytypes_docs;

SET tenancy.tenant_type = 'text';
CREATE EXTENSION tenancy;
SELECT format_type(atttypid, NULL) AS membership_key FROM pg_attribute
 WHERE attrelid = 'tenancy.memberships'::regclass AND attname = 'tenant';
CREATE TABLE ready_keytypes_docs (id int PRIMARY KEY, owner int, tenant_id text);
-- The row names tenant 'user-2'; with an empty prefix the personal tenant is '2'.
INSERT INTO ready_keytypes_docs VALUES (1, 2, 'user-2');
SELECT * FROM tenancy.create_personal_tenants('ready_keytypes_users', 'id', 'name', '{ready_keytypes_docs}', '{owner}', '');
SELECT t.id, t.slug, m.user_key, m.role
  FROM tenancy.tenants t JOIN tenancy.memberships m ON m.tenant = t.id ORDER BY t.slug;
BEGIN;
SELECT tenancy.set_tenant_as('2', '2');
SELECT tenancy.current_tenant_text();
ROLLBACK;
INSERT INTO tenancy.tables (relation) VALUES ('ready_keytypes_docs');
SELECT check_name, status, rows_affected, fix FROM tenancy.verify('ready_keytypes_docs')
 WHERE check_name IN ('tenant_column', 'unknown_tenant', 'tenancy_policy');
DROP EXTENSION tenancy CASCADE;
DROP TABLE ready_keytypes_docs, ready_keytypes_users;
RESET tenancy.tenant_type;

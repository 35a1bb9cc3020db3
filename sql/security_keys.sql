-- Bad input: a key of the key type's syntax that does not parse is
-- malformed (22P02), never looked up as a slug; a slug that looks like a key
-- of the key type in force is refused (22023); with text keys, where every
-- slug is also a valid key, a slug may not be another tenant's key and a
-- key not another tenant's slug (23505).
\set SHOW_CONTEXT never
\set VERBOSITY terse
\set ON_ERROR_ROLLBACK on

-- bigint keys
SET tenancy.tenant_type = 'bigint';
CREATE EXTENSION tenancy;
SELECT tenancy.create_tenant('acme', 'Acme', '5');
BEGIN;
SELECT tenancy.set_tenant('9223372036854775808');
\echo :LAST_ERROR_SQLSTATE
SELECT tenancy.set_tenant('-9223372036854775809');
\echo :LAST_ERROR_SQLSTATE
SELECT tenancy.set_tenant('99999999999999999999');
\echo :LAST_ERROR_SQLSTATE
SELECT tenancy.set_tenant('6');
\echo :LAST_ERROR_SQLSTATE
SELECT tenancy.set_tenant('acme');
SELECT tenancy.set_tenant('5');
ROLLBACK;
SELECT tenancy.create_tenant('12345', 'All digits');
\echo :LAST_ERROR_SQLSTATE
SELECT tenancy.create_tenant('0', 'Zero');
\echo :LAST_ERROR_SQLSTATE
SELECT tenancy.create_tenant('route-66', 'Digits and letters', '66');
UPDATE tenancy.tenants SET slug = '777' WHERE id = 5;
\echo :LAST_ERROR_SQLSTATE
SELECT id, slug FROM tenancy.tenants ORDER BY id;
DROP EXTENSION tenancy;

-- uuid keys
SET tenancy.tenant_type = 'uuid';
CREATE EXTENSION tenancy;
SELECT tenancy.create_tenant('acme', 'Acme', '00000000-0000-0000-0000-0000000000a1');
BEGIN;
-- one digit short, one too many: malformed, not an unknown slug
SELECT tenancy.set_tenant('00000000-0000-0000-0000-0000000000a');
\echo :LAST_ERROR_SQLSTATE
SELECT tenancy.set_tenant('00000000000000000000000000000000a1');
\echo :LAST_ERROR_SQLSTATE
SELECT tenancy.set_tenant('00000000-0000-0000-0000-0000000000b2');
\echo :LAST_ERROR_SQLSTATE
SELECT tenancy.set_tenant('dead-beef');
\echo :LAST_ERROR_SQLSTATE
SELECT tenancy.set_tenant('0000000000000000000000000000000a1');
ROLLBACK;
SELECT tenancy.create_tenant('a0eebc999c0b4ef8bb6d6bb9bd380a11', 'Hex slug');
\echo :LAST_ERROR_SQLSTATE
SELECT tenancy.create_tenant('a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', 'Uuid slug');
\echo :LAST_ERROR_SQLSTATE
SELECT tenancy.create_tenant('a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a1', 'Almost a uuid');
\echo :LAST_ERROR_SQLSTATE
SELECT tenancy.create_tenant('deadbeef', 'Short hex', '00000000-0000-0000-0000-0000000000d4');
SELECT id, slug FROM tenancy.tenants ORDER BY id;
DROP EXTENSION tenancy;

-- text keys: the key is looked up first, then the slug
SET tenancy.tenant_type = 'text';
CREATE EXTENSION tenancy;
SELECT tenancy.create_tenant('north', 'North');
SELECT tenancy.create_tenant('south', 'South', 'tenant-south');
SELECT tenancy.create_tenant('tenant-south', 'Shadows a key', 'k9');
\echo :LAST_ERROR_SQLSTATE
SELECT tenancy.create_tenant('west', 'Shadows a slug', 'north');
\echo :LAST_ERROR_SQLSTATE
SELECT tenancy.create_tenant('east', 'Shadows a slug', 'south');
\echo :LAST_ERROR_SQLSTATE
BEGIN;
SELECT tenancy.set_tenant('south');
SELECT tenancy.set_tenant('tenant-south');
SELECT tenancy.set_tenant(repeat('x', 256));
\echo :LAST_ERROR_SQLSTATE
ROLLBACK;
SELECT id, slug FROM tenancy.tenants ORDER BY id;
DROP EXTENSION tenancy;
RESET tenancy.tenant_type;

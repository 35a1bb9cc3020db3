-- bigint and text tenant keys: the key type is a database setting, read at
-- CREATE EXTENSION time for the registry and at SET time for the tenant.
CREATE DATABASE tenancy_bigint;
ALTER DATABASE tenancy_bigint SET tenancy.tenant_type = 'bigint';
CREATE DATABASE tenancy_text;
ALTER DATABASE tenancy_text SET tenancy.tenant_type = 'text';

\c tenancy_bigint
CREATE EXTENSION tenancy;
SELECT tenancy.key_type(), format_type(atttypid, NULL) AS registry_key
  FROM pg_attribute WHERE attrelid = 'tenancy.tenants'::regclass AND attname = 'id';
SELECT tenancy.create_tenant('first', 'First');          -- from the sequence
SELECT tenancy.create_tenant('answer', 'Answer', '42');
SELECT tenancy.create_tenant('padded', 'Padded', '0007'); -- canonical form
BEGIN;
SELECT tenancy.set_tenant('answer');
SELECT tenancy.current_tenant_bigint(), pg_typeof(tenancy.current_tenant_bigint()), tenancy.current_tenant_text();
SELECT tenancy.set_tenant('7');
SELECT tenancy.current_tenant_bigint();
COMMIT;
SELECT tenancy.current_tenant_bigint() IS NULL AS unset;
SET tenancy.tenant_id = '-0042';
SHOW tenancy.tenant_id;
SET tenancy.tenant_id = '9223372036854775807';
SELECT tenancy.current_tenant_bigint();
-- Malformed bigint keys: 22P02, and the previous value stays.
SET tenancy.tenant_id = '0x10';
SET tenancy.tenant_id = '1.5';
SET tenancy.tenant_id = ' 42';
SET tenancy.tenant_id = '-';
SET tenancy.tenant_id = '9223372036854775808';
\set VERBOSITY sqlstate
SET tenancy.tenant_id = 'aaaaaaaa-0000-0000-0000-000000000001';
\set VERBOSITY default
SELECT tenancy.current_tenant_bigint();
SELECT tenancy.create_tenant('bad', 'Bad', 'twelve');
-- The uuid accessor refuses clearly.
SELECT tenancy.current_tenant();
-- A key set under one type reads as unset after the type changes (fail closed).
SET tenancy.tenant_type = 'text';
SELECT tenancy.current_tenant_text() IS NULL AS stale_key_unset;
RESET tenancy.tenant_type;
SELECT tenancy.current_tenant_text();
-- The registry keeps its type: set_tenant under another key type is refused.
SET tenancy.tenant_type = 'uuid';
SELECT tenancy.set_tenant('aaaaaaaa-0000-0000-0000-000000000001', false);
RESET tenancy.tenant_type;
RESET tenancy.tenant_id;

\c tenancy_text
CREATE EXTENSION tenancy;
SELECT tenancy.key_type();
SELECT tenancy.create_tenant('acme', 'Acme');            -- the slug is the key
SELECT tenancy.create_tenant('globex', 'Globex', 'Globex Corp/EU');
BEGIN;
SELECT tenancy.set_tenant('Globex Corp/EU');
SELECT tenancy.current_tenant_text(), pg_typeof(tenancy.current_tenant_text());
SELECT tenancy.set_tenant('globex');                     -- by slug
SELECT tenancy.current_tenant_text();
COMMIT;
-- Malformed text keys.
SET tenancy.tenant_id = ' leading';
SET tenancy.tenant_id = 'trailing ';
SET tenancy.tenant_id = E'tab\there';
SELECT set_config('tenancy.tenant_id', repeat('x', 256), false);
SELECT length(set_config('tenancy.tenant_id', repeat('x', 255), false));
SELECT tenancy.current_tenant_bigint();
RESET tenancy.tenant_id;

\c contrib_regression
DROP DATABASE tenancy_bigint;
DROP DATABASE tenancy_text;

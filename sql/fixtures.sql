-- The tenants fixture (test/fixtures/tenants.sql): acme, globex and initech
-- with the documented keys, for each key type.
CREATE EXTENSION tenancy;
\ir ../test/fixtures/tenants.sql
SELECT :fixture_tenants AS created, :'acme' AS acme, :'globex' AS globex, :'initech' AS initech;
SELECT slug, name, id FROM tenancy.tenants ORDER BY slug;
DROP EXTENSION tenancy;
SET tenancy.tenant_type = 'bigint';
CREATE EXTENSION tenancy;
\ir ../test/fixtures/tenants.sql
SELECT slug, id FROM tenancy.tenants ORDER BY slug;
DROP EXTENSION tenancy;
SET tenancy.tenant_type = 'text';
CREATE EXTENSION tenancy;
\ir ../test/fixtures/tenants.sql
SELECT slug, id FROM tenancy.tenants ORDER BY slug;
DROP EXTENSION tenancy;
RESET tenancy.tenant_type;

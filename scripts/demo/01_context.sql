-- Tenant registry and tenant context
CREATE EXTENSION tenancy;
SELECT tenancy.create_tenant('acme', 'Acme Corp', 'aaaaaaaa-0000-4000-8000-000000000001') AS acme,
       tenancy.create_tenant('globex', 'Globex', 'bbbbbbbb-0000-4000-8000-000000000002') AS globex;
SELECT id, slug, name, status FROM tenancy.tenants ORDER BY slug;

-- Nothing set: the current tenant is NULL (fail closed), never an error.
SELECT tenancy.current_tenant() AS current_tenant;

-- set_tenant() is transaction-local: gone at COMMIT.
BEGIN;
SELECT tenancy.set_tenant('acme') AS set_tenant;
SELECT tenancy.current_tenant() AS inside_transaction;
COMMIT;
SELECT tenancy.current_tenant() AS after_commit;

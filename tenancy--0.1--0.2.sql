-- tenancy--0.1--0.2.sql: upgrade from the released 0.1 to 0.2 (unreleased,
-- editable until 0.2 is released).  Every change to the SQL sources
-- (src/*.sql) since v0.1 is written here as well, so that ALTER EXTENSION
-- tenancy UPDATE gives what a fresh install of 0.2 gives (test/upgrade.sh
-- compares the two).  Read the database's key type from the registry
-- (pg_attribute of tenancy.tenants.id), never from tenancy.tenant_type.

\echo Use "ALTER EXTENSION tenancy UPDATE TO '0.2'" to load this file. \quit

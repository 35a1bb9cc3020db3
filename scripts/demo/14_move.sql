-- 14. Last: move one tenant to a database of its own (same cluster), online
-- The single database is multi-tenant now and the legacy path is gone; a
-- tenant that needs isolation (residency, a noisy neighbour) moves out.
-- Replica identity first: the tenant column must be in it on every table
-- and partition (the contract phase's (tenant, ...) unique indexes serve).
CREATE EXTENSION IF NOT EXISTS dblink;
SELECT relation, covered, fix FROM tenancy.move_replica_identity();
SELECT fix FROM tenancy.move_replica_identity() WHERE NOT covered \gexec
CREATE DATABASE demo_tenant_home;
-- The plan, previewed: nothing runs.
SELECT step, phase, side, left(sql, 110) AS sql FROM tenancy.move_plan(
    (SELECT slug FROM tenancy.tenants WHERE NOT is_implicit ORDER BY slug LIMIT 1), 'demo-home');
SELECT slug AS moving FROM tenancy.tenants WHERE NOT is_implicit ORDER BY slug LIMIT 1 \gset
SELECT format('host=%s port=%s dbname=demo_tenant_home', current_setting('unix_socket_directories'),
              current_setting('port')) AS target \gset
CALL tenancy.move_start(:'moving', 'demo-home', :'target');
SELECT relation, sync_state, source_rows, target_rows FROM tenancy.move_wait(:'moving');
CALL tenancy.move_cutover(:'moving');
SELECT slug, home, state, refused_for, jsonb_pretty(last_check) AS verified FROM tenancy.moves;
-- At the source the tenant is refused now, with its new home in the hint.
\set ON_ERROR_STOP off
BEGIN;
SELECT tenancy.set_tenant(:'moving');
ROLLBACK;
\set ON_ERROR_STOP on

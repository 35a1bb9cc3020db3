-- Retiring the legacy path (issue 18): deprecate a legacy role bound to the
-- implicit tenant, count its transactions, retire it once it has stopped
-- (refused earlier unless forced), and undo each step.  The server-log
-- warnings and their rate: test/deprecation.sh.
CREATE EXTENSION tenancy;
\set SHOW_CONTEXT never
\set VERBOSITY terse
\set ON_ERROR_ROLLBACK on
SELECT tenancy.create_tenant('dp-old', 'Single tenant', 'aaaaaaaa-0000-0000-0000-0000000000d1') IS NOT NULL AS created;
SELECT tenancy.create_tenant('dp-new', 'Other', 'bbbbbbbb-0000-0000-0000-0000000000d2') IS NOT NULL AS created;
SELECT tenancy.set_implicit_tenant('dp-old') IS NOT NULL AS implicit;
CREATE ROLE dp_legacy LOGIN;
CREATE ROLE dp_legacy2 LOGIN;
CREATE ROLE dp_tenant LOGIN;
CREATE ROLE dp_app LOGIN;
CREATE ROLE "dp ""le;gacy$$" LOGIN;
CREATE SCHEMA "dp ""s;$$";
CREATE TABLE "dp ""s;$$".accounts (id int PRIMARY KEY, body text);
CREATE TABLE dp_orders (id int PRIMARY KEY, account_id int REFERENCES "dp ""s;$$".accounts, body text);
CREATE TABLE dp_notes (id int PRIMARY KEY, account_id int REFERENCES "dp ""s;$$".accounts, body text);
INSERT INTO "dp ""s;$$".accounts VALUES (1, 'first');
GRANT USAGE ON SCHEMA "dp ""s;$$" TO dp_legacy, dp_app;
GRANT SELECT, INSERT ON "dp ""s;$$".accounts, dp_orders, dp_notes TO dp_legacy, dp_app;
SELECT tenancy.add_tenant_column('"dp ""s;$$".accounts', fill_existing => true) IS NOT NULL AS added;
SELECT tenancy.add_tenant_column('dp_orders') IS NOT NULL AS added;
SELECT tenancy.add_tenant_column('dp_notes') IS NOT NULL AS added;
SELECT tenancy.derive_tenant('dp_orders', via => 'dp_orders_account_id_fkey') IS NOT NULL AS derived;
SELECT tenancy.derive_tenant('dp_notes', via => 'dp_notes_account_id_fkey') IS NOT NULL AS derived;
SELECT tenancy.bind_role('dp_legacy') IS NOT NULL AS bound;
SELECT tenancy.bind_role('dp_tenant', 'dp-new') IS NOT NULL AS bound;

-- Only a role bound to the implicit tenant is a legacy role.
SELECT tenancy.deprecate_role_sql(NULL);
SELECT tenancy.deprecate_role('dp_app');
SELECT tenancy.deprecate_role('dp_tenant');
SELECT tenancy.deprecate_role('no_such_role');
SELECT count(*) AS deprecations FROM tenancy.role_deprecations;

-- Preview, then deprecate; a second call does nothing.
SELECT tenancy.deprecate_role_sql('dp_legacy');
SELECT tenancy.deprecate_role('dp_legacy');
SELECT tenancy.deprecate_role('dp_legacy');
SELECT tenancy.deprecate_role_sql('dp_legacy') = '' AS nothing_to_preview;
SELECT step, sql, undo_sql, undone_at IS NULL AS active FROM tenancy.contract_log
 WHERE relation = 'tenancy.role_deprecations'::regclass ORDER BY id;
SELECT role, tenant, deprecated_by, transactions, warnings, last_run, retired_at, retirable,
       retire_after, watched_since IS NOT NULL AS watched
  FROM tenancy.deprecated_roles;

-- Retiring is refused before the role has been watched for tenancy.retire_after.
SELECT tenancy.retire_role_sql('dp_legacy');
SELECT tenancy.retire_role('dp_legacy');
\set VERBOSITY sqlstate
SELECT tenancy.retire_role('dp_legacy');
\set VERBOSITY terse
SELECT errcode, message, detail LIKE 'It has not run since % ago; tenancy.retire_after is @ 168 hours.' AS detail_ok
  FROM tenancy.retire_refusal('dp_legacy');

-- The legacy client runs unchanged: no warning reaches it, whatever its
-- client_min_messages.
\c - dp_legacy
SET client_min_messages = log;
SELECT tenancy.current_tenant_text() AS bound_tenant;
INSERT INTO "dp ""s;$$".accounts (id, body) VALUES (2, 'legacy write');
INSERT INTO dp_orders (id, account_id, body) VALUES (1, 2, 'derived');
BEGIN;
SELECT count(*) AS accounts FROM "dp ""s;$$".accounts;
ROLLBACK;
RESET client_min_messages;
\c - postgres
-- Seven transactions, each counted: the login's, SET, three statements,
-- BEGIN ... ROLLBACK (aborted), RESET; the one warning went to the server
-- log (tenancy.deprecation_warning_interval is a minute).
SELECT role, transactions, warnings, last_application_name, last_run > deprecated_at AS ran,
       last_warning IS NOT NULL AS warned, retirable
  FROM tenancy.deprecated_roles;
-- Another role's transactions are not counted.
\c - dp_app
SELECT 1 AS app;
\c - postgres
SELECT role, transactions FROM tenancy.deprecated_roles;
SELECT account_id, tenant_id FROM dp_orders ORDER BY id;

-- It ran recently: refused (55006), with the time and its application.
SELECT tenancy.retire_role('dp_legacy');
\set VERBOSITY sqlstate
SELECT tenancy.retire_role('dp_legacy');
\set VERBOSITY terse
SELECT errcode, message,
       detail LIKE 'Its last transaction was at % ago) from application_name "pg_regress/deprecation"; tenancy.retire_after is @ 168 hours.' AS detail_ok
  FROM tenancy.retire_refusal('dp_legacy');
SELECT tenancy.retire_role('dp_legacy', keep_derived => ARRAY['dp_orders', '"dp ""s;$$".accounts']::regclass[]);
SELECT tenancy.retire_role('dp_legacy', force => NULL);
SELECT tenancy.retire_role('dp_legacy', lock_timeout => '0');
SELECT tenancy.retire_role('dp_app');
SELECT retired_at IS NULL AS not_retired FROM tenancy.role_deprecations;

-- Undo the deprecation, then deprecate again.
SELECT tenancy.undeprecate_role('dp_legacy');
SELECT tenancy.undeprecate_role('dp_legacy');
SELECT count(*) AS deprecations FROM tenancy.role_deprecations;
SELECT step, undone_at IS NULL AS active FROM tenancy.contract_log
 WHERE relation = 'tenancy.role_deprecations'::regclass ORDER BY id;
SELECT tenancy.deprecate_role('dp_legacy') IS NOT NULL AS deprecated_again;

-- While another role is still bound to the implicit tenant, retiring one
-- leaves the tables' defaults alone.
SELECT tenancy.bind_role('dp_legacy2') IS NOT NULL AS bound;
SELECT relation, step, sql FROM tenancy.retire_role_steps('dp_legacy');
SELECT tenancy.unbind_role('dp_legacy2') IS NOT NULL AS unbound;

-- Quiet long enough (tenancy.retire_after = 0 here): the preview, then the
-- retirement, keeping the derivation of dp_orders.
SET tenancy.retire_after = 0;
SELECT role, retirable FROM tenancy.deprecated_roles;
SELECT tenancy.retire_role_sql('dp_legacy', keep_derived => '{dp_orders}');
SELECT tenancy.retire_role('dp_legacy', keep_derived => '{dp_orders}');
SELECT tenancy.retire_role('dp_legacy');
SELECT tenancy.retire_role_sql('dp_legacy') = '' AS nothing_to_preview;
SELECT role, retired_by, retire_forced, retirable FROM tenancy.deprecated_roles;
SELECT count(*) AS bindings FROM tenancy.role_bindings WHERE role = 'dp_legacy'::regrole;
SELECT unnest(s.setconfig) AS role_settings FROM pg_db_role_setting s
 WHERE s.setrole = 'dp_legacy'::regrole AND s.setdatabase = (SELECT oid FROM pg_database WHERE datname = current_database())
 ORDER BY 1;
SELECT c.relname, pg_get_expr(d.adbin, d.adrelid) AS tenant_default
  FROM pg_attrdef d JOIN pg_class c ON c.oid = d.adrelid
  JOIN pg_attribute a ON a.attrelid = d.adrelid AND a.attnum = d.adnum AND a.attname = 'tenant_id'
 WHERE c.relname IN ('accounts', 'dp_orders', 'dp_notes') ORDER BY 1;
SELECT relation FROM tenancy.derived_tenants ORDER BY 1;
SELECT relation, step, undone_at IS NULL AS active FROM tenancy.contract_log
 WHERE step LIKE 'retire%' ORDER BY id;
-- Its binding cannot come back while it is retired.
SELECT tenancy.bind_role('dp_legacy');
SELECT tenancy.undeprecate_role('dp_legacy');

-- The retired role's sessions: no tenant, and reading one is an error; a
-- write without a tenant fails; naming a tenant (the new path) works.
\c - dp_legacy
SELECT tenancy.current_tenant_text();
INSERT INTO "dp ""s;$$".accounts (id, body) VALUES (3, 'no tenant');
BEGIN;
SELECT tenancy.set_tenant('dp-old') IS NOT NULL AS set;
INSERT INTO "dp ""s;$$".accounts (id, body) VALUES (3, 'new path');
COMMIT;
\c - dp_app
-- Another client that sets no tenant: its write fails too (the default gave
-- the implicit tenant before); the derived table the DBA kept still
-- derives it.
INSERT INTO "dp ""s;$$".accounts (id, body) VALUES (4, 'no tenant');
INSERT INTO dp_notes (id, account_id, body) VALUES (4, 1, 'no tenant');
INSERT INTO dp_orders (id, account_id, body) VALUES (4, 1, 'derived');
\c - postgres
SELECT id, tenant_id FROM "dp ""s;$$".accounts ORDER BY id;
SELECT id, tenant_id FROM dp_orders ORDER BY id;
SELECT count(*) AS notes FROM dp_notes;

-- Undo: binding, settings, defaults and derivation come back.
SELECT tenancy.unretire_role('dp_legacy');
SELECT tenancy.unretire_role('dp_legacy');
SELECT role, tenant FROM tenancy.role_bindings ORDER BY role::text;
SELECT unnest(s.setconfig) AS role_settings FROM pg_db_role_setting s
 WHERE s.setrole = 'dp_legacy'::regrole AND s.setdatabase = (SELECT oid FROM pg_database WHERE datname = current_database())
 ORDER BY 1;
SELECT c.relname, pg_get_expr(d.adbin, d.adrelid) AS tenant_default
  FROM pg_attrdef d JOIN pg_class c ON c.oid = d.adrelid
  JOIN pg_attribute a ON a.attrelid = d.adrelid AND a.attnum = d.adnum AND a.attname = 'tenant_id'
 WHERE c.relname IN ('accounts', 'dp_orders', 'dp_notes') ORDER BY 1;
SELECT relation, source_kind, source FROM tenancy.derived_tenants ORDER BY 1;
SELECT role, retired_at, retire_log FROM tenancy.role_deprecations;
SELECT relation, step, undone_at IS NULL AS active FROM tenancy.contract_log
 WHERE step LIKE 'retire%' ORDER BY id;
\c - dp_legacy
SELECT tenancy.current_tenant_text() AS bound_again;
INSERT INTO dp_notes (id, account_id, body) VALUES (1, 1, 'derived again');
\c - postgres
SELECT id, tenant_id FROM dp_notes ORDER BY id;

-- Forced while it still runs: a warning, and recorded as forced.
SELECT tenancy.retire_role('dp_legacy', force => true) IS NOT NULL AS retired;
SELECT role, retire_forced FROM tenancy.deprecated_roles;
SELECT tenancy.unretire_role('dp_legacy') IS NOT NULL AS unretired;

-- Hostile names: quoted in every statement and comment.
SELECT tenancy.bind_role('"dp ""le;gacy$$"') IS NOT NULL AS bound;
SELECT tenancy.deprecate_role_sql('"dp ""le;gacy$$"');
SELECT tenancy.deprecate_role('"dp ""le;gacy$$"') IS NOT NULL AS deprecated;
SELECT sql, undo_sql FROM tenancy.retire_role_steps('"dp ""le;gacy$$"') WHERE relation = 'tenancy.role_bindings'::regclass;
SELECT tenancy.retire_role('"dp ""le;gacy$$"', force => true) IS NOT NULL AS retired;
SELECT tenancy.unretire_role('"dp ""le;gacy$$"') IS NOT NULL AS unretired;
SELECT role, tenant FROM tenancy.role_bindings WHERE role = '"dp ""le;gacy$$"'::regrole;

-- Not for PUBLIC.
SELECT has_function_privilege('dp_app', 'tenancy.retire_role(regrole, regclass[], boolean, interval, integer)', 'EXECUTE') AS app_retires,
       has_table_privilege('dp_app', 'tenancy.deprecated_roles', 'SELECT') AS app_reads,
       has_table_privilege('pg_read_all_stats', 'tenancy.deprecated_roles', 'SELECT') AS monitor_reads;

RESET tenancy.retire_after;
DROP EXTENSION tenancy CASCADE;
DROP TABLE dp_orders, dp_notes, "dp ""s;$$".accounts;
DROP SCHEMA "dp ""s;$$";
DROP ROLE dp_legacy, dp_legacy2, dp_tenant, dp_app, "dp ""le;gacy$$";

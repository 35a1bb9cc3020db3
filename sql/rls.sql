-- Row-level security: the policy generator, its errors, modes, partitions,
-- and what disable_rls() restores.
CREATE EXTENSION tenancy;
\set SHOW_CONTEXT never
SELECT tenancy.create_tenant('acme', 'Acme', '00000000-0000-0000-0000-0000000000a1') IS NOT NULL AS created;
SELECT tenancy.create_tenant('bolt', 'Bolt', '00000000-0000-0000-0000-0000000000b2') IS NOT NULL AS created;
CREATE ROLE rls_owner;
CREATE ROLE rls_other;
CREATE ROLE rls_app;
GRANT CREATE ON SCHEMA public TO rls_owner;

-- Identifiers that need quoting: schema, table and column.
CREATE SCHEMA "Sales Dept";
GRANT USAGE, CREATE ON SCHEMA "Sales Dept" TO rls_owner;
GRANT USAGE ON SCHEMA "Sales Dept" TO rls_other;
SET ROLE rls_owner;
CREATE TABLE "Sales Dept"."Order ""Lines""" (
    id int PRIMARY KEY,
    "Tenant Key" uuid,
    note text
);
CREATE INDEX ON "Sales Dept"."Order ""Lines""" ("Tenant Key");
CREATE TABLE plain (id int, tenant_id uuid, note text);
RESET ROLE;

-- The preview: enforce mode is a plain equality, no OR and no subquery.
SELECT tenancy.policy_sql('"Sales Dept"."Order ""Lines"""', 'Tenant Key');
SELECT tenancy.policy_sql('plain', roles => ARRAY['rls_app']::regrole[], mode => 'migrating');
-- A preview changes nothing.
SELECT count(*) AS policies FROM pg_policy WHERE polname = 'tenancy_policy';
SELECT count(*) AS recorded FROM tenancy.rls_tables;

-- Errors change nothing.
\set VERBOSITY sqlstate
SELECT tenancy.enable_rls('plain', 'no_such_column');
CREATE TABLE wrong_type (id int, tenant_id bigint);
ALTER TABLE wrong_type OWNER TO rls_owner;
SELECT tenancy.enable_rls('wrong_type');
CREATE VIEW plain_view AS SELECT * FROM plain;
ALTER VIEW plain_view OWNER TO rls_owner;
SELECT tenancy.enable_rls('plain_view');
SELECT tenancy.enable_rls('plain', mode => 'strict');
SELECT tenancy.enable_rls('plain', mode => NULL);
SELECT tenancy.enable_rls(NULL);
SELECT tenancy.enable_rls('plain', roles => ARRAY[NULL]::regrole[]);
SET ROLE rls_other;
SELECT tenancy.enable_rls('plain');
SELECT tenancy.policy_sql('plain');
-- The bookkeeping helper checks ownership itself.
SELECT tenancy.rls_record('register', 'plain', 'plain', 'tenant_id', 'enforce');
RESET ROLE;
\set VERBOSITY default
SELECT tenancy.enable_rls('plain', 'no_such_column');
SELECT tenancy.enable_rls('wrong_type');
SELECT tenancy.enable_rls('plain_view');
SELECT tenancy.enable_rls('plain', mode => 'strict');
SELECT count(*) AS policies FROM pg_policy WHERE polname = 'tenancy_policy';
SELECT count(*) AS recorded FROM tenancy.rls_tables;
SELECT count(*) AS registered FROM tenancy.tables;
SELECT relrowsecurity, relforcerowsecurity FROM pg_class WHERE oid = 'plain'::regclass;

-- enable_rls() as the owner: NOTICEs for what would still leak or be slow,
-- then the DDL it ran.
SET ROLE rls_owner;
SELECT tenancy.enable_rls('"Sales Dept"."Order ""Lines"""', 'Tenant Key');
RESET ROLE;
SELECT c.relname, c.relrowsecurity, c.relforcerowsecurity, p.polname, p.polpermissive,
       p.polroles = '{0}' AS to_public, p.polcmd,
       pg_get_expr(p.polqual, p.polrelid) AS using_expr,
       pg_get_expr(p.polwithcheck, p.polrelid) AS check_expr
  FROM pg_policy p JOIN pg_class c ON c.oid = p.polrelid ORDER BY c.relname;
SELECT relation, column_name, stage FROM tenancy.tables;
SELECT relation, root, column_name, mode, prior_rls, prior_force, prior_stage FROM tenancy.rls_tables;
-- A second call is refused.
SELECT tenancy.enable_rls('"Sales Dept"."Order ""Lines"""', 'Tenant Key');

-- set_mode: one transaction, ALTER POLICY (the policy never goes away).
SELECT tenancy.set_mode_sql('"Sales Dept"."Order ""Lines"""', 'migrating');
SET ROLE rls_owner;
SELECT tenancy.set_mode('"Sales Dept"."Order ""Lines"""', 'migrating');
RESET ROLE;
SELECT pg_get_expr(polqual, polrelid) AS using_expr, pg_get_expr(polwithcheck, polrelid) AS check_expr
  FROM pg_policy WHERE polrelid = '"Sales Dept"."Order ""Lines"""'::regclass ORDER BY polname;
SELECT stage FROM tenancy.tables WHERE relation = '"Sales Dept"."Order ""Lines"""'::regclass;
SELECT tenancy.set_mode('"Sales Dept"."Order ""Lines"""', 'shadow') IS NOT NULL AS switched;
SELECT pg_get_expr(polqual, polrelid) AS using_expr, pg_get_expr(polwithcheck, polrelid) AS check_expr
  FROM pg_policy WHERE polrelid = '"Sales Dept"."Order ""Lines"""'::regclass ORDER BY polname;
SELECT tenancy.set_mode('"Sales Dept"."Order ""Lines"""', 'enforce') IS NOT NULL AS switched;
SELECT stage FROM tenancy.tables WHERE relation = '"Sales Dept"."Order ""Lines"""'::regclass;
-- set_mode errors change nothing.
SELECT tenancy.set_mode('"Sales Dept"."Order ""Lines"""', 'off');
SELECT tenancy.set_mode('plain', 'enforce');
SET ROLE rls_other;
SELECT tenancy.set_mode('"Sales Dept"."Order ""Lines"""', 'migrating');
RESET ROLE;
SELECT stage FROM tenancy.tables WHERE relation = '"Sales Dept"."Order ""Lines"""'::regclass;

-- disable_rls() removes our policy, never a policy the user wrote, and
-- restores the earlier state: here row security was already enabled (not
-- forced) with a user policy, and the table was registered at 'backfill'.
INSERT INTO tenancy.tables (relation, stage) VALUES ('plain', 'backfill');
ALTER TABLE plain OWNER TO rls_owner;
SET ROLE rls_owner;
ALTER TABLE plain ENABLE ROW LEVEL SECURITY;
CREATE POLICY mine ON plain FOR SELECT USING (note IS NOT NULL);
SELECT tenancy.enable_rls('plain', roles => ARRAY['rls_app', 'rls_other']::regrole[]) IS NOT NULL AS enabled;
RESET ROLE;
SELECT polname, polroles::regrole[] FROM pg_policy WHERE polrelid = 'plain'::regclass ORDER BY polname;
SELECT relrowsecurity, relforcerowsecurity FROM pg_class WHERE oid = 'plain'::regclass;
SELECT stage FROM tenancy.tables WHERE relation = 'plain'::regclass;
SELECT * FROM tenancy.rls_advisories('plain') WHERE kind <> 'bypassrls_role';
SELECT tenancy.disable_rls_sql('plain');
SET ROLE rls_owner;
SELECT tenancy.disable_rls('plain') IS NOT NULL AS disabled;
RESET ROLE;
SELECT polname FROM pg_policy WHERE polrelid = 'plain'::regclass;
SELECT relrowsecurity, relforcerowsecurity FROM pg_class WHERE oid = 'plain'::regclass;
SELECT stage FROM tenancy.tables WHERE relation = 'plain'::regclass;
SELECT count(*) AS recorded FROM tenancy.rls_tables WHERE relation = 'plain'::regclass;
SELECT tenancy.disable_rls('plain');

-- A table enable_rls() registered is unregistered again.
SELECT tenancy.disable_rls('"Sales Dept"."Order ""Lines"""') IS NOT NULL AS disabled;
SELECT relrowsecurity, relforcerowsecurity FROM pg_class WHERE oid = '"Sales Dept"."Order ""Lines"""'::regclass;
SELECT count(*) AS registered FROM tenancy.tables WHERE relation = '"Sales Dept"."Order ""Lines"""'::regclass;

-- Running the preview with \gexec is equivalent to enable_rls().
SELECT tenancy.policy_sql('"Sales Dept"."Order ""Lines"""', 'Tenant Key', mode => 'migrating') \gexec
SELECT relation, root, column_name, mode, prior_rls, prior_force, prior_stage FROM tenancy.rls_tables;
SELECT stage FROM tenancy.tables WHERE relation = '"Sales Dept"."Order ""Lines"""'::regclass;
SELECT pg_get_expr(polqual, polrelid) AS using_expr FROM pg_policy
 WHERE polrelid = '"Sales Dept"."Order ""Lines"""'::regclass ORDER BY polname;
SELECT tenancy.disable_rls_sql('"Sales Dept"."Order ""Lines"""') \gexec
SELECT count(*) AS policies FROM pg_policy WHERE polname = 'tenancy_policy';
SELECT count(*) AS recorded FROM tenancy.rls_tables;

-- Key types: the accessor matches the column type.
CREATE TABLE text_keyed (tenant_id text);
SET tenancy.tenant_type = 'text';
SELECT tenancy.policy_sql('text_keyed');
SET tenancy.tenant_type = 'bigint';
CREATE TABLE bigint_keyed (org bigint);
SELECT tenancy.policy_sql('bigint_keyed', 'org');
SELECT tenancy.policy_sql('text_keyed');
RESET tenancy.tenant_type;

-- Partitioned tables: the parent and every partition (direct access to a
-- partition is covered); new partitions are covered by an event trigger,
-- whether created as PARTITION OF or attached.
SET ROLE rls_owner;
CREATE TABLE events (id int, tenant_id uuid, at date) PARTITION BY RANGE (at);
CREATE TABLE events_2024 PARTITION OF events FOR VALUES FROM ('2024-01-01') TO ('2025-01-01')
    PARTITION BY RANGE (id);
CREATE TABLE events_2024_low PARTITION OF events_2024 FOR VALUES FROM (0) TO (1000);
CREATE INDEX ON events (tenant_id);
SELECT tenancy.enable_rls('events', mode => 'migrating');
CREATE TABLE events_2025 PARTITION OF events FOR VALUES FROM ('2025-01-01') TO ('2026-01-01');
CREATE TABLE events_2026 (id int, tenant_id uuid, at date);
ALTER TABLE events ATTACH PARTITION events_2026 FOR VALUES FROM ('2026-01-01') TO ('2027-01-01');
CREATE TABLE events_2024_high PARTITION OF events_2024 FOR VALUES FROM (1000) TO (2000);
RESET ROLE;
SELECT c.relname, c.relrowsecurity, c.relforcerowsecurity,
       pg_get_expr(p.polqual, p.polrelid) AS using_expr
  FROM pg_class c LEFT JOIN pg_policy p ON p.polrelid = c.oid AND p.polname = 'tenancy_policy'
 WHERE c.relname LIKE 'events%' AND c.relkind IN ('r', 'p') ORDER BY c.relname;
SELECT relation, root, mode FROM tenancy.rls_tables ORDER BY relation::text;
-- A partition follows its root.
SELECT tenancy.set_mode('events_2025', 'enforce');
SELECT tenancy.disable_rls('events_2025');
SELECT tenancy.set_mode('events', 'enforce') IS NOT NULL AS switched;
SELECT c.relname, pg_get_expr(p.polqual, p.polrelid) AS using_expr
  FROM pg_class c JOIN pg_policy p ON p.polrelid = c.oid ORDER BY c.relname;
-- Direct access to a partition is filtered.
INSERT INTO events VALUES (1, '00000000-0000-0000-0000-0000000000a1', '2025-02-01'),
                          (2, '00000000-0000-0000-0000-0000000000b2', '2025-03-01');
GRANT SELECT ON events, events_2025 TO rls_app;
SET ROLE rls_app;
BEGIN;
SELECT tenancy.set_tenant('acme') IS NOT NULL AS set;
SELECT id FROM events;
SELECT id FROM events_2025;
COMMIT;
RESET ROLE;
-- Dropping a partition forgets it.
DROP TABLE events_2026;
SELECT count(*) AS recorded FROM tenancy.rls_tables WHERE root = 'events'::regclass;
SELECT tenancy.disable_rls('events') IS NOT NULL AS disabled;
SELECT count(*) AS policies FROM pg_policy WHERE polname = 'tenancy_policy';
SELECT count(*) FILTER (WHERE relrowsecurity) AS rls, count(*) FILTER (WHERE relforcerowsecurity) AS forced
  FROM pg_class WHERE relname LIKE 'events%';
-- A table created later is not touched.
CREATE TABLE events_2027 PARTITION OF events FOR VALUES FROM ('2027-01-01') TO ('2028-01-01');
SELECT count(*) AS policies FROM pg_policy WHERE polname = 'tenancy_policy';

-- Advisories: index, views, SECURITY DEFINER code, BYPASSRLS roles, unique
-- constraints and foreign keys without the tenant column, other policies.
CREATE ROLE rls_bypass BYPASSRLS;
CREATE TABLE accounts (id int PRIMARY KEY, tenant_id uuid, UNIQUE (tenant_id, id));
CREATE TABLE invoices (id int PRIMARY KEY, tenant_id uuid, account_id int REFERENCES accounts (id),
                       number text UNIQUE);
CREATE VIEW invoices_v AS SELECT * FROM invoices;
CREATE VIEW invoices_vv AS SELECT * FROM invoices_v;
CREATE VIEW invoices_safe WITH (security_invoker = true) AS SELECT * FROM invoices;
CREATE MATERIALIZED VIEW invoices_mv AS SELECT * FROM invoices;
CREATE FUNCTION count_invoices() RETURNS bigint SECURITY DEFINER LANGUAGE sql
    AS 'SELECT count(*) FROM public.invoices';
CREATE FUNCTION count_invoices_atomic() RETURNS bigint SECURITY DEFINER LANGUAGE sql
    BEGIN ATOMIC SELECT count(*) FROM invoices; END;
CREATE FUNCTION invoices_trg() RETURNS trigger SECURITY DEFINER LANGUAGE plpgsql
    AS 'BEGIN RETURN NEW; END';
CREATE TRIGGER stamp BEFORE INSERT ON invoices FOR EACH ROW EXECUTE FUNCTION invoices_trg();
GRANT SELECT ON invoices TO rls_bypass;
ALTER VIEW invoices_v OWNER TO rls_owner;
ALTER VIEW invoices_vv OWNER TO rls_bypass;
ALTER MATERIALIZED VIEW invoices_mv OWNER TO rls_owner;
ALTER FUNCTION count_invoices() OWNER TO rls_owner;
ALTER FUNCTION count_invoices_atomic() OWNER TO rls_bypass;
ALTER FUNCTION invoices_trg() OWNER TO rls_owner;
CREATE POLICY open_invoices ON invoices USING (true);
SELECT * FROM tenancy.rls_advisories('invoices') WHERE kind <> 'bypassrls_role' OR object LIKE 'rls%';
SELECT kind, object FROM tenancy.rls_advisories('accounts') WHERE kind <> 'bypassrls_role';
SELECT tenancy.rls_advisories('no_such_table');

DROP FUNCTION count_invoices(), count_invoices_atomic();
DROP TABLE invoices, accounts CASCADE;
DROP FUNCTION invoices_trg();
DROP VIEW plain_view;
DROP TABLE plain, wrong_type, text_keyed, bigint_keyed, events CASCADE;
DROP SCHEMA "Sales Dept" CASCADE;
DROP EXTENSION tenancy CASCADE;
REVOKE ALL ON SCHEMA public FROM rls_owner;
DROP OWNED BY rls_other;
DROP ROLE rls_owner, rls_other, rls_app, rls_bypass;

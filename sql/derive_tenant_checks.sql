-- Derived tenants (issue 14, item 7): verify() and shadow mode count the
-- rows whose stored tenant disagrees with their derivation; hostile names
-- are quoted everywhere the feature writes SQL; a partitioned table's
-- partitions follow its derivation.
CREATE EXTENSION tenancy;
\set SHOW_CONTEXT never
\set VERBOSITY terse
\set ON_ERROR_ROLLBACK on
SELECT tenancy.create_tenant('acme', 'Acme', '00000000-0000-0000-0000-0000000000a1') IS NOT NULL AS created;
SELECT tenancy.create_tenant('bolt', 'Bolt', '00000000-0000-0000-0000-0000000000b2') IS NOT NULL AS created;
SELECT tenancy.set_implicit_tenant('acme') IS NOT NULL AS implicit;
CREATE SCHEMA "Odd ""Schema";
CREATE TABLE "Odd ""Schema"."Shop; DROP" ("Shop Id" int PRIMARY KEY, "Tenant ""Key""" uuid);
CREATE TABLE "Odd ""Schema"."It'em" (id int PRIMARY KEY, "shop ref" int,
    CONSTRAINT "fk ""to"" shop" FOREIGN KEY ("shop ref") REFERENCES "Odd ""Schema"."Shop; DROP");
INSERT INTO "Odd ""Schema"."Shop; DROP" VALUES (1, '00000000-0000-0000-0000-0000000000a1'),
                                              (2, '00000000-0000-0000-0000-0000000000b2');
INSERT INTO tenancy.tables (relation, column_name) VALUES ('"Odd ""Schema"."Shop; DROP"', 'Tenant "Key"');
INSERT INTO "Odd ""Schema"."It'em" VALUES (10, 1), (11, 2), (12, 2);
SELECT tenancy.add_tenant_column('"Odd ""Schema"."It''em"', 'Tenant "Key"') IS NOT NULL AS added;
UPDATE "Odd ""Schema"."It'em" SET "Tenant ""Key""" = '00000000-0000-0000-0000-0000000000a1';  -- 11, 12 wrong
SELECT tenancy.derive_tenant_sql('"Odd ""Schema"."It''em"', via => 'fk "to" shop');
SELECT tenancy.derive_tenant('"Odd ""Schema"."It''em"', via => 'fk "to" shop') IS NOT NULL AS derived;
SELECT run_as, column_name, query FROM tenancy.derive_lookup('"Odd ""Schema"."It''em"');

-- verify(): the rows whose tenant is not their parent's.
SELECT check_name, status, rows_affected, detail, fix FROM tenancy.verify('"Odd ""Schema"."It''em"')
 WHERE check_name = 'derived_tenant_mismatch';
-- the suggested fix repairs them
UPDATE "Odd ""Schema"."It'em" t SET "Tenant ""Key""" = (SELECT p."Tenant ""Key""" FROM "Odd ""Schema"."Shop; DROP" p WHERE p."Shop Id" OPERATOR(pg_catalog.=) t."shop ref")
 WHERE t."Tenant ""Key""" <> (SELECT p."Tenant ""Key""" FROM "Odd ""Schema"."Shop; DROP" p WHERE p."Shop Id" OPERATOR(pg_catalog.=) t."shop ref");
SELECT check_name, status, rows_affected, detail FROM tenancy.verify('"Odd ""Schema"."It''em"')
 WHERE check_name = 'derived_tenant_mismatch';
-- tables without a derivation get no such row
SELECT count(*) AS rows_for_underived FROM tenancy.verify('"Odd ""Schema"."Shop; DROP"')
 WHERE check_name = 'derived_tenant_mismatch';

-- New rows: the legacy path (no tenant) takes the parent's tenant.
INSERT INTO "Odd ""Schema"."It'em" (id, "shop ref") VALUES (13, 2);
SELECT id, "Tenant ""Key""" FROM "Odd ""Schema"."It'em" WHERE id = 13;

-- Shadow mode refuses nothing, but counts a row written under another
-- tenant than its derivation as a write enforce mode would refuse; a
-- derived legacy write is no divergence.
CREATE ROLE derive_shadow_app;
GRANT USAGE ON SCHEMA "Odd ""Schema" TO derive_shadow_app;
GRANT SELECT, INSERT ON "Odd ""Schema"."It'em" TO derive_shadow_app;
GRANT SELECT ON "Odd ""Schema"."Shop; DROP" TO derive_shadow_app;
SET client_min_messages = warning;
SELECT tenancy.enable_rls('"Odd ""Schema"."It''em"', column_name => 'Tenant "Key"', mode => 'shadow') IS NOT NULL AS enabled;
RESET client_min_messages;
SELECT polname, polcmd, pg_get_expr(polwithcheck, polrelid) AS check_expr FROM pg_policy
 WHERE polrelid = '"Odd ""Schema"."It''em"'::regclass ORDER BY polname;
SELECT tenancy.reset_shadow_stats();
SET ROLE derive_shadow_app;
BEGIN;
SELECT tenancy.set_tenant('acme') IS NOT NULL AS set;
INSERT INTO "Odd ""Schema"."It'em" (id, "shop ref") VALUES (14, 2);   -- bolt's row under acme
COMMIT;
INSERT INTO "Odd ""Schema"."It'em" (id, "shop ref") VALUES (15, 2);   -- legacy: derived
RESET ROLE;
SELECT relation, rows_checked, writes_refused FROM tenancy.shadow_stats
 WHERE relation = '"Odd ""Schema"."It''em"'::regclass;
SELECT id, "Tenant ""Key""" FROM "Odd ""Schema"."It'em" WHERE id IN (14, 15) ORDER BY id;
SELECT check_name, status, rows_affected FROM tenancy.verify('"Odd ""Schema"."It''em"')
 WHERE check_name = 'derived_tenant_mismatch';
-- In enforce mode the same write is refused.
SELECT tenancy.set_mode('"Odd ""Schema"."It''em"', 'enforce') IS NOT NULL AS switched;
SET ROLE derive_shadow_app;
BEGIN;
SELECT tenancy.set_tenant('acme') IS NOT NULL AS set;
INSERT INTO "Odd ""Schema"."It'em" (id, "shop ref") VALUES (16, 2);
COMMIT;
RESET ROLE;
-- rollback_table() undoes the derivation with the policy and the default.
SELECT tenancy.rollback_table_sql('"Odd ""Schema"."It''em"');
SELECT count(*) > 0 AS rolled_back FROM tenancy.rollback_table('"Odd ""Schema"."It''em"');
SELECT count(*) AS derive_triggers FROM pg_trigger WHERE tgrelid = '"Odd ""Schema"."It''em"'::regclass AND tgname = 'tenancy_derive_tenant';
SELECT count(*) AS policies FROM pg_policy WHERE polrelid = '"Odd ""Schema"."It''em"'::regclass;
SELECT tenancy.underive_tenant('"Odd ""Schema"."It''em"');

-- A partitioned table: the trigger on the parent is cloned on every
-- partition, present and future; the derivation is the parent's.
CREATE TABLE "Odd ""Schema".parted (shop int, at int, "Tenant ""Key""" uuid) PARTITION BY RANGE (at);
CREATE TABLE "Odd ""Schema".parted_1 PARTITION OF "Odd ""Schema".parted FOR VALUES FROM (0) TO (10);
SELECT tenancy.derive_tenant('"Odd ""Schema".parted',
       source => $$CASE t.shop WHEN 2 THEN '00000000-0000-0000-0000-0000000000b2'::uuid END$$,
       column_name => 'Tenant "Key"') IS NOT NULL AS derived;
CREATE TABLE "Odd ""Schema".parted_2 PARTITION OF "Odd ""Schema".parted FOR VALUES FROM (10) TO (20);
INSERT INTO "Odd ""Schema".parted VALUES (2, 1), (2, 11), (1, 12);
INSERT INTO "Odd ""Schema".parted_2 VALUES (2, 13);
SELECT tableoid::regclass, shop, at, "Tenant ""Key""" FROM "Odd ""Schema".parted ORDER BY at;
SELECT tenancy.derive_tenant('"Odd ""Schema".parted_1', source => 't.shop');
SELECT tenancy.underive_tenant('"Odd ""Schema".parted');
SELECT count(*) AS triggers_left FROM pg_trigger WHERE tgname = 'tenancy_derive_tenant';

DROP SCHEMA "Odd ""Schema" CASCADE;
DROP EXTENSION tenancy;
DROP ROLE derive_shadow_app;

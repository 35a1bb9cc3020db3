-- Hostile names: what every *_sql and *_plan function generates quotes each
-- name and literal.  Names with quotes, dollar-quote tags, semicolons,
-- backslashes, spaces, upper case, newlines and exactly 63 bytes go through
-- add_tenant_column, backfill, enforce_not_null, scope_constraints, the
-- policy functions, bind_role and the rollback; their output is executed as
-- psql's \gexec would.  A trap function records any call: nothing but the
-- intended DDL may run, and the rollback restores the catalog.
CREATE EXTENSION tenancy;
SELECT tenancy.create_tenant('acme', 'Acme', '11111111-1111-1111-1111-111111111111') IS NOT NULL AS created;
SELECT tenancy.set_implicit_tenant('acme');
CREATE SCHEMA hn_trap;
CREATE TABLE hn_trap.fired (what text);
CREATE FUNCTION hn_trap.x() RETURNS void LANGUAGE sql AS $$ INSERT INTO hn_trap.fired VALUES ('fired') $$;

-- A schema whose name closes a string literal, one with dollar-quote tags.
CREATE SCHEMA "';END IF;PERFORM hn_trap.x();IF 0=1 THEN RAISE'";
CREATE SCHEMA "Sch $tenancy$ $$ \ ;x";
CREATE TABLE "';END IF;PERFORM hn_trap.x();IF 0=1 THEN RAISE'"."Parent 'P' $tenancy$" (
    id       int GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    "Code;\" text CONSTRAINT "u $tenancy$ 'x';\" UNIQUE,
    slug     text
);
CREATE UNIQUE INDEX "Idx $tenancy$ ';\ x" ON "';END IF;PERFORM hn_trap.x();IF 0=1 THEN RAISE'"."Parent 'P' $tenancy$" (slug);
CREATE TABLE "';END IF;PERFORM hn_trap.x();IF 0=1 THEN RAISE'"."Child ""C""; \x" (
    id     int PRIMARY KEY,
    "P Id" int CONSTRAINT "';END IF;PERFORM hn_trap.x();IF 0=1 THEN RAISE'"
           REFERENCES "';END IF;PERFORM hn_trap.x();IF 0=1 THEN RAISE'"."Parent 'P' $tenancy$" (id)
);
-- 63-byte names: a table with two unique constraints, two foreign keys whose
-- names share their first 61 bytes.
CREATE TABLE "Sch $tenancy$ $$ \ ;x".t23456789012345678901234567890123456789012345678901234567890123 (
    id int PRIMARY KEY,
    a  int CONSTRAINT a234567890123456789012345678901234567890123456789012345678901_1 UNIQUE,
    b  int CONSTRAINT a234567890123456789012345678901234567890123456789012345678901_2 UNIQUE,
    p1 int CONSTRAINT f234567890123456789012345678901234567890123456789012345678901_1
           REFERENCES "';END IF;PERFORM hn_trap.x();IF 0=1 THEN RAISE'"."Parent 'P' $tenancy$" (id),
    p2 int CONSTRAINT f234567890123456789012345678901234567890123456789012345678901_2
           REFERENCES "';END IF;PERFORM hn_trap.x();IF 0=1 THEN RAISE'"."Parent 'P' $tenancy$" (id)
);
-- A newline in a name ends a -- comment.
CREATE TABLE "Sch $tenancy$ $$ \ ;x"."nl
SELECT hn_trap.x();--" (id int PRIMARY KEY);
INSERT INTO "';END IF;PERFORM hn_trap.x();IF 0=1 THEN RAISE'"."Parent 'P' $tenancy$" ("Code;\", slug)
    VALUES ('a', 'a'), ('b', 'b');
INSERT INTO "';END IF;PERFORM hn_trap.x();IF 0=1 THEN RAISE'"."Child ""C""; \x" VALUES (1, 1), (2, 2);
INSERT INTO "Sch $tenancy$ $$ \ ;x".t23456789012345678901234567890123456789012345678901234567890123 VALUES (1, 1, 1, 1, 2);
INSERT INTO "Sch $tenancy$ $$ \ ;x"."nl
SELECT hn_trap.x();--" VALUES (1);
CREATE TEMP TABLE hn_tables (rel regclass, col name);
INSERT INTO hn_tables VALUES
    ('"'';END IF;PERFORM hn_trap.x();IF 0=1 THEN RAISE''"."Parent ''P'' $tenancy$"', 'Tenant $x$ '';--'),
    ('"'';END IF;PERFORM hn_trap.x();IF 0=1 THEN RAISE''"."Child ""C""; \x"', 'Tenant $x$ '';--'),
    ('"Sch $tenancy$ $$ \ ;x".t23456789012345678901234567890123456789012345678901234567890123',
     'T23456789012345678901234567890123456789012345678901234567890123'),
    (E'"Sch $tenancy$ $$ \\ ;x"."nl\nSELECT hn_trap.x();--"', 'tenant_id');

-- add_tenant_column_sql(), executed, then add_tenant_column() registers.
SELECT tenancy.add_tenant_column_sql(rel, col) FROM hn_tables ORDER BY rel::text \gexec
SELECT tenancy.add_tenant_column(rel, col) FROM hn_tables ORDER BY rel::text;
SELECT count(*) AS fired FROM hn_trap.fired;
-- The backfill.
SELECT format('CALL tenancy.backfill(%L, tenant => %L)', rel, 'acme') FROM hn_tables ORDER BY rel::text \gexec
SELECT count(*) AS fired FROM hn_trap.fired;

-- The catalog before the contract phase.
CREATE TEMP TABLE hn_before AS
SELECT c.conrelid::regclass::text AS rel, c.conname::text AS name, pg_get_constraintdef(c.oid) AS def
  FROM pg_constraint c WHERE c.conrelid IN (SELECT rel FROM hn_tables)
UNION ALL
SELECT i.indrelid::regclass::text, ic.relname::text, pg_get_indexdef(i.indexrelid)
  FROM pg_index i JOIN pg_class ic ON ic.oid = i.indexrelid WHERE i.indrelid IN (SELECT rel FROM hn_tables)
UNION ALL
SELECT a.attrelid::regclass::text, a.attname::text, format('not null %s', a.attnotnull)
  FROM pg_attribute a WHERE a.attrelid IN (SELECT rel FROM hn_tables) AND a.attnum > 0
UNION ALL
SELECT c.oid::regclass::text, 'row security', format('%s %s', c.relrowsecurity, c.relforcerowsecurity)
  FROM pg_class c WHERE c.oid IN (SELECT rel FROM hn_tables);

-- enforce_not_null: the preview, executed on one table; the procedure on the others.
SELECT * FROM tenancy.enforce_not_null_sql('"Sch $tenancy$ $$ \ ;x".t23456789012345678901234567890123456789012345678901234567890123');
SELECT * FROM tenancy.enforce_not_null_sql('"Sch $tenancy$ $$ \ ;x".t23456789012345678901234567890123456789012345678901234567890123') \gexec
-- (The preview runs unrecorded: undo it, and let the procedure run and record it.)
ALTER TABLE "Sch $tenancy$ $$ \ ;x".t23456789012345678901234567890123456789012345678901234567890123
    ALTER COLUMN "T23456789012345678901234567890123456789012345678901234567890123" DROP NOT NULL;
SELECT format('CALL tenancy.enforce_not_null(%L)', rel) FROM hn_tables ORDER BY rel::text \gexec
SELECT rel, a.attnotnull FROM hn_tables JOIN pg_attribute a ON a.attrelid = rel AND a.attname = col ORDER BY rel::text;
SELECT count(*) AS fired FROM hn_trap.fired;

-- scope_constraints: the plan, then its statements executed.
SELECT step, relation, action FROM tenancy.scope_constraints_plan() ORDER BY step;
SELECT * FROM tenancy.scope_constraints_sql() \gexec
SELECT count(*) AS fired FROM hn_trap.fired;
SELECT count(*) AS steps_left FROM tenancy.scope_constraints_plan();
SELECT check_name, relation, status FROM tenancy.verify()
 WHERE check_name IN ('unique_scope', 'foreign_key_scope', 'cross_tenant_reference', 'null_tenant', 'unknown_tenant')
 ORDER BY relation::text, check_name;

-- The policy functions, executed.
SELECT tenancy.policy_sql(rel, col, mode => 'migrating') FROM hn_tables ORDER BY rel::text \gexec
SELECT tenancy.set_mode_sql(rel, 'enforce') FROM hn_tables ORDER BY rel::text \gexec
SELECT count(*) AS fired FROM hn_trap.fired;

-- bind_role_sql() with a hostile role name.
CREATE ROLE "R';SELECT hn_trap.x();--$tenancy$";
SELECT tenancy.bind_role_sql('"R'';SELECT hn_trap.x();--$tenancy$"') \gexec
SELECT tenancy.unbind_role('"R'';SELECT hn_trap.x();--$tenancy$"');
DROP ROLE "R';SELECT hn_trap.x();--$tenancy$";

-- Rollback: disable_rls_sql() on one table, rollback_table_sql() on all.
SELECT tenancy.disable_rls_sql(rel) FROM hn_tables WHERE col = 'tenant_id' \gexec
-- Children first: their scoped foreign keys use the parent's new index.
SELECT tenancy.rollback_table_sql(rel) FROM hn_tables ORDER BY rel::text LIKE '%Parent%', rel::text \gexec
SELECT count(*) AS fired FROM hn_trap.fired;

-- The catalog after the rollback is the catalog before the contract phase.
CREATE TEMP TABLE hn_after AS
SELECT c.conrelid::regclass::text AS rel, c.conname::text AS name, pg_get_constraintdef(c.oid) AS def
  FROM pg_constraint c WHERE c.conrelid IN (SELECT rel FROM hn_tables)
UNION ALL
SELECT i.indrelid::regclass::text, ic.relname::text, pg_get_indexdef(i.indexrelid)
  FROM pg_index i JOIN pg_class ic ON ic.oid = i.indexrelid WHERE i.indrelid IN (SELECT rel FROM hn_tables)
UNION ALL
SELECT a.attrelid::regclass::text, a.attname::text, format('not null %s', a.attnotnull)
  FROM pg_attribute a WHERE a.attrelid IN (SELECT rel FROM hn_tables) AND a.attnum > 0
UNION ALL
SELECT c.oid::regclass::text, 'row security', format('%s %s', c.relrowsecurity, c.relforcerowsecurity)
  FROM pg_class c WHERE c.oid IN (SELECT rel FROM hn_tables);
(SELECT 'lost' AS diff, * FROM hn_before EXCEPT SELECT 'lost', * FROM hn_after)
UNION ALL
(SELECT 'gained', * FROM hn_after EXCEPT SELECT 'gained', * FROM hn_before)
ORDER BY 1, 2, 3;
SELECT count(*) AS catalog_rows FROM hn_before;

-- The undo of add_tenant_column_sql() depends on the catalog, not on the
-- text of the statement: a table named like a clause does not turn
-- "DROP DEFAULT" into "DROP COLUMN".
CREATE TABLE "Sch $tenancy$ $$ \ ;x"."t ADD COLUMN x" (id int, tenant_id uuid);
SELECT tenancy.add_tenant_column_sql('"Sch $tenancy$ $$ \ ;x"."t ADD COLUMN x"');

DROP SCHEMA "';END IF;PERFORM hn_trap.x();IF 0=1 THEN RAISE'" CASCADE;
DROP SCHEMA "Sch $tenancy$ $$ \ ;x" CASCADE;
DROP SCHEMA hn_trap CASCADE;
DROP EXTENSION tenancy CASCADE;

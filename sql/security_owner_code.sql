-- Code a table owner controls (index expressions and predicates, defaults,
-- triggers) never runs with the rights of the superuser who runs verify()
-- and the contract steps: they run it as the owner, under
-- SECURITY_RESTRICTED_OPERATION.  The trap makes its caller superuser when
-- it runs as one, and records who ran it.
CREATE EXTENSION tenancy;
SELECT tenancy.create_tenant('acme', 'Acme', '11111111-1111-1111-1111-111111111111') IS NOT NULL AS created;
CREATE ROLE sec_oc_owner;
CREATE SCHEMA sec_oc AUTHORIZATION sec_oc_owner;
SET ROLE sec_oc_owner;
CREATE TABLE sec_oc.ran (as_superuser boolean);
CREATE FUNCTION sec_oc.escalate() RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO sec_oc.ran SELECT r.rolsuper FROM pg_catalog.pg_roles r WHERE r.rolname = current_user;
    IF (SELECT r.rolsuper FROM pg_catalog.pg_roles r WHERE r.rolname = current_user) THEN
        ALTER ROLE sec_oc_owner SUPERUSER;
    END IF;
END $$;
CREATE FUNCTION sec_oc.trap() RETURNS boolean LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN PERFORM sec_oc.escalate(); RETURN true; END $$;
CREATE FUNCTION sec_oc.trap_int(int) RETURNS int LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN PERFORM sec_oc.escalate(); RETURN $1; END $$;
CREATE FUNCTION sec_oc.trap_trigger() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN PERFORM sec_oc.escalate(); RETURN NEW; END $$;
CREATE TABLE sec_oc.parent (id serial PRIMARY KEY, tenant_id uuid, code text UNIQUE,
                            n int DEFAULT sec_oc.trap_int(0));
CREATE TABLE sec_oc.child (id serial PRIMARY KEY, tenant_id uuid, parent_id int REFERENCES sec_oc.parent (id));
INSERT INTO sec_oc.parent (id, tenant_id, code) VALUES (1, '11111111-1111-1111-1111-111111111111', 'a');
INSERT INTO sec_oc.child VALUES (1, '11111111-1111-1111-1111-111111111111', 1), (2, NULL, NULL);
-- A partial index and an expression index: the planner evaluates both for
-- any query on the tables; a trigger and a default for any write.
CREATE INDEX child_trap ON sec_oc.child (id) WHERE sec_oc.trap();
CREATE INDEX parent_trap ON sec_oc.parent ((sec_oc.trap_int(id)));
CREATE UNIQUE INDEX parent_trap_unique ON sec_oc.parent (code) WHERE sec_oc.trap();
CREATE TRIGGER parent_trap BEFORE INSERT OR UPDATE ON sec_oc.parent FOR EACH ROW EXECUTE FUNCTION sec_oc.trap_trigger();
CREATE TRIGGER child_trap BEFORE INSERT OR UPDATE ON sec_oc.child FOR EACH ROW EXECUTE FUNCTION sec_oc.trap_trigger();
RESET ROLE;
INSERT INTO tenancy.tables (relation) VALUES ('sec_oc.parent'), ('sec_oc.child');
SELECT tenancy.enable_rls('sec_oc.child') IS NOT NULL AS enabled;
TRUNCATE sec_oc.ran;

-- Under FORCE ROW LEVEL SECURITY, the owner still counts every row.
SELECT relrowsecurity, relforcerowsecurity FROM pg_class WHERE oid = 'sec_oc.child'::regclass;
SELECT check_name, status, rows_affected FROM tenancy.verify('sec_oc.child') WHERE check_name = 'null_tenant';
SET ROLE sec_oc_owner;
ALTER TABLE sec_oc.child NO FORCE ROW LEVEL SECURITY;
UPDATE sec_oc.child SET tenant_id = '11111111-1111-1111-1111-111111111111' WHERE tenant_id IS NULL;
ALTER TABLE sec_oc.child FORCE ROW LEVEL SECURITY;
RESET ROLE;

-- The superuser runs the report and every contract step.
SELECT check_name, relation, status FROM tenancy.verify()
 WHERE check_name IN ('null_tenant', 'unknown_tenant', 'cross_tenant_reference', 'foreign_key_scope')
 ORDER BY relation::text, check_name;
CALL tenancy.enforce_not_null('sec_oc.parent');
CALL tenancy.enforce_not_null('sec_oc.child');
\set ON_ERROR_STOP on
SELECT * FROM tenancy.scope_constraints_sql() \gexec
\set ON_ERROR_STOP off
SELECT check_name, relation, status FROM tenancy.verify()
 WHERE check_name IN ('null_tenant', 'unknown_tenant', 'cross_tenant_reference', 'foreign_key_scope', 'unique_scope')
 ORDER BY relation::text, check_name;
SELECT r.rolsuper AS owner_is_superuser FROM pg_roles r WHERE r.rolname = 'sec_oc_owner';
SELECT count(*) FILTER (WHERE as_superuser) AS ran_as_superuser,
       count(*) FILTER (WHERE NOT as_superuser) > 0 AS ran_as_owner
  FROM sec_oc.ran;

-- The rollback, executed as \gexec would.
SELECT tenancy.rollback_table_sql('sec_oc.child') \gexec
SELECT tenancy.rollback_table_sql('sec_oc.parent') \gexec
SELECT r.rolsuper AS owner_is_superuser FROM pg_roles r WHERE r.rolname = 'sec_oc_owner';
SELECT count(*) FILTER (WHERE as_superuser) AS ran_as_superuser FROM sec_oc.ran;

-- The owner runs the report on its own table under FORCE ROW LEVEL SECURITY:
-- no superuser or BYPASSRLS needed.
GRANT SELECT ON tenancy.tables, tenancy.tenants, tenancy.memberships, tenancy.identity_sources, tenancy.shadow_stats TO sec_oc_owner;
GRANT EXECUTE ON FUNCTION tenancy.verify(regclass, bigint), tenancy.column_list(regclass, smallint[]),
    tenancy.unscoped_unique_indexes(regclass, smallint),
    tenancy.verify_tenant_column(regclass, name, boolean, smallint, oid),
    tenancy.verify_null_tenant(regclass, name, bigint),
    tenancy.verify_unknown_tenant(regclass, name, oid, bigint),
    tenancy.verify_conflicting_parents(regclass, bigint),
    tenancy.verify_derived_tenant_mismatch(regclass, name, bigint),
    tenancy.verify_cross_tenant_reference(regclass, name, oid, bigint, text[]),
    tenancy.verify_unique_scope(regclass, name, smallint),
    tenancy.verify_foreign_key_scope(regclass, name),
    tenancy.verify_row_security(regclass, name, text),
    tenancy.verify_policy_mode(regclass, name, text),
    tenancy.verify_rollout(regclass),
    tenancy.verify_shadow_divergence(regclass),
    tenancy.verify_tenant_index(regclass, name, smallint, "char"),
    tenancy.verify_view_security_invoker(regclass),
    tenancy.verify_materialized_view(regclass),
    tenancy.verify_security_definer_function(regclass),
    tenancy.verify_bypassrls_role(regclass),
    tenancy.verify_unregistered_reference(regclass),
    tenancy.verify_shared_table(),
    tenancy.verify_user_without_tenant(bigint),
    tenancy.verify_tenant_without_owner()
    TO sec_oc_owner;
GRANT pg_read_all_stats TO sec_oc_owner;
SELECT tenancy.enable_rls('sec_oc.parent') IS NOT NULL AS enabled;
SET ROLE sec_oc_owner;
SELECT check_name, status, rows_affected FROM tenancy.verify('sec_oc.parent')
 WHERE check_name IN ('null_tenant', 'unknown_tenant', 'rls_forced') ORDER BY check_name;
RESET ROLE;
SELECT tenancy.disable_rls('sec_oc.parent') IS NOT NULL AS disabled;

-- A reference between tables of two owners runs as the least privileged
-- of them all (the parse tree names both tables).  Unrelated owners (neither
-- has the other's privileges): no role is below both, so it is a warning
-- with no fix, grants or not; running it as either would lend that owner's
-- rights to the other's code.
SELECT tenancy.create_tenant('globex', 'Globex', '22222222-2222-2222-2222-222222222222') IS NOT NULL AS created;
CREATE ROLE sec_oc_other;
GRANT USAGE ON SCHEMA sec_oc TO sec_oc_other;
CREATE TABLE sec_oc.other_child (id int PRIMARY KEY, tenant_id uuid, parent_id int REFERENCES sec_oc.parent (id));
INSERT INTO sec_oc.other_child VALUES (1, '22222222-2222-2222-2222-222222222222', 1);
ALTER TABLE sec_oc.other_child OWNER TO sec_oc_other;
INSERT INTO tenancy.tables (relation) VALUES ('sec_oc.other_child');
SELECT status, rows_affected, detail, fix FROM tenancy.verify('sec_oc.other_child') WHERE check_name = 'cross_tenant_reference';
GRANT SELECT ON sec_oc.other_child TO sec_oc_owner;
GRANT SELECT ON sec_oc.parent TO sec_oc_other;
SELECT status, rows_affected, fix FROM tenancy.verify('sec_oc.other_child') WHERE check_name = 'cross_tenant_reference';
-- Related owners: the child's owner has the parent owner's privileges, so
-- the count runs as the parent's owner, who may read the child.
GRANT sec_oc_owner TO sec_oc_other;
SELECT status, rows_affected FROM tenancy.verify('sec_oc.other_child') WHERE check_name = 'cross_tenant_reference';
REVOKE sec_oc_owner FROM sec_oc_other;
REVOKE SELECT ON sec_oc.other_child FROM sec_oc_owner;
REVOKE SELECT ON sec_oc.parent FROM sec_oc_other;
-- A superuser's table referencing the trapped owner's table (red team F3):
-- the count runs as that owner, never as the superuser.
CREATE TABLE sec_oc.super_child (id int PRIMARY KEY, tenant_id uuid, parent_id int REFERENCES sec_oc.parent (id));
INSERT INTO sec_oc.super_child VALUES (1, '22222222-2222-2222-2222-222222222222', 1);
INSERT INTO tenancy.tables (relation) VALUES ('sec_oc.super_child');
\c
SELECT status, rows_affected FROM tenancy.verify('sec_oc.super_child') WHERE check_name = 'cross_tenant_reference';
SELECT rolsuper AS owner_became_superuser FROM pg_roles WHERE rolname = 'sec_oc_owner';
DROP TABLE sec_oc.super_child;
SELECT count(*) FILTER (WHERE as_superuser) AS ran_as_superuser FROM sec_oc.ran;

REVOKE ALL ON tenancy.tables, tenancy.tenants, tenancy.memberships, tenancy.identity_sources, tenancy.shadow_stats FROM sec_oc_owner;
REVOKE ALL ON FUNCTION tenancy.verify(regclass, bigint), tenancy.column_list(regclass, smallint[]),
    tenancy.unscoped_unique_indexes(regclass, smallint),
    tenancy.verify_tenant_column(regclass, name, boolean, smallint, oid),
    tenancy.verify_null_tenant(regclass, name, bigint),
    tenancy.verify_unknown_tenant(regclass, name, oid, bigint),
    tenancy.verify_conflicting_parents(regclass, bigint),
    tenancy.verify_derived_tenant_mismatch(regclass, name, bigint),
    tenancy.verify_cross_tenant_reference(regclass, name, oid, bigint, text[]),
    tenancy.verify_unique_scope(regclass, name, smallint),
    tenancy.verify_foreign_key_scope(regclass, name),
    tenancy.verify_row_security(regclass, name, text),
    tenancy.verify_policy_mode(regclass, name, text),
    tenancy.verify_rollout(regclass),
    tenancy.verify_shadow_divergence(regclass),
    tenancy.verify_tenant_index(regclass, name, smallint, "char"),
    tenancy.verify_view_security_invoker(regclass),
    tenancy.verify_materialized_view(regclass),
    tenancy.verify_security_definer_function(regclass),
    tenancy.verify_bypassrls_role(regclass),
    tenancy.verify_unregistered_reference(regclass),
    tenancy.verify_shared_table(),
    tenancy.verify_user_without_tenant(bigint),
    tenancy.verify_tenant_without_owner()
    FROM sec_oc_owner;
DROP SCHEMA sec_oc CASCADE;
DROP ROLE sec_oc_owner;
DROP ROLE sec_oc_other;
DROP EXTENSION tenancy CASCADE;

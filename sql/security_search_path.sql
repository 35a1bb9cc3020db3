-- No routine of the extension resolves a name through its caller's
-- search_path (issue 13, finding 4).  A schema first on a superuser's
-- search_path holds a trap of the same signature for every pg_catalog
-- function, aggregate and operator the install script names without a
-- schema (the list is derived from the script itself); then the superuser
-- runs every API function and procedure on a realistic fixture.  Each trap
-- bumps a sequence (not undone by a rollback) and warns: none may fire.
CREATE EXTENSION tenancy;
\set SHOW_CONTEXT never
\set VERBOSITY terse

CREATE SCHEMA sp_trap;
CREATE SEQUENCE sp_trap.fired_seq;
CREATE FUNCTION sp_trap.fired(what text) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
BEGIN
    PERFORM pg_catalog.nextval('sp_trap.fired_seq');
    RAISE WARNING 'trap % called (by a superuser: %)', what,
        (SELECT r.rolsuper FROM pg_catalog.pg_roles r WHERE r.rolname OPERATOR(pg_catalog.=) current_user);
END
$$;
CREATE TABLE sp_trap.traps (kind text, name text, signature text, created boolean);

-- The names the install script calls or applies without a schema.
CREATE TABLE sp_trap.script AS
SELECT pg_catalog.pg_read_file((SELECT setting FROM pg_catalog.pg_config WHERE name = 'SHAREDIR')
                               || '/extension/tenancy--' || (SELECT e.default_version FROM pg_catalog.pg_available_extensions e
                                                             WHERE e.name = 'tenancy') || '.sql') AS src;
CREATE TABLE sp_trap.called AS
SELECT DISTINCT pg_catalog.lower(m[1]) AS name
  FROM sp_trap.script, pg_catalog.regexp_matches(src, '(?<![.\w"$])([A-Za-z_][A-Za-z0-9_]*)\s*\(', 'g') m;
CREATE TABLE sp_trap.applied AS
SELECT DISTINCT m[1] AS name
  FROM sp_trap.script, pg_catalog.regexp_matches(src, '([-+*/<>=~!@#%^&|`?]+)', 'g') m
UNION SELECT '~~' FROM sp_trap.script WHERE src ~* '\mLIKE\M'
UNION SELECT '!~~' FROM sp_trap.script WHERE src ~* '\mNOT LIKE\M'
UNION SELECT '~~*' FROM sp_trap.script WHERE src ~* '\mILIKE\M'
UNION SELECT o FROM sp_trap.script, (VALUES ('='), ('<='), ('>=')) v(o) WHERE src ~* '\m(IN|BETWEEN|DISTINCT|CASE)\M';

DO $$
DECLARE
    p record;
    o record;
    args text;
    body text;
BEGIN
    -- Functions (plain and set-returning).
    FOR p IN SELECT f.oid, f.proname, f.proretset, f.proallargtypes IS NOT NULL AS has_out,
                    pg_catalog.pg_get_function_arguments(f.oid) AS args,
                    pg_catalog.pg_get_function_result(f.oid) AS result
               FROM pg_catalog.pg_proc f JOIN sp_trap.called c ON c.name = f.proname
              WHERE f.pronamespace = 'pg_catalog'::regnamespace AND f.prokind = 'f'
              ORDER BY f.oid LOOP
        body := pg_catalog.format('BEGIN PERFORM sp_trap.fired(%L); RETURN%s; END',
                                  p.proname, CASE WHEN p.proretset OR p.has_out OR p.result = 'void' THEN '' ELSE ' NULL' END);
        BEGIN
            EXECUTE pg_catalog.format('CREATE FUNCTION sp_trap.%I(%s) RETURNS %s LANGUAGE plpgsql SET search_path = pg_catalog AS %L',
                                      p.proname, p.args, p.result, body);
            INSERT INTO sp_trap.traps VALUES ('function', p.proname, p.args, true);
        EXCEPTION WHEN OTHERS THEN
            INSERT INTO sp_trap.traps VALUES ('function', p.proname, p.args, false);
        END;
    END LOOP;
    -- Aggregates: a transition function that fires the trap.
    FOR p IN SELECT f.oid, f.proname, pg_catalog.pg_get_function_identity_arguments(f.oid) AS args,
                    pg_catalog.format_type(f.prorettype, NULL) AS result
               FROM pg_catalog.pg_proc f JOIN sp_trap.called c ON c.name = f.proname
               JOIN pg_catalog.pg_aggregate a ON a.aggfnoid = f.oid
              WHERE f.pronamespace = 'pg_catalog'::regnamespace AND f.prokind = 'a' AND a.aggkind = 'n'
              ORDER BY f.oid LOOP
        BEGIN
            EXECUTE pg_catalog.format('CREATE FUNCTION sp_trap.%I(s %s%s) RETURNS %s LANGUAGE plpgsql SET search_path = pg_catalog AS %L',
                                      'agg_' || p.oid, p.result, CASE WHEN p.args = '' THEN '' ELSE ', ' || p.args END, p.result,
                                      pg_catalog.format('BEGIN PERFORM sp_trap.fired(%L); RETURN s; END', p.proname));
            EXECUTE pg_catalog.format('CREATE AGGREGATE sp_trap.%I(%s) (SFUNC = sp_trap.%I, STYPE = %s)',
                                      p.proname, CASE WHEN p.args = '' THEN '*' ELSE p.args END, 'agg_' || p.oid, p.result);
            INSERT INTO sp_trap.traps VALUES ('aggregate', p.proname, p.args, true);
        EXCEPTION WHEN OTHERS THEN
            INSERT INTO sp_trap.traps VALUES ('aggregate', p.proname, p.args, false);
        END;
    END LOOP;
    -- Operators, binary and prefix.
    FOR o IN SELECT op.oid, op.oprname, op.oprleft, op.oprright, op.oprresult
               FROM pg_catalog.pg_operator op JOIN sp_trap.applied a ON a.name = op.oprname
              WHERE op.oprnamespace = 'pg_catalog'::regnamespace
              ORDER BY op.oid LOOP
        args := CASE WHEN o.oprleft = 0 THEN '' ELSE pg_catalog.format_type(o.oprleft, NULL) || ', ' END
                || pg_catalog.format_type(o.oprright, NULL);
        BEGIN
            EXECUTE pg_catalog.format('CREATE FUNCTION sp_trap.%I(%s) RETURNS %s LANGUAGE plpgsql SET search_path = pg_catalog AS %L',
                                      'op_' || o.oid, args, pg_catalog.format_type(o.oprresult, NULL),
                                      pg_catalog.format('BEGIN PERFORM sp_trap.fired(%L); RETURN NULL; END', 'operator ' || o.oprname));
            EXECUTE pg_catalog.format('CREATE OPERATOR sp_trap.%s (%sRIGHTARG = %s, FUNCTION = sp_trap.%I)',
                                      o.oprname,
                                      CASE WHEN o.oprleft = 0 THEN '' ELSE 'LEFTARG = ' || pg_catalog.format_type(o.oprleft, NULL) || ', ' END,
                                      pg_catalog.format_type(o.oprright, NULL), 'op_' || o.oid);
            INSERT INTO sp_trap.traps VALUES ('operator', o.oprname, args, true);
        EXCEPTION WHEN OTHERS THEN
            INSERT INTO sp_trap.traps VALUES ('operator', o.oprname, args, false);
        END;
    END LOOP;
END
$$;
-- The traps cover the functions, aggregates and operators the engine uses.
SELECT kind, count(*) FILTER (WHERE created) > 0 AS some_created
  FROM sp_trap.traps GROUP BY kind ORDER BY kind;
SELECT name, kind FROM (VALUES ('unnest', 'function'), ('cardinality', 'function'), ('round', 'function'),
                               ('date_trunc', 'function'), ('array_agg', 'aggregate'), ('string_agg', 'aggregate'),
                               ('sum', 'aggregate'), ('=', 'operator'), ('<>', 'operator'), ('||', 'operator'))
                       AS v(name, kind)
 WHERE NOT EXISTS (SELECT FROM sp_trap.traps t WHERE t.name = v.name AND t.kind = v.kind AND t.created);

-- Every SQL and PL/pgSQL routine is pinned, but the six procedures (a SET
-- clause forbids COMMIT: they pin it themselves after each COMMIT) and
-- queue_backfill() (it records the caller's search_path; fully qualified).
SELECT p.proname AS not_pinned, p.prokind
  FROM pg_proc p
  JOIN pg_depend d ON d.classid = 'pg_proc'::regclass AND d.objid = p.oid AND d.deptype = 'e'
  JOIN pg_extension e ON e.oid = d.refobjid AND e.extname = 'tenancy'
  JOIN pg_language l ON l.oid = p.prolang
 WHERE l.lanname <> 'c'
   AND NOT coalesce('search_path=pg_catalog, pg_temp' = ANY (p.proconfig), false)
 ORDER BY p.proname;

-- The fixture: a tenant column to add and backfill on tables with and
-- without a primary key, partitioned, through a foreign key; identities.
CREATE SCHEMA sp_fix;
CREATE TABLE sp_fix.projects (id int PRIMARY KEY, name text);
INSERT INTO sp_fix.projects SELECT g, 'p' || g FROM generate_series(1, 20) g;
CREATE TABLE sp_fix.tasks (id bigint PRIMARY KEY, project_id int CONSTRAINT tasks_project_fk REFERENCES sp_fix.projects);
INSERT INTO sp_fix.tasks SELECT g, 1 + g % 20 FROM generate_series(1, 50) g;
CREATE TABLE sp_fix.comments (id int, task_id bigint, PRIMARY KEY (id, task_id),
                              CONSTRAINT comments_task_fk FOREIGN KEY (task_id) REFERENCES sp_fix.tasks);
INSERT INTO sp_fix.comments SELECT g, 1 + g % 50 FROM generate_series(1, 60) g;
CREATE TABLE sp_fix.nopk (v text);
INSERT INTO sp_fix.nopk SELECT 'v' || g FROM generate_series(1, 30) g;
CREATE TABLE sp_fix.parted (id int PRIMARY KEY, v text) PARTITION BY RANGE (id);
CREATE TABLE sp_fix.parted_1 PARTITION OF sp_fix.parted FOR VALUES FROM (0) TO (100);
CREATE TABLE sp_fix.parted_2 PARTITION OF sp_fix.parted FOR VALUES FROM (100) TO (200);
INSERT INTO sp_fix.parted SELECT g, 'v' FROM generate_series(1, 150) g;
CREATE TABLE sp_fix.users (id text PRIMARY KEY, name text);
INSERT INTO sp_fix.users VALUES ('u1', 'Ann'), ('u2', 'Bob');
CREATE TABLE sp_fix.docs (id int PRIMARY KEY, owner_id text REFERENCES sp_fix.users);
INSERT INTO sp_fix.docs VALUES (1, 'u1'), (2, 'u1'), (3, 'u2');
-- An expression source, fully qualified: it runs under the caller's search_path.
CREATE FUNCTION sp_fix.project_tenant(project_id int) RETURNS uuid LANGUAGE sql STABLE
    SET search_path = pg_catalog AS $$SELECT tenancy.implicit_tenant()::uuid$$;
CREATE ROLE sp_role;

-- Controls: under the trapped search_path, an unqualified function, an
-- aggregate and an operator each fire their trap.
SET search_path = sp_trap, pg_catalog, public;
SELECT pg_catalog.count(*) AS control_function FROM unnest(ARRAY[1, 2]) u;
SELECT 1 = 1 AS control_operator;
SELECT array_agg(x) AS control_aggregate FROM (VALUES (1)) v(x);
RESET search_path;
SELECT last_value AS controls_fired FROM sp_trap.fired_seq \gset
SELECT :controls_fired >= 3 AS controls_fired;

-- Every API function and procedure, as a superuser, under the trapped
-- search_path.  Results are not shown; errors and warnings are.
SET search_path = sp_trap, pg_catalog, public;
\o /dev/null
SELECT tenancy.create_tenant('sp-acme', 'Acme', '5a000000-0000-4000-8000-000000000001');
SELECT tenancy.create_tenant('sp-beta', 'Beta');
SELECT tenancy.set_implicit_tenant('sp-acme');
SELECT tenancy.implicit_tenant();
SELECT tenancy.lookup_tenant('sp-acme');
SELECT tenancy.tenant_key('sp-beta');
SELECT tenancy.normalize_key('5A000000-0000-4000-8000-000000000001');
SELECT tenancy.key_type();
SELECT tenancy.set_tenant('sp-acme');
SELECT tenancy.current_tenant(), tenancy.current_tenant_text();
SELECT tenancy.clear_tenant();
SELECT tenancy.suspend_tenant('sp-beta');
SELECT tenancy.activate_tenant('sp-beta');
SELECT tenancy.tenant_default_sql();
SELECT tenancy.add_tenant_column_sql('sp_fix.projects');
SELECT tenancy.add_tenant_column('sp_fix.projects');
SELECT tenancy.add_tenant_column('sp_fix.tasks');
SELECT tenancy.add_tenant_column('sp_fix.comments');
SELECT tenancy.add_tenant_column('sp_fix.nopk');
SELECT tenancy.add_tenant_column('sp_fix.parted');
SELECT tenancy.queue_backfill('sp_fix.projects', batch_size => 7);
CALL tenancy.backfill('sp_fix.projects');
CALL tenancy.backfill('sp_fix.tasks', source => 'sp_fix.project_tenant(t.project_id)', batch_size => 10);
CALL tenancy.backfill('sp_fix.comments', via => 'comments_task_fk', batch_size => 10);
CALL tenancy.backfill('sp_fix.nopk', tenant => 'sp-beta', batch_size => 10);
CALL tenancy.backfill('sp_fix.parted', batch_size => 40);
CALL tenancy.backfill('sp_fix.parted');
SELECT * FROM tenancy.backfill_progress;
SELECT * FROM tenancy.refresh_status();
SELECT * FROM tenancy.refresh_status('sp_fix.tasks');
SELECT * FROM tenancy.verify();
SELECT * FROM tenancy.verify('sp_fix.projects', 10);
SELECT * FROM tenancy.scope_constraints_sql();
SELECT * FROM tenancy.scope_constraints_plan('sp_fix.tasks');
SELECT * FROM tenancy.enforce_not_null_sql('sp_fix.projects');
SELECT * FROM tenancy.enforce_not_null_plan('sp_fix.projects');
CALL tenancy.enforce_not_null('sp_fix.projects');
SELECT tenancy.policy_sql('sp_fix.projects', 'tenant_id', NULL, 'migrating');
SELECT tenancy.enable_rls('sp_fix.projects', mode => 'migrating');
SELECT tenancy.enable_rls('sp_fix.parted');
SELECT tenancy.set_mode_sql('sp_fix.projects', 'shadow');
SELECT tenancy.set_mode('sp_fix.projects', 'shadow');
SELECT tenancy.set_mode('sp_fix.projects', 'enforce');
SELECT * FROM tenancy.rls_advisories('sp_fix.projects');
SELECT tenancy.reset_shadow_stats();
SELECT tenancy.disable_rls_sql('sp_fix.projects');
SELECT tenancy.disable_rls('sp_fix.projects');
SELECT tenancy.disable_rls('sp_fix.parted');
SELECT tenancy.log_step('sp_fix.tasks', 'manual', 'SELECT 1', 'SELECT 2');
SELECT * FROM tenancy.rollback_table_sql('sp_fix.projects');
SELECT * FROM tenancy.rollback_table('sp_fix.projects');
SELECT tenancy.add_member('sp-acme', 'u1', 'owner');
SELECT tenancy.set_tenant_as('u1', 'sp-acme');
SELECT tenancy.remove_member('sp-acme', 'u1');
SELECT * FROM tenancy.create_personal_tenants('sp_fix.users', 'id', 'name', ARRAY['sp_fix.docs'::regclass],
                                              ARRAY['owner_id'::name]);
SELECT tenancy.bind_role_sql('sp_role', 'sp-acme');
SELECT tenancy.bind_role('sp_role', 'sp-acme');
SELECT tenancy.unbind_role('sp_role');
SELECT * FROM tenancy.context_stats();
SELECT tenancy.reset_context_stats();
SELECT tenancy.bind_role('sp_role');
SELECT tenancy.deprecate_role_sql('sp_role');
SELECT tenancy.deprecate_role('sp_role');
SELECT * FROM tenancy.deprecated_roles;
SET tenancy.retire_after = 0;
SELECT * FROM tenancy.retire_role_steps('sp_role');
SELECT tenancy.retire_role_sql('sp_role');
SELECT tenancy.retire_role('sp_role');
SELECT tenancy.unretire_role('sp_role');
RESET tenancy.retire_after;
SELECT tenancy.undeprecate_role('sp_role');
SELECT tenancy.unbind_role('sp_role');
SELECT tenancy.create_tenant('sp-gone', 'Gone');
SELECT tenancy.suspend_tenant('sp-gone');
SELECT * FROM tenancy.erase_order();
SELECT * FROM tenancy.erase_blockers('sp-gone');
SELECT tenancy.erase_tenant_sql('sp-gone');
CALL tenancy.erase_tenant('sp-gone');
SELECT * FROM tenancy.erase_progress;
SELECT * FROM tenancy.tenant_checksums('sp-acme');
SELECT tenancy.table_query('sp_fix.projects', NULL, 'SELECT 1');
SELECT tenancy.table_exec('sp_fix.projects', NULL, 'SELECT 1');
\o
RESET search_path;

-- The fixture worked, and no trap fired.
SELECT count(*) FILTER (WHERE tenant_id IS NULL) AS null_tasks, count(*) AS tasks FROM sp_fix.tasks;
SELECT count(*) FILTER (WHERE tenant_id IS NULL) AS null_comments FROM sp_fix.comments;
SELECT count(*) FILTER (WHERE tenant_id IS NULL) AS null_nopk FROM sp_fix.nopk;
SELECT count(*) FILTER (WHERE tenant_id IS NULL) AS null_parted FROM sp_fix.parted;
SELECT relation::text, state FROM tenancy.backfill_jobs ORDER BY id;
SELECT last_value - :controls_fired AS traps_fired FROM sp_trap.fired_seq;

SET client_min_messages = warning;   -- the trap count follows the install script
DROP SCHEMA sp_fix CASCADE;
DROP SCHEMA sp_trap CASCADE;
RESET client_min_messages;
DROP ROLE sp_role;
DROP EXTENSION tenancy CASCADE;

-- The contract phase on partitioned tables (issue 14, item 6): every index a
-- step needs is built per partition CONCURRENTLY and attached to an index
-- made ON ONLY the parent; the primary key and unique constraint of a
-- partitioned table are swapped in one short catalog-only transaction; a
-- foreign key of a partitioned table is added NOT VALID and validated per
-- partition, then on the parent, which adopts them.  Each step that is not
-- a concurrent build runs here in its own transaction, and before it
-- commits the test lists the locks it holds that conflict with the
-- application's writes (SHARE and stronger) or reads (ACCESS EXCLUSIVE),
-- on which tables, and how many rows of tables of the schema the step read
-- (per table, from pg_stat_xact_user_tables): a step with a strong lock
-- reads no row; the VALIDATE steps read the partition under SHARE UPDATE
-- EXCLUSIVE, which blocks neither reads nor writes.
SET tenancy.tenant_type = 'bigint';
CREATE EXTENSION tenancy;
CREATE SCHEMA cl;
CREATE TABLE cl.project (tenant_id bigint, id int PRIMARY KEY, name text);
CREATE TABLE cl.account (tenant_id bigint, id int PRIMARY KEY) PARTITION BY HASH (id);
CREATE TABLE cl.account_0 PARTITION OF cl.account FOR VALUES WITH (MODULUS 2, REMAINDER 0);
CREATE TABLE cl.account_1 PARTITION OF cl.account FOR VALUES WITH (MODULUS 2, REMAINDER 1);
CREATE TABLE cl.event (tenant_id bigint, day date NOT NULL, id int NOT NULL,
                       project_id int REFERENCES cl.project, account_id int REFERENCES cl.account,
                       code text, ref int, PRIMARY KEY (day, id), UNIQUE (ref, day))
    PARTITION BY RANGE (day);
CREATE TABLE cl.event_2026 PARTITION OF cl.event FOR VALUES FROM ('2026-01-01') TO ('2027-01-01');
CREATE TABLE cl.event_2027 PARTITION OF cl.event FOR VALUES FROM ('2027-01-01') TO ('2028-01-01');
CREATE UNIQUE INDEX event_code ON cl.event (code, day);
CREATE INDEX event_project ON cl.event (project_id);
INSERT INTO cl.project SELECT 1 + g % 2, g, 'p' || g FROM generate_series(1, 10) g;
INSERT INTO cl.account SELECT 1 + g % 2, g FROM generate_series(1, 10) g;
INSERT INTO cl.event SELECT 1 + (1 + g % 10) % 2, date '2026-06-01' + (g % 400), g, 1 + g % 10, 1 + g % 10, 'c' || g, g
                       FROM generate_series(1, 400) g;
SELECT count(*) AS mismatched FROM cl.event e JOIN cl.project p ON p.id = e.project_id WHERE p.tenant_id <> e.tenant_id;
-- Plain tables: a key whose only index is a unique constraint the plan
-- rescopes (it covers (tenant, key) then: no extra index), and a key with
-- an index of its own (it gets a (tenant, key) index, CONCURRENTLY).
CREATE TABLE cl.task (tenant_id bigint NOT NULL, id int GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
                      project_id int NOT NULL REFERENCES cl.project, seq int NOT NULL, UNIQUE (project_id, seq));
CREATE TABLE cl.note (tenant_id bigint NOT NULL, id int GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
                      project_id int REFERENCES cl.project);
CREATE INDEX note_project ON cl.note (project_id);
INSERT INTO cl.task (tenant_id, project_id, seq) SELECT 1 + p % 2, p, s FROM generate_series(1, 10) p, generate_series(1, 3) s;
INSERT INTO cl.note (tenant_id, project_id) SELECT 1 + p % 2, p FROM generate_series(1, 10) p;
INSERT INTO tenancy.tables (relation) VALUES ('cl.task'), ('cl.note');
ALTER TABLE cl.project ALTER tenant_id SET NOT NULL;
ALTER TABLE cl.account ALTER tenant_id SET NOT NULL;
ALTER TABLE cl.event ALTER tenant_id SET NOT NULL;
INSERT INTO tenancy.tables (relation) VALUES ('cl.project'), ('cl.account'), ('cl.event');

SELECT step, relation, action, sql FROM tenancy.scope_constraints_plan() ORDER BY step;

-- Every step that is not CONCURRENTLY starts with SET LOCAL lock_timeout.
SELECT count(*) AS steps_without_lock_timeout FROM tenancy.scope_constraints_plan()
 WHERE sql !~ '^SET LOCAL lock_timeout = ''100ms''; ' AND sql !~ '^CREATE (UNIQUE )?INDEX CONCURRENTLY ';

-- Run each step: a concurrent build on its own, any other in a transaction
-- that reports its strong locks and the rows it read before it commits.
\set ON_ERROR_STOP on
\set ECHO none
SELECT s.stmt
  FROM tenancy.scope_constraints_plan() p,
       LATERAL (VALUES
           (0, CASE WHEN p.sql !~ '^CREATE (UNIQUE )?INDEX CONCURRENTLY ' THEN 'BEGIN' END),
           (1, CASE WHEN p.sql !~ '^CREATE (UNIQUE )?INDEX CONCURRENTLY ' THEN
               $q$SELECT set_config('cl.read', (SELECT jsonb_object_agg(x.relid, x.seq_tup_read + coalesce(x.idx_tup_fetch, 0))
                                                  FROM pg_stat_xact_user_tables x WHERE x.schemaname = 'cl')::text, true) IS NULL AS reset$q$ END),
           (2, p.sql),
           (3, CASE WHEN p.sql !~ '^CREATE (UNIQUE )?INDEX CONCURRENTLY ' THEN format(
               $q$SELECT %s AS step, %L AS action,
                         coalesce((SELECT string_agg(format('%%s %%s', c.oid::regclass, replace(l.mode, 'Lock', '')), ', '
                                                     ORDER BY c.oid::regclass::text, l.mode)
                                     FROM pg_locks l JOIN pg_class c ON c.oid = l.relation
                                    WHERE l.pid = pg_backend_pid() AND l.locktype = 'relation' AND c.relkind IN ('r', 'p')
                                      AND c.relnamespace = 'cl'::regnamespace
                                      AND l.mode IN ('ShareLock', 'ShareRowExclusiveLock', 'ExclusiveLock', 'AccessExclusiveLock')),
                                  '-') AS strong_locks,
                         (SELECT sum(greatest(0, x.seq_tup_read + coalesce(x.idx_tup_fetch, 0)
                                                 - coalesce((current_setting('cl.read')::jsonb ->> x.relid::text)::bigint, 0)))
                            FROM pg_stat_xact_user_tables x WHERE x.schemaname = 'cl') AS rows_read$q$, p.step, p.action)
                ELSE format('SELECT %s AS step, %L AS action, %L AS strong_locks', p.step, p.action, 'concurrent build') END),
           (4, CASE WHEN p.sql !~ '^CREATE (UNIQUE )?INDEX CONCURRENTLY ' THEN 'COMMIT' END)) s(n, stmt)
 WHERE s.stmt IS NOT NULL
 ORDER BY p.step, s.n \gexec
\set ECHO all
\set ON_ERROR_STOP off

-- Nothing left to do, and the result.
SELECT count(*) AS steps_left FROM tenancy.scope_constraints_plan();
SELECT conrelid::regclass, conname, pg_get_constraintdef(oid), conparentid <> 0 AS inherited, convalidated
  FROM pg_constraint WHERE connamespace = 'cl'::regnamespace AND contype IN ('p', 'u', 'f')
 ORDER BY conrelid::regclass::text, conname;
SELECT i.indrelid::regclass, c.relname, i.indisvalid, pg_get_indexdef(i.indexrelid),
       (SELECT ih.inhparent::regclass FROM pg_inherits ih WHERE ih.inhrelid = i.indexrelid) AS attached_to
  FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
 WHERE c.relnamespace = 'cl'::regnamespace
 ORDER BY i.indrelid::regclass::text, c.relname;
-- a cross-tenant reference is refused, a same-tenant one accepted
INSERT INTO cl.event VALUES (1, '2026-03-01', 1001, 1, NULL, 'x1', 1001);
INSERT INTO cl.event VALUES (1, '2026-03-01', 1001, 2, NULL, 'x1', 1001);
INSERT INTO cl.event VALUES (2, '2026-03-01', 1001, 1, NULL, 'x2', 1002);

DROP SCHEMA cl CASCADE;
DROP EXTENSION tenancy CASCADE;
RESET tenancy.tenant_type;

-- One statement, one tenant: the tenant cannot change while a query over
-- row-secured tables runs, and while a query the guard cannot track is open.
CREATE EXTENSION tenancy;
\set SHOW_CONTEXT never
\set VERBOSITY terse
\set ON_ERROR_ROLLBACK on
SELECT tenancy.create_tenant('acme', 'Acme', '00000000-0000-0000-0000-0000000000a1') IS NOT NULL AS created;
SELECT tenancy.create_tenant('bolt', 'Bolt', '00000000-0000-0000-0000-0000000000b2') IS NOT NULL AS created;
CREATE ROLE sec_sw_owner;
CREATE ROLE sec_sw_app;
GRANT CREATE ON SCHEMA public TO sec_sw_owner;

SET ROLE sec_sw_owner;
CREATE TABLE sw_docs (id int PRIMARY KEY, tenant_id uuid DEFAULT tenancy.current_tenant(), body text);
CREATE INDEX sw_docs_tenant ON sw_docs (tenant_id);
INSERT INTO sw_docs VALUES
    (1, '00000000-0000-0000-0000-0000000000a1', 'a one'),
    (2, '00000000-0000-0000-0000-0000000000a1', 'a two'),
    (5, '00000000-0000-0000-0000-0000000000b2', 'b five');
GRANT SELECT, INSERT, UPDATE, DELETE ON sw_docs TO sec_sw_app;
SELECT tenancy.enable_rls('sw_docs') IS NOT NULL AS enabled;
CREATE FUNCTION sw_switch(tenant text) RETURNS boolean LANGUAGE sql VOLATILE
    AS $$ SELECT tenancy.set_tenant(tenant) IS NOT NULL $$;
CREATE FUNCTION sw_in_acme() RETURNS int LANGUAGE sql VOLATILE
    SET tenancy.tenant_id = '00000000-0000-0000-0000-0000000000a1'
    AS $$ SELECT 1 $$;
CREATE FUNCTION sw_reset() RETURNS boolean LANGUAGE plpgsql VOLATILE
    AS $$ BEGIN RESET tenancy.tenant_id; RETURN true; END $$;
CREATE PROCEDURE sw_proc() LANGUAGE plpgsql AS $$
DECLARE n int;
BEGIN
    PERFORM tenancy.set_tenant('acme');
    SELECT count(*) INTO n FROM sw_docs;
    RAISE NOTICE 'acme sees %', n;
    PERFORM tenancy.set_tenant('bolt');
    SELECT count(*) INTO n FROM sw_docs;
    RAISE NOTICE 'bolt sees %', n;
END $$;
GRANT EXECUTE ON FUNCTION sw_switch(text), sw_in_acme(), sw_reset() TO sec_sw_app;
GRANT EXECUTE ON PROCEDURE sw_proc() TO sec_sw_app;
RESET ROLE;

SET ROLE sec_sw_app;
-- The attack of the finding: bolt's row read at the start, the tenant
-- switched by a CTE, the row written into acme by the same statement.
BEGIN;
SELECT tenancy.set_tenant('bolt') IS NOT NULL AS set;
WITH src AS (SELECT id, body FROM sw_docs WHERE id = 5),
     sw AS (SELECT tenancy.set_tenant('acme') AS t)
INSERT INTO sw_docs (id, body) SELECT src.id + 100, src.body FROM src, sw;
\echo :LAST_ERROR_SQLSTATE
SELECT tenancy.current_tenant() AS still_bolt;
COMMIT;
BEGIN;
SELECT tenancy.set_tenant('acme') IS NOT NULL AS set;
SELECT array_agg(id ORDER BY id) AS acme_rows FROM sw_docs;
COMMIT;

-- A function called from inside the query cannot switch, however it tries.
BEGIN;
SELECT tenancy.set_tenant('bolt') IS NOT NULL AS set;
SELECT count(*) FROM sw_docs WHERE sw_switch('acme');
SELECT count(*) FROM sw_docs WHERE set_config('tenancy.tenant_id', '00000000-0000-0000-0000-0000000000a1', true) IS NOT NULL;
SELECT count(*) FROM sw_docs WHERE sw_in_acme() = 1;
SELECT count(*) FROM sw_docs WHERE tenancy.clear_tenant() IS NULL;
SELECT count(*) FROM sw_docs WHERE sw_reset();
\echo :LAST_ERROR_SQLSTATE
SELECT count(*) FROM sw_docs WHERE set_config('tenancy.tenant_id', NULL, true) IS NOT NULL;
\echo :LAST_ERROR_SQLSTATE
SELECT tenancy.current_tenant() AS still_bolt;
-- (setting the tenant it already has changes nothing, and is allowed)
SELECT count(*) AS bolt_rows FROM sw_docs WHERE sw_switch('bolt');
COMMIT;

-- More open queries than the guard tracks: every tenant change is refused
-- while one it could not track is open.
BEGIN;
SELECT tenancy.set_tenant('bolt') IS NOT NULL AS set;
DO $$
DECLARE c refcursor;
BEGIN
    FOR i IN 1..65 LOOP
        c := 'c' || i;
        OPEN c FOR SELECT id FROM sw_docs ORDER BY id;
    END LOOP;
END $$;
SELECT tenancy.set_tenant('acme');
FETCH ALL c1;
CLOSE c1;
SELECT tenancy.set_tenant('acme');
CLOSE c65;
SELECT tenancy.set_tenant('acme') IS NOT NULL AS switched;
FETCH ALL c2;
ROLLBACK;

-- What still works: a tenant per transaction, switching in a DO block or a
-- procedure between statements, after closing a cursor, after an error
-- caught inside a query.
BEGIN;
SELECT tenancy.set_tenant('acme') IS NOT NULL AS set;
SELECT count(*) AS acme_rows FROM sw_docs;
DECLARE c CURSOR FOR SELECT id FROM sw_docs ORDER BY id;
FETCH ALL c;
CLOSE c;
SELECT tenancy.set_tenant('bolt') IS NOT NULL AS set;
SELECT count(*) AS bolt_rows FROM sw_docs;
COMMIT;
DO $$
DECLARE n int;
BEGIN
    PERFORM tenancy.set_tenant('acme');
    SELECT count(*) INTO n FROM sw_docs;
    RAISE NOTICE 'acme sees %', n;
    PERFORM tenancy.set_tenant('bolt');
    SELECT count(*) INTO n FROM sw_docs;
    RAISE NOTICE 'bolt sees %', n;
    BEGIN
        PERFORM count(*) FROM sw_docs WHERE 1 / (id - id) = 1;
    EXCEPTION WHEN division_by_zero THEN
        RAISE NOTICE 'caught';
    END;
    PERFORM tenancy.set_tenant('acme');
    SELECT count(*) INTO n FROM sw_docs;
    RAISE NOTICE 'acme sees %', n;
END $$;
CALL sw_proc();
BEGIN;
CALL sw_proc();
COMMIT;
RESET ROLE;

DROP TABLE sw_docs;
DROP FUNCTION sw_switch(text), sw_in_acme(), sw_reset();
DROP PROCEDURE sw_proc();
DROP EXTENSION tenancy;
REVOKE ALL ON SCHEMA public FROM sec_sw_owner;
DROP ROLE sec_sw_owner, sec_sw_app;

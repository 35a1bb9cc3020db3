-- create_personal_tenants() and verify()'s user_without_tenant read the
-- users table and each resource table through tenancy.table_query(), as
-- that table's owner, one table per statement: code a table owner controls
-- (here an index predicate, evaluated when a query is planned) never runs
-- with the caller's rights, nor with another table owner's.
CREATE EXTENSION tenancy;
CREATE ROLE sid_owner;
CREATE ROLE sid_other;
CREATE SCHEMA sid AUTHORIZATION sid_owner;
CREATE SCHEMA sid2 AUTHORIZATION sid_other;
GRANT USAGE ON SCHEMA sid, sid2 TO PUBLIC;
SET ROLE sid_owner;
CREATE FUNCTION sid.esc() RETURNS bool LANGUAGE plpgsql AS $$
BEGIN
    IF (SELECT rolsuper FROM pg_roles WHERE rolname = current_user) THEN
        EXECUTE 'ALTER ROLE sid_owner SUPERUSER';
    END IF;
    RETURN true;
END $$;
CREATE FUNCTION sid.trap() RETURNS bool LANGUAGE sql IMMUTABLE AS $$SELECT sid.esc()$$;
CREATE TABLE sid.users (id text PRIMARY KEY, name text);
CREATE TABLE sid.docs (id serial PRIMARY KEY, owner_id text);
INSERT INTO sid.users VALUES ('alice', 'Alice'), ('bob', 'Bob'), ('carol', NULL), ('dave', 'Dave'), ('erin', 'Erin');
INSERT INTO sid.docs (owner_id) VALUES ('alice'), ('carol'), ('carol'), (NULL), ('nobody');
CREATE INDEX ON sid.users (name) WHERE sid.trap();
CREATE INDEX ON sid.docs (owner_id) WHERE sid.trap();
RESET ROLE;
-- A resource table of another owner, which sid_owner cannot read; its
-- owner's code logs the role it runs as.
SET ROLE sid_other;
CREATE TABLE sid2.log (who name);
GRANT INSERT ON sid2.log TO PUBLIC;
CREATE FUNCTION sid2.note() RETURNS bool LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO sid2.log VALUES (current_user);
    RETURN true;
END $$;
CREATE FUNCTION sid2.trap() RETURNS bool LANGUAGE sql IMMUTABLE AS $$SELECT sid2.note()$$;
CREATE TABLE sid2.notes (id serial PRIMARY KEY, author text);
INSERT INTO sid2.notes (author) VALUES ('dave'), (NULL);
CREATE INDEX ON sid2.notes (author) WHERE sid2.trap();
RESET ROLE;
TRUNCATE sid2.log;

-- A superuser creates the personal tenants: the table owners' code runs as
-- each owner, never as the superuser.
SELECT * FROM tenancy.create_personal_tenants('sid.users', 'id', 'name',
    ARRAY['sid.docs'::regclass, 'sid2.notes'::regclass], ARRAY['owner_id'::name, 'author'::name]);
SELECT rolsuper AS owner_became_superuser FROM pg_roles WHERE rolname = 'sid_owner';
SELECT DISTINCT who FROM sid2.log ORDER BY who;
SELECT t.slug, t.name, m.user_key, m.role
  FROM tenancy.tenants t JOIN tenancy.memberships m ON m.tenant = t.id
 ORDER BY t.slug;
-- Idempotent.
SELECT * FROM tenancy.create_personal_tenants('sid.users', 'id', 'name',
    ARRAY['sid.docs'::regclass, 'sid2.notes'::regclass], ARRAY['owner_id'::name, 'author'::name]);

-- verify(): each table read as its owner, so the users table's owner need
-- not read the other resource tables.
TRUNCATE sid2.log;
SELECT check_name, relation, status, rows_affected, detail
  FROM tenancy.verify() WHERE check_name = 'user_without_tenant';
SET ROLE sid_other;
INSERT INTO sid2.notes (author) VALUES ('bob'), ('erin');
RESET ROLE;
SELECT check_name, relation, status, rows_affected, detail
  FROM tenancy.verify() WHERE check_name = 'user_without_tenant';
SELECT check_name, rows_affected, detail
  FROM tenancy.verify(max_rows => 1) WHERE check_name = 'user_without_tenant';
SELECT rolsuper AS owner_became_superuser FROM pg_roles WHERE rolname = 'sid_owner';
SELECT DISTINCT who FROM sid2.log ORDER BY who;

-- A caller who cannot read a table gets an error and nothing is created.
CREATE ROLE sid_caller;
GRANT USAGE ON SCHEMA tenancy TO sid_caller;
GRANT EXECUTE ON FUNCTION tenancy.create_personal_tenants(regclass, name, name, regclass[], name[], text) TO sid_caller;
GRANT SELECT ON sid.users, sid.docs TO sid_caller;
SET ROLE sid_caller;
SELECT * FROM tenancy.create_personal_tenants('sid.users', 'id', 'name',
    ARRAY['sid.docs'::regclass, 'sid2.notes'::regclass], ARRAY['owner_id'::name, 'author'::name]);
RESET ROLE;
SELECT count(*) AS tenants FROM tenancy.tenants WHERE slug LIKE 'user-%';

DROP SCHEMA sid, sid2 CASCADE;
DROP OWNED BY sid_caller;
DROP ROLE sid_caller, sid_other, sid_owner;
DROP EXTENSION tenancy;

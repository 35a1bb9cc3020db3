-- Shared tables (issue 14, item 8): reference data every tenant reads
-- (films, languages, cities) is marked shared: the advisories stop asking
-- for the tenant in foreign keys that point at it, verify() lists it as
-- shared and fails when a role other than its owner may write it.
SET tenancy.tenant_type = 'bigint';
CREATE EXTENSION tenancy;
\set ECHO none
\ir ../test/fixtures/store_rental.sql
\set ECHO all
CREATE ROLE vs_app;
CREATE ROLE vs_writer;
CREATE ROLE vs_member IN ROLE vs_writer;
GRANT USAGE ON SCHEMA rental TO vs_app;
GRANT SELECT ON ALL TABLES IN SCHEMA rental TO vs_app;
INSERT INTO tenancy.tables (relation, column_name) VALUES ('rental.store', 'store_id'), ('rental.inventory', 'store_id');
\set shared 'SELECT check_name, relation, status, detail, fix FROM tenancy.verify() WHERE check_name = ''shared_table'' ORDER BY relation::text'

-- Before: nothing is shared, and the advisories ask for the tenant in
-- inventory's key to film.
:shared;
SELECT object FROM tenancy.rls_advisories('rental.inventory', 'store_id') WHERE kind = 'foreign_key_without_tenant' ORDER BY object;

-- Mark the reference tables shared.
SELECT tenancy.mark_shared(t) FROM unnest(ARRAY['rental.film', 'rental.language', 'rental.category',
                                               'rental.film_category', 'rental.country', 'rental.city']::regclass[]) t;
SELECT tenancy.mark_shared('rental.film') AS marked_again;
SELECT relation, marked_by = session_user AS by_me FROM tenancy.shared_tables ORDER BY relation::text;
SELECT object FROM tenancy.rls_advisories('rental.inventory', 'store_id') WHERE kind = 'foreign_key_without_tenant' ORDER BY object;
:shared;
-- The checks on registered tables do not ask about them either.
SELECT count(*) AS about_shared FROM tenancy.verify()
 WHERE status <> 'ok' AND (detail ~ 'rental\.(film|language|category|country|city)\M' OR relation::text ~ 'rental\.(film|city)');

-- A role that may write a shared table: a failure, with the REVOKE as fix
-- (a table grant, a column grant, PUBLIC).
GRANT INSERT, UPDATE ON rental.film TO vs_app;
GRANT UPDATE (name) ON rental.language TO vs_writer;
GRANT TRUNCATE ON rental.category TO PUBLIC;
:shared;
SELECT fix FROM tenancy.verify() WHERE check_name = 'shared_table' AND status = 'failure' ORDER BY relation::text \gexec
:shared;
-- A role writing through a membership of the owner is named too.
CREATE ROLE vs_owner;
ALTER TABLE rental.country OWNER TO vs_owner;
GRANT vs_owner TO vs_member;
SELECT relation, status, detail, fix FROM tenancy.verify() WHERE check_name = 'shared_table' AND status <> 'ok';
REVOKE vs_owner FROM vs_member;
ALTER TABLE rental.country OWNER TO CURRENT_USER;

-- A table is tenant data or shared, not both.
\set VERBOSITY sqlstate
SELECT tenancy.mark_shared('rental.store');
INSERT INTO tenancy.tables (relation, column_name) VALUES ('rental.film', 'film_id');
SELECT tenancy.add_tenant_column('rental.city');
\set VERBOSITY default
SELECT tenancy.mark_shared('rental.store');
INSERT INTO tenancy.tables (relation, column_name) VALUES ('rental.film', 'film_id');
-- Bad input: NULL, a view, a partition, not a table; nothing changes.
\set VERBOSITY sqlstate
SELECT tenancy.mark_shared(NULL);
SELECT tenancy.unmark_shared(NULL);
SELECT tenancy.mark_shared('rental.customer_list');
SELECT tenancy.mark_shared('rental.payment_p2022_01');
SELECT tenancy.mark_shared('rental.store_pkey');
-- Only the extension owner (or whom it grants) marks tables.
SET ROLE vs_app;
SELECT tenancy.mark_shared('rental.staff');
SELECT tenancy.unmark_shared('rental.film');
RESET ROLE;
\set VERBOSITY default
SELECT count(*) AS shared FROM tenancy.shared_tables;

-- A dropped shared table is reported, and its fix forgets it.
CREATE TABLE rental.gone (id int PRIMARY KEY);
SELECT tenancy.mark_shared('rental.gone');
DROP TABLE rental.gone;
SELECT status, detail ~ 'no longer exists' AS gone, fix ~ '^SELECT tenancy.unmark_shared' AS fix_unmarks
  FROM tenancy.verify() WHERE check_name = 'shared_table' AND status <> 'ok';
\set ECHO none
SELECT fix FROM tenancy.verify() WHERE check_name = 'shared_table' AND detail ~ 'no longer exists' \gexec
\set ECHO all

-- Unmarked, a table is asked about again; unmarking twice says false.
SELECT tenancy.unmark_shared('rental.film'), tenancy.unmark_shared('rental.film') AS again;
SELECT object FROM tenancy.rls_advisories('rental.inventory', 'store_id') WHERE kind = 'foreign_key_without_tenant' ORDER BY object;
-- pg_dump keeps the marks.
SELECT 'tenancy.shared_tables'::regclass = ANY (extconfig) AS dumped FROM pg_extension WHERE extname = 'tenancy';

SET client_min_messages = warning;
DROP SCHEMA rental CASCADE;
RESET client_min_messages;
DROP EXTENSION tenancy;
DROP ROLE vs_app, vs_member, vs_writer, vs_owner;
RESET tenancy.tenant_type;

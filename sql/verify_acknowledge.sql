-- Acknowledged findings (issue 14, item 9): a DBA accepts a verify()
-- finding about a role or an object (an intended BYPASSRLS reporting role,
-- a report function); it is reported as acknowledged, by whom, when and
-- why, until the facts it accepted change: then it lapses and is reported
-- again, with a note.
SET tenancy.tenant_type = 'bigint';
CREATE EXTENSION tenancy;
\set ECHO none
\ir ../test/fixtures/store_rental.sql
\set ECHO all
CREATE ROLE va_reporting BYPASSRLS;
CREATE ROLE va_app;
CREATE ROLE va_group;
GRANT USAGE ON SCHEMA rental TO va_reporting, va_app;
GRANT SELECT ON ALL TABLES IN SCHEMA rental TO va_reporting, va_app;
INSERT INTO tenancy.tables (relation, column_name) VALUES ('rental.customer', 'store_id'), ('rental.inventory', 'store_id');
SELECT tenancy.mark_shared('rental.film');
GRANT UPDATE ON rental.film TO va_app;
-- The notes carry a timestamp: shown as <when>.
\set report 'SELECT check_name, relation, status, regexp_replace(detail, ''at \\d{4}-\\d\\d-\\d\\d \\d\\d:\\d\\d:\\d\\d[-+]\\d\\d(:\\d\\d)?'', ''at <when>'', ''g'') AS detail FROM tenancy.verify() WHERE check_name IN (''bypassrls_role'', ''security_definer_function'', ''materialized_view'', ''shared_table'') AND status <> ''ok'' ORDER BY check_name, relation::text, detail'

-- Before: a warning per table the reporting role reads, failures for the
-- report function, the materialized view and the writable shared table.
:report;

-- Acknowledged: reported as such, with who and why.
SELECT tenancy.acknowledge('bypassrls_role', 'va_reporting', 'the monthly cross-store report');
SELECT tenancy.acknowledge('security_definer_function', 'rental.rewards_report(numeric)', 'rewards are computed chain-wide');
SELECT tenancy.acknowledge('materialized_view', 'rental.rental_by_category', 'category totals are published');
SELECT tenancy.acknowledge('shared_table', 'rental.film', 'the catalog team edits films');
SELECT check_name, object, reason, acknowledged_by = session_user AS by_me, acknowledged_at <= now() AS dated, length(fingerprint) AS fp
  FROM tenancy.acknowledgements ORDER BY check_name;
:report;
SELECT count(*) FILTER (WHERE status = 'acknowledged') AS acknowledged,
       count(*) FILTER (WHERE status IN ('warning', 'failure')) AS not_ok FROM tenancy.verify();

-- Another BYPASSRLS role is not covered by the acknowledgement.
CREATE ROLE va_other BYPASSRLS;
GRANT SELECT ON rental.customer TO va_other;
SELECT relation, status, regexp_replace(detail, 'at \d{4}-\d\d-\d\d \d\d:\d\d:\d\d[-+]\d\d(:\d\d)?', 'at <when>') AS detail
  FROM tenancy.verify() WHERE check_name = 'bypassrls_role' AND status <> 'ok' ORDER BY relation::text, status;
DROP OWNED BY va_other;
DROP ROLE va_other;

-- The facts change: each acknowledgement lapses, the finding is back with a
-- note.  A role: an attribute, a membership, a privilege on a registered
-- table.
ALTER ROLE va_reporting LOGIN;
SELECT relation, status, detail ~ 'acknowledgement by .* lapsed' AS lapsed FROM tenancy.verify() WHERE check_name = 'bypassrls_role' AND status <> 'ok' ORDER BY relation::text;
ALTER ROLE va_reporting NOLOGIN;
SELECT DISTINCT status FROM tenancy.verify() WHERE check_name = 'bypassrls_role';
GRANT va_group TO va_reporting;
SELECT DISTINCT status FROM tenancy.verify() WHERE check_name = 'bypassrls_role';
REVOKE va_group FROM va_reporting;
GRANT INSERT ON rental.inventory TO va_reporting;
SELECT DISTINCT status FROM tenancy.verify() WHERE check_name = 'bypassrls_role';
-- acknowledged again, for the new facts
SELECT tenancy.acknowledge('bypassrls_role', 'va_reporting', 'the monthly cross-store report, and stock corrections');
SELECT DISTINCT status FROM tenancy.verify() WHERE check_name = 'bypassrls_role';
-- A function: its body, its ACL, its owner.
CREATE OR REPLACE FUNCTION rental.rewards_report(min_total numeric) RETURNS SETOF rental.customer
LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT cu.* FROM rental.customer cu WHERE cu.active
$$;
SELECT status, regexp_replace(regexp_replace(detail, '.*; the acknowledgement', 'the acknowledgement'),
                              'at \d{4}-\d\d-\d\d \d\d:\d\d:\d\d[-+]\d\d(:\d\d)?', 'at <when>') AS note
  FROM tenancy.verify() WHERE check_name = 'security_definer_function' AND status <> 'ok';
SELECT tenancy.acknowledge('security_definer_function', 'rental.rewards_report(numeric)', 'rewards are computed chain-wide');
SELECT status FROM tenancy.verify() WHERE check_name = 'security_definer_function' AND status <> 'ok';
GRANT EXECUTE ON FUNCTION rental.rewards_report(numeric) TO va_app;
SELECT status FROM tenancy.verify() WHERE check_name = 'security_definer_function' AND status <> 'ok';
-- A relation: who may read the materialized view, who may write the
-- shared table.
GRANT SELECT ON rental.rental_by_category TO va_group;
SELECT status FROM tenancy.verify() WHERE check_name = 'materialized_view' AND status <> 'ok';
GRANT DELETE ON rental.film TO va_app;
SELECT status FROM tenancy.verify() WHERE check_name = 'shared_table' AND status <> 'ok';

-- Withdrawn: the finding is reported as before, with no note.
SELECT tenancy.unacknowledge('shared_table', 'rental.film'), tenancy.unacknowledge('shared_table', 'rental.film') AS again;
SELECT status, detail ~ 'acknowledg' AS noted FROM tenancy.verify() WHERE check_name = 'shared_table' AND status <> 'ok';

-- Bad input changes nothing: NULLs, a check whose findings are not about
-- an object, an object that does not exist, an empty reason; and only the
-- extension owner (or whom it grants) acknowledges.
SELECT count(*) AS acks FROM tenancy.acknowledgements;
\set VERBOSITY sqlstate
SELECT tenancy.acknowledge(NULL, 'va_reporting', 'x');
SELECT tenancy.acknowledge('bypassrls_role', NULL, 'x');
SELECT tenancy.acknowledge('bypassrls_role', 'va_reporting', NULL);
SELECT tenancy.unacknowledge(NULL, 'va_reporting');
SELECT tenancy.acknowledge('null_tenant', 'rental.customer', 'x');
SELECT tenancy.acknowledge('bypassrls_role', 'va_nobody', 'x');
SELECT tenancy.acknowledge('security_definer_function', 'rental.no_such(int)', 'x');
SELECT tenancy.acknowledge('materialized_view', 'rental.no_such', 'x');
SELECT tenancy.acknowledge('bypassrls_role', 'va_reporting', '  ');
SET ROLE va_app;
SELECT tenancy.acknowledge('bypassrls_role', 'va_app', 'x');
SELECT tenancy.unacknowledge('bypassrls_role', 'va_reporting');
SELECT * FROM tenancy.acknowledgements;
RESET ROLE;
\set VERBOSITY default
SELECT tenancy.acknowledge('null_tenant', 'rental.customer', 'x');
SELECT tenancy.acknowledge('bypassrls_role', 'va_nobody', 'x');
SELECT count(*) AS acks FROM tenancy.acknowledgements;
-- pg_dump keeps them.
SELECT 'tenancy.acknowledgements'::regclass = ANY (extconfig) AS dumped FROM pg_extension WHERE extname = 'tenancy';

SET client_min_messages = warning;
DROP SCHEMA rental CASCADE;
RESET client_min_messages;
DROP EXTENSION tenancy;
DROP ROLE va_reporting, va_app, va_group;
RESET tenancy.tenant_type;

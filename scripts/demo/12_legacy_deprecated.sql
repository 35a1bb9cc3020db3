-- 12. Retire the legacy path, 1: the legacy role deprecated
-- Every transaction of legacy_app is now counted, and writes a WARNING to
-- the server log (at most one a minute: tenancy.deprecation_warning_interval)
-- naming the role and its application_name; the legacy client sees none.
SELECT tenancy.deprecate_role_sql('legacy_app');
SELECT tenancy.deprecate_role('legacy_app') IS NOT NULL AS deprecated;

\c 'dbname=demo user=legacy_app application_name=legacy-web'
SELECT count(*) AS projects_seen FROM projects;
\c - postgres
-- The server log (the client above saw nothing):
\! grep -h 'legacy role "legacy_app"' "$TN_DEMO_LOG" | tail -n 1 | sed 's/^[^]]*] //'
SELECT role, transactions, warnings, last_application_name,
       to_char(last_run, 'HH24:MI:SS') AS last_run, retirable
  FROM tenancy.deprecated_roles;

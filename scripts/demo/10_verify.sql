-- 10. Verify: is the enforcement sound, and what is left before the schema is strict?
SELECT status, count(*) FROM tenancy.verify() GROUP BY status ORDER BY status;
SELECT check_name, relation, status, fix
  FROM tenancy.verify() WHERE status <> 'ok' ORDER BY status, check_name, relation::text;
\echo '-- shadow_divergence: counted in step 6, while a tenant still in shadow read every project'
\echo '-- (what shadow mode shows); the contract step drains the counters, as its fix says.'

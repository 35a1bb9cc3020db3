-- 8. Verify: is it safe to enforce, and what is left before the schema is strict?
SELECT status, count(*) FROM tenancy.verify() GROUP BY status ORDER BY status;
SELECT check_name, relation, status, fix
  FROM tenancy.verify() WHERE status <> 'ok' ORDER BY status, check_name, relation::text;

-- 3. Expand: add tenant columns, no rewrite, a brief lock each
-- Existing rows stay NULL (to be backfilled); new rows get the current
-- tenant, or the implicit one when none is set, so the legacy application
-- keeps writing valid rows.
SELECT tenancy.add_tenant_column_sql('projects');
SELECT tenancy.add_tenant_column('projects');
SELECT tenancy.add_tenant_column('tasks');
SELECT tenancy.add_tenant_column('comments');
SELECT relation, column_name, stage FROM tenancy.tables ORDER BY relation::text;

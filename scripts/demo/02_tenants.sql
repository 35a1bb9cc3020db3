-- 2. Register tenants: the original customer (implicit) and personal workspaces
-- The whole database belongs to the original customer: it becomes the
-- implicit tenant.  Users' personal projects move to a personal tenant each
-- (the shadow-organization pattern), owned by the user.
CREATE EXTENSION tenancy;
SELECT tenancy.create_tenant('original', 'Original customer', '00000000-0000-4000-8000-000000000001') AS implicit_tenant;
SELECT tenancy.set_implicit_tenant('original');

CREATE VIEW personal_projects AS SELECT owner_id FROM projects WHERE is_personal;
SELECT * FROM tenancy.create_personal_tenants('users', 'id', 'name',
                                              ARRAY['personal_projects'::regclass], ARRAY['owner_id'::name]);
SELECT tenancy.add_member('original', '1', 'owner');   -- the customer's administrator
SELECT count(*) AS tenants, count(*) FILTER (WHERE is_implicit) AS implicit FROM tenancy.tenants;

-- Two roles: the unchanged legacy application, bound to the implicit
-- tenant, and the new multi-tenant code path, which sets a tenant per
-- transaction.  Neither owns the tables nor bypasses row level security.
CREATE ROLE legacy_app LOGIN;
CREATE ROLE app LOGIN;
GRANT SELECT, INSERT, UPDATE, DELETE ON users, projects, tasks, comments TO legacy_app, app;
GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO legacy_app, app;
SELECT tenancy.bind_role('legacy_app');
ALTER ROLE app SET tenancy.allow_session_tenant = off;   -- it runs behind a transaction-mode pooler

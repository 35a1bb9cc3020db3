-- test/search_path.sql: the registry lookups behind set_tenant() run as the
-- registry's owner; a caller's search_path must not make them run the
-- caller's code (here: a domain named uuid / text whose CHECK calls a
-- function of the caller's), or any role that can create a schema could
-- run SQL as the extension owner.
BEGIN;
SELECT plan(6);

CREATE EXTENSION tenancy;
SELECT FROM tenancy.create_tenant('sp-one', 'One', '51000000-0000-4000-8000-000000000001');
SELECT FROM tenancy.create_tenant('sp-two', 'Two', '51000000-0000-4000-8000-000000000002');
SELECT FROM tenancy.create_tenant('sp-three', 'Three', '51000000-0000-4000-8000-000000000003');

-- Who ran the caller's function, if anyone did.
CREATE TABLE public.search_path_calls (who text, arg text);
GRANT INSERT ON public.search_path_calls TO PUBLIC;

CREATE ROLE search_path_caller;
CREATE SCHEMA search_path_evil AUTHORIZATION search_path_caller;
SET LOCAL ROLE search_path_caller;
CREATE FUNCTION search_path_evil.seen(v text) RETURNS boolean
LANGUAGE sql AS $$
    INSERT INTO public.search_path_calls VALUES (current_user, v) RETURNING true
$$;
CREATE DOMAIN search_path_evil.uuid AS pg_catalog.uuid CHECK (search_path_evil.seen(VALUE::pg_catalog.text));
CREATE DOMAIN search_path_evil.text AS pg_catalog.text CHECK (search_path_evil.seen(VALUE));

-- First lookups under the normal search_path: the registry plans are made.
SELECT tenancy.set_tenant('51000000-0000-4000-8000-000000000001') AS key1 \gset
SELECT tenancy.set_tenant('sp-one') AS slug1 \gset

-- New lookups (not cached) with the caller's schema ahead of pg_catalog:
-- the plans are revalidated under this search_path.
SET LOCAL search_path = search_path_evil, pg_catalog;
SELECT tenancy.set_tenant('51000000-0000-4000-8000-000000000002') AS key2 \gset
SELECT tenancy.set_tenant('sp-three') AS slug3 \gset
RESET search_path;
RESET ROLE;

SELECT is(:'key1'::text, '51000000-0000-4000-8000-000000000001'::text, 'set_tenant() by key, normal search_path');
SELECT is(:'slug1'::text, '51000000-0000-4000-8000-000000000001'::text, 'set_tenant() by slug, normal search_path');
SELECT is(:'key2'::text, '51000000-0000-4000-8000-000000000002'::text, 'set_tenant() by key, hostile search_path');
SELECT is(:'slug3'::text, '51000000-0000-4000-8000-000000000003'::text, 'set_tenant() by slug, hostile search_path');
SELECT is((SELECT count(*) FROM public.search_path_calls), 0::bigint,
          'the registry lookups never ran a function of the caller''s');
SELECT is_empty($$SELECT who FROM public.search_path_calls WHERE who <> 'search_path_caller'$$,
                'nothing of the caller''s ran as another role');

SELECT * FROM finish();
ROLLBACK;

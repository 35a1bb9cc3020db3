-- Signed tenant tokens (issue 16): the SQL-level refusals that need no keys
-- (test/token.sh covers signatures, claims and keys on a server with a keys
-- file).  Every refusal leaves the tenant as it was.
CREATE EXTENSION tenancy;
SELECT tenancy.create_tenant('acme', 'Acme', 'aaaaaaaa-0000-0000-0000-000000000001');
CREATE ROLE token_app;
\set VERBOSITY default
\set ON_ERROR_STOP 0
-- Each refusal is followed by its SQLSTATE.

BEGIN;
SELECT tenancy.set_tenant('acme');
SAVEPOINT s;
-- NULL and empty tokens.
SELECT tenancy.set_tenant_token(NULL);
\echo :LAST_ERROR_SQLSTATE
ROLLBACK TO SAVEPOINT s;
SELECT tenancy.set_tenant_token('');
\echo :LAST_ERROR_SQLSTATE
ROLLBACK TO SAVEPOINT s;
-- Not three base64url parts.
SELECT tenancy.set_tenant_token('abc');
\echo :LAST_ERROR_SQLSTATE
ROLLBACK TO SAVEPOINT s;
SELECT tenancy.set_tenant_token('a.b.c.d');
\echo :LAST_ERROR_SQLSTATE
ROLLBACK TO SAVEPOINT s;
SELECT tenancy.set_tenant_token('eyJhbGciOiJIUzI1NiJ9..c2ln');
\echo :LAST_ERROR_SQLSTATE
ROLLBACK TO SAVEPOINT s;
-- Characters outside base64url, padding, an impossible length.
SELECT tenancy.set_tenant_token('eyJhbGciOiJIUzI1NiJ9.e30.c2ln+/');
\echo :LAST_ERROR_SQLSTATE
ROLLBACK TO SAVEPOINT s;
SELECT tenancy.set_tenant_token('eyJhbGciOiJIUzI1NiJ9.e30=.c2ln');
\echo :LAST_ERROR_SQLSTATE
ROLLBACK TO SAVEPOINT s;
SELECT tenancy.set_tenant_token('eyJhbGciOiJIUzI1NiJ9.e.c2ln');
\echo :LAST_ERROR_SQLSTATE
ROLLBACK TO SAVEPOINT s;
-- Non-canonical base64url: unused bits set ("e31" decodes like "e30").
SELECT tenancy.set_tenant_token('eyJhbGciOiJIUzI1NiJ9.e31.c2ln');
\echo :LAST_ERROR_SQLSTATE
ROLLBACK TO SAVEPOINT s;
-- Over 8 kB.
SELECT tenancy.set_tenant_token('eyJhbGciOiJIUzI1NiJ9.' || repeat('A', 8200) || '.c2ln');
\echo :LAST_ERROR_SQLSTATE
ROLLBACK TO SAVEPOINT s;
-- A header that is not JSON, or not an object.
SELECT tenancy.set_tenant_token(translate(encode('{"alg":', 'base64'), '+/=', '-_') || '.e30.c2ln');
\echo :LAST_ERROR_SQLSTATE
ROLLBACK TO SAVEPOINT s;
SELECT tenancy.set_tenant_token(translate(encode('["HS256"]', 'base64'), '+/=', '-_') || '.e30.c2ln');
\echo :LAST_ERROR_SQLSTATE
ROLLBACK TO SAVEPOINT s;
-- alg none (in any case) or missing, and unknown algorithms: refused before any key is read.
SELECT tenancy.set_tenant_token(rtrim(translate(encode('{"alg":"none","typ":"JWT"}', 'base64'), '+/', '-_'), '=')
       || '.' || rtrim(translate(encode('{"tenant_id":"acme"}', 'base64'), '+/', '-_'), '=') || '.');
\echo :LAST_ERROR_SQLSTATE
ROLLBACK TO SAVEPOINT s;
SELECT tenancy.set_tenant_token(rtrim(translate(encode('{"alg":"None"}', 'base64'), '+/', '-_'), '=')
       || '.' || rtrim(translate(encode('{"tenant_id":"acme"}', 'base64'), '+/', '-_'), '=') || '.c2ln');
\echo :LAST_ERROR_SQLSTATE
ROLLBACK TO SAVEPOINT s;
SELECT tenancy.set_tenant_token(rtrim(translate(encode('{"typ":"JWT"}', 'base64'), '+/', '-_'), '=')
       || '.' || rtrim(translate(encode('{"tenant_id":"acme"}', 'base64'), '+/', '-_'), '=') || '.c2ln');
\echo :LAST_ERROR_SQLSTATE
ROLLBACK TO SAVEPOINT s;
SELECT tenancy.set_tenant_token(rtrim(translate(encode('{"alg":"HS512"}', 'base64'), '+/', '-_'), '=')
       || '.' || rtrim(translate(encode('{"tenant_id":"acme"}', 'base64'), '+/', '-_'), '=') || '.c2ln');
\echo :LAST_ERROR_SQLSTATE
ROLLBACK TO SAVEPOINT s;
-- A critical header extension nobody understands.
SELECT tenancy.set_tenant_token(rtrim(translate(encode('{"alg":"HS256","crit":["b64"],"b64":false}', 'base64'), '+/', '-_'), '=')
       || '.' || rtrim(translate(encode('{"tenant_id":"acme"}', 'base64'), '+/', '-_'), '=') || '.c2ln');
\echo :LAST_ERROR_SQLSTATE
ROLLBACK TO SAVEPOINT s;
-- A well-formed HS256 token, but no keys file is configured.
SELECT tenancy.set_tenant_token(rtrim(translate(encode('{"alg":"HS256","typ":"JWT"}', 'base64'), '+/', '-_'), '=')
       || '.' || rtrim(translate(encode('{"tenant_id":"acme"}', 'base64'), '+/', '-_'), '=') || '.c2ln');
\echo :LAST_ERROR_SQLSTATE
ROLLBACK TO SAVEPOINT s;
-- The tenant is still acme, and no user key was set.
SELECT tenancy.current_tenant_text() AS still_acme, tenancy.current_user_key() IS NULL AS no_user_key;
COMMIT;

-- The user key is set by set_tenant_token() only: not by SET, set_config()
-- or a function's SET clause, for a superuser either.
SET tenancy.token_user = '36:aaaaaaaa-0000-0000-0000-000000000001alice';
SELECT set_config('tenancy.token_user', '36:aaaaaaaa-0000-0000-0000-000000000001alice', true);
SET ROLE token_app;
BEGIN;
SET LOCAL tenancy.token_user = '36:aaaaaaaa-0000-0000-0000-000000000001alice';
ROLLBACK;
CREATE FUNCTION pg_temp.forge() RETURNS text LANGUAGE sql
    SET tenancy.token_user = '36:aaaaaaaa-0000-0000-0000-000000000001alice'
    AS 'SELECT tenancy.current_user_key()';
SELECT tenancy.set_tenant('acme', is_local => false);
SELECT tenancy.current_user_key() IS NULL AS no_user_key;
-- Clearing is always allowed.
SET tenancy.token_user = '';
RESET tenancy.token_user;
-- The keys file's path is for superusers only.
SHOW tenancy.token_keys_file;
SELECT count(*) AS visible FROM pg_settings WHERE name = 'tenancy.token_keys_file';
RESET ROLE;
SELECT tenancy.clear_tenant();
SHOW tenancy.token_tenant_claim;
SHOW tenancy.token_leeway;
SHOW tenancy.token_require_exp;

DROP ROLE token_app;
DROP EXTENSION tenancy;

-- src/as_owner.sql: work on user tables as the less privileged of the requester and the owners (C: as_owner.c).

------------------------------------------------------------------------------
-- Work on user tables runs with no more rights than the table owner's
-- (src/as_owner.c): the owner when the requesting role has the owner's
-- privileges (a superuser, the owner, a member of it), else the requesting
-- role itself; under SECURITY_RESTRICTED_OPERATION, as VACUUM and ANALYZE.
-- They never run anything with more rights than the caller has, so they
-- stay executable by PUBLIC.
------------------------------------------------------------------------------

CREATE FUNCTION tenancy.table_exec(rel regclass, as_role regrole, sql text) RETURNS bigint
    AS 'MODULE_PATHNAME', 'tenancy_table_exec'
    LANGUAGE C VOLATILE;
CREATE FUNCTION tenancy.table_exec(rel regclass, as_role regrole, sql text, VARIADIC args "any") RETURNS bigint
    AS 'MODULE_PATHNAME', 'tenancy_table_exec'
    LANGUAGE C VOLATILE;
COMMENT ON FUNCTION tenancy.table_exec(regclass, regrole, text, "any")
    IS 'run a statement on a table as the less privileged of as_role (NULL: the caller) and its owner, under SECURITY_RESTRICTED_OPERATION; returns the rows processed';
CREATE FUNCTION tenancy.table_query(rel regclass, as_role regrole, sql text) RETURNS text[]
    AS 'MODULE_PATHNAME', 'tenancy_table_query'
    LANGUAGE C VOLATILE;
CREATE FUNCTION tenancy.table_query(rel regclass, as_role regrole, sql text, VARIADIC args "any") RETURNS text[]
    AS 'MODULE_PATHNAME', 'tenancy_table_query'
    LANGUAGE C VOLATILE;
COMMENT ON FUNCTION tenancy.table_query(regclass, regrole, text, "any")
    IS 'run a query on a table as table_exec() does; its first row as text, NULL when it returns none';

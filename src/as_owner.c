/*-------------------------------------------------------------------------
 * as_owner.c
 *	  Run work on a user table with no more rights than its owner's.
 *
 * A table's owner controls code that runs whenever the table is read or
 * written: index expressions and predicates (the planner evaluates them),
 * triggers, column defaults, operators, functions that a policy or a
 * source expression calls.  PostgreSQL's own maintenance commands (VACUUM,
 * ANALYZE, REFRESH MATERIALIZED VIEW, CREATE INDEX) therefore switch to the
 * table's owner under SECURITY_RESTRICTED_OPERATION before they touch the
 * table.  tenancy does the same for every statement it runs on a user
 * table: counting unmigrated rows, verify()'s row checks, backfill batches
 * and contract steps.
 *
 * The role a statement runs as is the less privileged of the requesting
 * role and the table's owner:
 *
 *	- a role that has the privileges of the owner (the owner itself, a
 *	  member of the owner role, a superuser) runs as the owner;
 *	- any other role runs as itself (it holds grants on the table, and
 *	  gains nothing of the owner's).
 *
 * The requesting role is the caller, or a role named by the caller that
 * the caller may become (a backfill job runs as the role that created it).
 * Under SECURITY_RESTRICTED_OPERATION the code cannot SET ROLE, create
 * temporary objects or open WITH HOLD cursors; settings it changes are
 * undone when the statement ends.  SECURITY_NOFORCE_RLS lets the owner see
 * every row of a table under FORCE ROW LEVEL SECURITY, as referential
 * integrity checks do, without being a superuser: a count of NULL tenants
 * must see every row.
 *-------------------------------------------------------------------------
 */
#include "tenancy.h"

#include "access/htup_details.h"
#include "catalog/pg_class.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "utils/acl.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/lsyscache.h"
#include "utils/syscache.h"

/* The owner of a table, or an error if there is no such relation. */
static Oid
relation_owner(Oid relid)
{
	HeapTuple	tup;
	Oid			owner;

	tup = SearchSysCache1(RELOID, ObjectIdGetDatum(relid));
	if (!HeapTupleIsValid(tup))
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_TABLE),
				 errmsg("relation with OID %u does not exist", relid)));
	owner = ((Form_pg_class) GETSTRUCT(tup))->relowner;
	ReleaseSysCache(tup);
	return owner;
}

/* The role work on relid requested by "requester" runs as. */
Oid
as_owner_role(Oid relid, Oid requester)
{
	Oid			owner = relation_owner(relid);

	if (has_privs_of_role(requester, owner))
		return owner;
	return requester;
}

/*
 * Switch to the role that work on relid runs as (see above), under
 * SECURITY_RESTRICTED_OPERATION and SECURITY_NOFORCE_RLS, with a GUC nest
 * level of its own.  as_owner_end() switches back; an error switches back
 * on its own (transaction and subtransaction abort restore the user ID and
 * the settings).
 */
void
as_owner_begin(Oid relid, Oid requester, AsOwnerState *state)
{
	Oid			role = as_owner_role(relid, requester);

	GetUserIdAndSecContext(&state->save_userid, &state->save_sec_context);
	SetUserIdAndSecContext(role,
						   state->save_sec_context |
						   SECURITY_LOCAL_USERID_CHANGE |
						   SECURITY_RESTRICTED_OPERATION |
						   SECURITY_NOFORCE_RLS);
	state->save_nestlevel = NewGUCNestLevel();
}

void
as_owner_end(AsOwnerState *state)
{
	AtEOXact_GUC(false, state->save_nestlevel);
	SetUserIdAndSecContext(state->save_userid, state->save_sec_context);
}

/*
 * The requesting role of the SQL entry points: the caller, or a role the
 * caller names and has the privileges of.
 */
static Oid
requester_arg(FunctionCallInfo fcinfo, int argno)
{
	Oid			caller = GetUserId();
	Oid			role;

	if (PG_ARGISNULL(argno))
		return caller;
	role = PG_GETARG_OID(argno);
	if (!has_privs_of_role(caller, role))
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("permission denied to run as role \"%s\"",
						GetUserNameFromId(role, false)),
				 errdetail("Role \"%s\" does not have the privileges of role \"%s\".",
						   GetUserNameFromId(caller, false),
						   GetUserNameFromId(role, false))));
	return role;
}

/*
 * Run one statement as the role work on the table runs as.  Arguments past
 * the third are the statement's parameters $1, $2, ... with their own types.
 */
static void
run_statement(FunctionCallInfo fcinfo, AsOwnerState *state)
{
	Oid			relid;
	Oid			requester;
	char	   *sql;
	int			nargs = PG_NARGS() - 3;
	Oid		   *argtypes = NULL;
	Datum	   *values = NULL;
	char	   *nulls = NULL;
	int			rc;

	if (PG_ARGISNULL(0) || PG_ARGISNULL(2))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("relation and statement must not be null")));
	relid = PG_GETARG_OID(0);
	requester = requester_arg(fcinfo, 1);
	sql = text_to_cstring(PG_GETARG_TEXT_PP(2));

	if (nargs > 0)
	{
		argtypes = palloc(nargs * sizeof(Oid));
		values = palloc(nargs * sizeof(Datum));
		nulls = palloc(nargs * sizeof(char));
		for (int i = 0; i < nargs; i++)
		{
			argtypes[i] = get_fn_expr_argtype(fcinfo->flinfo, i + 3);
			if (!OidIsValid(argtypes[i]))
				ereport(ERROR,
						(errcode(ERRCODE_INDETERMINATE_DATATYPE),
						 errmsg("could not determine the type of parameter $%d", i + 1)));
			if (argtypes[i] == UNKNOWNOID)
				argtypes[i] = TEXTOID;
			nulls[i] = PG_ARGISNULL(i + 3) ? 'n' : ' ';
			values[i] = PG_ARGISNULL(i + 3) ? (Datum) 0 : PG_GETARG_DATUM(i + 3);
		}
	}

	as_owner_begin(relid, requester, state);
	rc = SPI_execute_with_args(sql, nargs, argtypes, values, nulls, false, 0);
	if (rc < 0)
		elog(ERROR, "SPI_execute_with_args failed: %s", SPI_result_code_string(rc));
}

/*
 * tenancy.table_exec(rel, as_role, sql [, VARIADIC args "any"]) -> bigint
 *	  Run a statement on rel as the role work on it runs as (as_role NULL:
 *	  the caller); returns the number of rows it processed.
 */
PG_FUNCTION_INFO_V1(tenancy_table_exec);
Datum
tenancy_table_exec(PG_FUNCTION_ARGS)
{
	AsOwnerState state;
	uint64		processed;

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	run_statement(fcinfo, &state);
	processed = SPI_processed;
	as_owner_end(&state);
	SPI_finish();
	PG_RETURN_INT64((int64) processed);
}

/*
 * tenancy.table_query(rel, as_role, sql [, VARIADIC args "any"]) -> text[]
 *	  The same, for a query: its first row's columns as text, NULL when it
 *	  returns no row.
 */
PG_FUNCTION_INFO_V1(tenancy_table_query);
Datum
tenancy_table_query(PG_FUNCTION_ARGS)
{
	AsOwnerState state;
	ArrayType  *result = NULL;
	MemoryContext caller_cxt = CurrentMemoryContext;

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	run_statement(fcinfo, &state);
	/* Output functions run as the switched role, too. */
	if (SPI_tuptable != NULL && SPI_processed > 0)
	{
		TupleDesc	desc = SPI_tuptable->tupdesc;
		HeapTuple	tup = SPI_tuptable->vals[0];
		int			natts = desc->natts;
		Datum	   *elems = palloc(natts * sizeof(Datum));
		bool	   *enulls = palloc(natts * sizeof(bool));
		int			dims[1] = {natts};
		int			lbs[1] = {1};
		MemoryContext old;

		for (int i = 0; i < natts; i++)
		{
			char	   *s = SPI_getvalue(tup, desc, i + 1);

			enulls[i] = (s == NULL);
			elems[i] = s ? CStringGetTextDatum(s) : (Datum) 0;
		}
		old = MemoryContextSwitchTo(caller_cxt);
		result = construct_md_array(elems, enulls, 1, dims, lbs,
									TEXTOID, -1, false, TYPALIGN_INT);
		MemoryContextSwitchTo(old);
	}
	as_owner_end(&state);
	SPI_finish();
	if (result == NULL)
		PG_RETURN_NULL();
	PG_RETURN_ARRAYTYPE_P(result);
}

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
 * A statement that reads several tables (a join with a parent, a foreign
 * key's VALIDATE, a partitioned table and its partitions) runs as the least
 * privileged of the requesting role and the owners of every table it
 * touches, found from the statement's parse tree before it is planned: the
 * planner runs each table's index expressions and predicates.  Where the
 * owners are unrelated (neither has the other's privileges), no role is
 * below them all and the statement is refused (42501) rather than give one
 * owner's code the other's rights.  A requesting role that has none of the
 * owners' privileges runs as itself: it acts on those tables with its own
 * grants, as any statement of it would.
 *
 * The requesting role is the caller, or a role named by the caller that
 * the caller may become (a backfill job runs as the role that created it).
 * Under SECURITY_RESTRICTED_OPERATION the code cannot SET ROLE, create
 * temporary objects or open WITH HOLD cursors; settings it changes are
 * undone when the statement ends.  SECURITY_NOFORCE_RLS lets the owner see
 * every row of a table under FORCE ROW LEVEL SECURITY, as referential
 * integrity checks do, without being a superuser: a count of NULL tenants
 * must see every row.  row_security is off meanwhile, so that a table whose
 * policies would filter the statement (one the role does not own) makes it
 * fail rather than count or change only part of the rows.
 *-------------------------------------------------------------------------
 */
#include "tenancy.h"

#include "access/htup_details.h"
#include "catalog/pg_inherits.h"
#include "catalog/pg_class.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "nodes/nodeFuncs.h"
#include "parser/scansup.h"
#include "tcop/tcopprot.h"
#include "utils/plancache.h"
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

/* The security context of restricted work (see the header). */
static int
restricted_context(AsOwnerState *state)
{
	return state->save_sec_context |
		SECURITY_LOCAL_USERID_CHANGE |
		SECURITY_RESTRICTED_OPERATION |
		SECURITY_NOFORCE_RLS;
}

/* Switch to role under the restrictions above, with a GUC nest level. */
static void
switch_to(Oid role, AsOwnerState *state)
{
	GetUserIdAndSecContext(&state->save_userid, &state->save_sec_context);
	SetUserIdAndSecContext(role, restricted_context(state));
	state->save_nestlevel = NewGUCNestLevel();
	(void) set_config_option("row_security", "off", PGC_SUSET, PGC_S_SESSION,
							 GUC_ACTION_SAVE, true, 0, false);
}

/*
 * Switch to the role that work on relid runs as (see above), under
 * SECURITY_RESTRICTED_OPERATION and SECURITY_NOFORCE_RLS, with a GUC nest
 * level of its own.  as_owner_end() switches back; an error switches back
 * on its own (transaction and subtransaction abort restore the user ID and
 * the settings).  For work on one table (and its partitions, which the
 * caller counts one by one).
 */
void
as_owner_begin(Oid relid, Oid requester, AsOwnerState *state)
{
	switch_to(as_owner_role(relid, requester), state);
}

void
as_owner_end(AsOwnerState *state)
{
	AtEOXact_GUC(false, state->save_nestlevel);
	SetUserIdAndSecContext(state->save_userid, state->save_sec_context);
}

/* Collect the OIDs of the relations a query tree reads or writes. */
static bool
collect_relations(Node *node, List **relids)
{
	if (node == NULL)
		return false;
	if (IsA(node, Query))
	{
		Query	   *query = (Query *) node;
		ListCell   *lc;

		foreach(lc, query->rtable)
		{
			RangeTblEntry *rte = lfirst_node(RangeTblEntry, lc);

			if (rte->rtekind == RTE_RELATION)
				*relids = list_append_unique_oid(*relids, rte->relid);
		}
		return query_tree_walker(query, collect_relations, relids, 0);
	}
	return expression_tree_walker(node, collect_relations, relids);
}

/*
 * The role a statement touching relids runs as, when requested by
 * requester: see the header.  Partitions and inheritance children count,
 * since planning a query over a parent opens them.
 */
static Oid
statement_role(Oid relid_main, List *relids, Oid requester)
{
	List	   *all = NIL;
	Oid			role = requester;
	ListCell   *lc;

	relids = list_append_unique_oid(list_copy(relids), relid_main);
	foreach(lc, relids)
	{
		Oid			relid = lfirst_oid(lc);

		if (has_subclass(relid))
			all = list_concat_unique_oid(all, find_all_inheritors(relid, NoLock, NULL));
		else
			all = list_append_unique_oid(all, relid);
	}
	foreach(lc, all)
	{
		Oid			owner = relation_owner(lfirst_oid(lc));

		if (has_privs_of_role(role, owner))
			role = owner;
	}
	if (role == requester)
		return role;
	foreach(lc, all)
	{
		Oid			relid = lfirst_oid(lc);
		Oid			owner = relation_owner(relid);

		CHECK_FOR_INTERRUPTS();
		if (!has_privs_of_role(owner, role))
			ereport(ERROR,
					(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
					 errmsg("statement reads tables of owners that do not share their privileges"),
					 errdetail("It would run as role \"%s\", which has privileges that role \"%s\", owner of %s, does not have.",
							   GetUserNameFromId(role, false),
							   GetUserNameFromId(owner, false),
							   get_rel_name(relid)),
					 errhint("Make one owner a member of the other, or run it as a role with the privileges of neither.")));
	}
	return role;
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
	ListCell   *lc;

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

	/*
	 * Statement by statement (a string may set the job's search_path before
	 * its batch): parse and rewrite as the requester, restricted, to learn
	 * which tables the statement touches (nothing of theirs runs before
	 * planning), then run it as the role chosen for them.  The plan is made
	 * as that role (the rewrite is redone for it where row security depends
	 * on the role).  One GUC nest level spans the string.
	 */
	(void) relation_owner(relid);	/* a missing relation first */
	switch_to(requester, state);
	foreach(lc, pg_parse_query(sql))
	{
		RawStmt    *raw = lfirst_node(RawStmt, lc);
		char	   *text;
		SPIPlanPtr	plan;
		List	   *relids = NIL;
		ListCell   *lc2;

		{
			const char *start = sql + raw->stmt_location;
			int			len = raw->stmt_len > 0 ? raw->stmt_len : (int) strlen(start);

			while (len > 0 && scanner_isspace(*start))
				start++, len--;
			text = pnstrdup(start, len);
		}
		SetUserIdAndSecContext(requester, restricted_context(state));
		plan = SPI_prepare(text, nargs, argtypes);
		if (plan == NULL)
			elog(ERROR, "SPI_prepare failed: %s", SPI_result_code_string(SPI_result));
		foreach(lc2, SPI_plan_get_plan_sources(plan))
		{
			CachedPlanSource *ps = (CachedPlanSource *) lfirst(lc2);

			collect_relations((Node *) ps->query_list, &relids);
		}
		SetUserIdAndSecContext(statement_role(relid, relids, requester),
							   restricted_context(state));
		rc = SPI_execute_plan(plan, values, nulls, false, 0);
		if (rc < 0)
			elog(ERROR, "SPI_execute_plan failed: %s", SPI_result_code_string(rc));
	}
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

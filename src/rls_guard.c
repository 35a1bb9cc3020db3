/*-------------------------------------------------------------------------
 * rls_guard.c
 *	  Refuse to go on with a query over row-secured tables once the current
 *	  tenant has changed since the query started.
 *
 * A cursor opened for tenant A and fetched after tenancy.set_tenant('B')
 * would otherwise mix plans evaluated for A (index scan keys, sorts, hashes
 * computed at start) with filters re-evaluated for B: rows of A could reach
 * B.  The executor hooks remember the tenant each such query started with
 * and check it again each time the query is resumed (FETCH, or the next
 * batch of a PL/pgSQL FOR loop).
 *-------------------------------------------------------------------------
 */
#include "tenancy.h"

#include "access/htup_details.h"
#include "access/xact.h"
#include "catalog/pg_class.h"
#include "executor/executor.h"
#include "nodes/parsenodes.h"
#include "nodes/plannodes.h"
#include "utils/syscache.h"

/* Queries open at once that we track; beyond this the oldest is forgotten. */
#define GUARD_SLOTS 64

typedef struct GuardEntry
{
	const QueryDesc *query;
	bool		has_key;
	TenantKeyType type;
	char		key[TENANT_KEY_MAXLEN + 1];
} GuardEntry;

static GuardEntry guard[GUARD_SLOTS];
static int	guard_used = 0;

static ExecutorStart_hook_type prev_executor_start = NULL;
static ExecutorRun_hook_type prev_executor_run = NULL;
static ExecutorEnd_hook_type prev_executor_end = NULL;

/* The current key, without raising when none is set (require_tenant). */
static const TenantKey *
guard_current_key(void)
{
	const TenantKey *key;
	bool		save = tenancy_require_tenant;

	tenancy_require_tenant = false;
	key = tenant_context_get();
	tenancy_require_tenant = save;
	return key;
}

static void
guard_forget(const QueryDesc *query)
{
	for (int i = guard_used - 1; i >= 0; i--)
	{
		if (guard[i].query == query)
		{
			guard[i] = guard[--guard_used];
			return;
		}
	}
}

/* Does the plan read or write a table with row level security enabled? */
static bool
uses_row_security(const PlannedStmt *stmt)
{
	ListCell   *lc;

	if (stmt == NULL || stmt->commandType == CMD_UTILITY)
		return false;
	foreach(lc, stmt->rtable)
	{
		RangeTblEntry *rte = (RangeTblEntry *) lfirst(lc);
		HeapTuple	tup;
		bool		rls = false;

		if (rte->rtekind != RTE_RELATION)
			continue;
		tup = SearchSysCache1(RELOID, ObjectIdGetDatum(rte->relid));
		if (HeapTupleIsValid(tup))
		{
			rls = ((Form_pg_class) GETSTRUCT(tup))->relrowsecurity;
			ReleaseSysCache(tup);
		}
		if (rls)
			return true;
	}
	return false;
}

static void
guard_executor_start(QueryDesc *queryDesc, int eflags)
{
	if (prev_executor_start)
		prev_executor_start(queryDesc, eflags);
	else
		standard_ExecutorStart(queryDesc, eflags);

	/* A stale entry may carry the address of a query freed by an abort. */
	guard_forget(queryDesc);
	if (!(eflags & EXEC_FLAG_EXPLAIN_ONLY) && uses_row_security(queryDesc->plannedstmt))
	{
		const TenantKey *key = guard_current_key();
		GuardEntry *e;

		if (guard_used == GUARD_SLOTS)
		{
			memmove(&guard[0], &guard[1], sizeof(GuardEntry) * (GUARD_SLOTS - 1));
			guard_used--;
		}
		e = &guard[guard_used++];
		e->query = queryDesc;
		e->has_key = (key != NULL);
		e->type = key ? key->type : TENANT_KEY_UUID;
		strlcpy(e->key, key ? key->text : "", sizeof(e->key));
	}
}

static void
guard_executor_run(QueryDesc *queryDesc, ScanDirection direction, uint64 count, bool execute_once)
{
	for (int i = 0; i < guard_used; i++)
	{
		GuardEntry *e = &guard[i];
		const TenantKey *key;

		if (e->query != queryDesc)
			continue;
		key = guard_current_key();
		if ((key != NULL) != e->has_key ||
			(key != NULL && (key->type != e->type || strcmp(key->text, e->key) != 0)))
			ereport(ERROR,
					(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
					 errmsg("the current tenant changed while a query over row-secured tables was open"),
					 errdetail("The query started with tenant %s; the current tenant is %s.",
							   e->has_key ? e->key : "none", key ? key->text : "none"),
					 errhint("Close cursors before switching tenants, and open them again after.")));
		break;
	}
	if (prev_executor_run)
		prev_executor_run(queryDesc, direction, count, execute_once);
	else
		standard_ExecutorRun(queryDesc, direction, count, execute_once);
}

static void
guard_executor_end(QueryDesc *queryDesc)
{
	guard_forget(queryDesc);
	if (prev_executor_end)
		prev_executor_end(queryDesc);
	else
		standard_ExecutorEnd(queryDesc);
}

static void
guard_xact_callback(XactEvent event, void *arg)
{
	/* Queries never outlive their top transaction in the executor. */
	if (event == XACT_EVENT_COMMIT || event == XACT_EVENT_ABORT ||
		event == XACT_EVENT_PREPARE)
		guard_used = 0;
}

void
tenancy_rls_guard_init(void)
{
	prev_executor_start = ExecutorStart_hook;
	ExecutorStart_hook = guard_executor_start;
	prev_executor_run = ExecutorRun_hook;
	ExecutorRun_hook = guard_executor_run;
	prev_executor_end = ExecutorEnd_hook;
	ExecutorEnd_hook = guard_executor_end;
	RegisterXactCallback(guard_xact_callback, NULL);
}

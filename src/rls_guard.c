/*-------------------------------------------------------------------------
 * rls_guard.c
 *	  Executor hooks for queries over row-secured tables: the current tenant
 *	  is fixed when such a query starts.
 *
 * 1. Folding.  PostgreSQL evaluates a STABLE function in a scan filter once
 * per row, so a policy `tenant_id = tenancy.current_tenant()` on a
 * sequential scan pays a function call per row that an explicit
 * `WHERE tenant_id = $1` does not.  When a query over row-secured tables
 * starts, the accessor calls in the plan's filters are replaced by the
 * current key as a constant while the executor compiles its expressions,
 * and the plan is restored right after: the cached plan never holds a
 * tenant, and each execution compiles the key current at its start.
 * Index scan keys are computed once per scan anyway and are left alone.
 *
 * 2. The guard.  A query must then not outlive a tenant switch:
 * A cursor opened for tenant A and fetched after tenancy.set_tenant('B')
 * would otherwise mix plans evaluated for A (index scan keys, sorts, hashes
 * computed at start) with filters re-evaluated for B: rows of A could reach
 * B.  The executor hooks remember the tenant each such query started with
 * and check it again each time the query is resumed (FETCH, or the next
 * batch of a PL/pgSQL FOR loop).
 *
 * 3. One tenant per statement.  Only the scan filters are fixed at the
 * start: WITH CHECK expressions, column defaults and join quals call the
 * accessor as they run.  So while a query over row-secured tables runs
 * (ExecutorRun or ExecutorFinish), the tenant must not change at all: a
 * function called from inside it (a CTE, a WHERE clause, a trigger) that
 * sets the tenant is refused by the tenant GUC's check hook (context.c asks
 * tenant_switch_refused()), and a change that bypasses the check hook (RESET)
 * fails the query when it returns.  When more queries are open than the
 * guard can track, none is forgotten: every tenant change is refused until
 * the untracked ones end.
 *-------------------------------------------------------------------------
 */
#include "tenancy.h"

#include "access/htup_details.h"
#include "access/xact.h"
#include "catalog/pg_class.h"
#include "catalog/pg_language.h"
#include "catalog/pg_proc.h"
#include "catalog/pg_type.h"
#include "executor/executor.h"
#include "miscadmin.h"
#include "nodes/makefuncs.h"
#include "nodes/nodeFuncs.h"
#include "nodes/parsenodes.h"
#include "nodes/plannodes.h"
#include "utils/builtins.h"
#include "utils/inval.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "tcop/pquery.h"
#include "utils/portal.h"
#include "utils/syscache.h"

/* Queries open at once that we track; beyond this no tenant change is allowed. */
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

/* Guarded queries now in ExecutorRun or ExecutorFinish, nested or not. */
static int	guard_running = 0;

/* Open queries over row-secured tables that found the table full. */
static int	guard_untracked = 0;

static bool tenancy_fold_tenant = true;

/*
 * Cursors WITH HOLD over row-secured tables, and the tenant each was opened
 * with.  COMMIT runs such a cursor to completion into a tuplestore, and a
 * later FETCH (or a protocol Execute of the portal) reads that store
 * without the executor: the guard above never sees it.  When the tenant
 * changes (held_cursors_tenant_changed(), from the tenant GUC's assign
 * hooks), a persisted cursor of another tenant is marked failed, so that
 * reading it raises 55000 ("portal ... cannot be run"); it can only be
 * closed.
 */
#define HELD_SLOTS 16

typedef struct HeldCursor
{
	char		name[NAMEDATALEN];
	TimestampTz created;
	bool		has_key;
	TenantKeyType type;
	char		key[TENANT_KEY_MAXLEN + 1];
} HeldCursor;

static HeldCursor held[HELD_SLOTS];
static int	held_used = 0;

static ExecutorStart_hook_type prev_executor_start = NULL;
static ExecutorRun_hook_type prev_executor_run = NULL;
static ExecutorFinish_hook_type prev_executor_finish = NULL;
static ExecutorEnd_hook_type prev_executor_end = NULL;

static bool
guard_forget(const QueryDesc *query)
{
	for (int i = guard_used - 1; i >= 0; i--)
	{
		if (guard[i].query == query)
		{
			guard[i] = guard[--guard_used];
			return true;
		}
	}
	return false;
}

static GuardEntry *
guard_find(const QueryDesc *query)
{
	for (int i = 0; i < guard_used; i++)
		if (guard[i].query == query)
			return &guard[i];
	return NULL;
}

/*
 * May the tenant change now?  Called by the tenant GUC's check hook for
 * every change, so it is two comparisons.  *reason says why not.
 */
bool
tenant_switch_refused(const char **reason, const char **detail)
{
	if (likely(guard_running == 0 && guard_untracked == 0))
		return false;
	if (guard_running > 0)
	{
		*reason = "cannot change the tenant while a query over row-secured tables is running";
		*detail = "The tenant is fixed for a whole statement; a function called from inside it cannot switch.";
	}
	else
	{
		*reason = "cannot change the tenant while more than 64 queries over row-secured tables are open";
		*detail = "The guard tracks 64 open queries; a tenant switch could reach the others.";
	}
	return true;
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


/* ---- folding the accessors into constants ---- */

typedef enum AccessorKind
{
	ACCESSOR_NONE = 0,
	ACCESSOR_UUID,
	ACCESSOR_BIGINT,
	ACCESSOR_TEXT
} AccessorKind;

/* A few function OIDs already classified; cleared when pg_proc changes. */
#define KIND_CACHE_SIZE 16
typedef struct KindCacheEntry
{
	Oid			funcid;
	AccessorKind kind;
} KindCacheEntry;
static KindCacheEntry kind_cache[KIND_CACHE_SIZE];
static int	kind_cache_used = 0;

static void
kind_cache_invalidate(Datum arg, int cacheid, uint32 hashvalue)
{
	kind_cache_used = 0;
}

/* Is this function one of tenancy's current_tenant*() accessors? */
static AccessorKind
accessor_kind(Oid funcid)
{
	HeapTuple	tup;
	AccessorKind kind = ACCESSOR_NONE;

	for (int i = 0; i < kind_cache_used; i++)
		if (kind_cache[i].funcid == funcid)
			return kind_cache[i].kind;

	tup = SearchSysCache1(PROCOID, ObjectIdGetDatum(funcid));
	if (HeapTupleIsValid(tup))
	{
		Form_pg_proc form = (Form_pg_proc) GETSTRUCT(tup);
		bool		srcnull;
		bool		binnull;
		Datum		src;
		Datum		bin;

		if (form->prolang == ClanguageId && form->pronargs == 0)
		{
			src = SysCacheGetAttr(PROCOID, tup, Anum_pg_proc_prosrc, &srcnull);
			bin = SysCacheGetAttr(PROCOID, tup, Anum_pg_proc_probin, &binnull);
			if (!srcnull && !binnull)
			{
				char	   *s = TextDatumGetCString(src);
				char	   *b = TextDatumGetCString(bin);
				size_t		blen = strlen(b);

				if (blen >= 8 && strcmp(b + blen - 8, "/tenancy") == 0)
				{
					if (strcmp(s, "tenancy_current_tenant") == 0)
						kind = ACCESSOR_UUID;
					else if (strcmp(s, "tenancy_current_tenant_bigint") == 0)
						kind = ACCESSOR_BIGINT;
					else if (strcmp(s, "tenancy_current_tenant_text") == 0)
						kind = ACCESSOR_TEXT;
				}
				pfree(s);
				pfree(b);
			}
		}
		ReleaseSysCache(tup);
	}
	if (kind_cache_used < KIND_CACHE_SIZE)
	{
		kind_cache[kind_cache_used].funcid = funcid;
		kind_cache[kind_cache_used].kind = kind;
		kind_cache_used++;
	}
	return kind;
}

typedef struct FoldState
{
	const TenantKey *key;
	bool		changed;
} FoldState;

static bool
has_accessor_walker(Node *node, void *context)
{
	if (node == NULL)
		return false;
	if (IsA(node, FuncExpr) && ((FuncExpr *) node)->args == NIL &&
		accessor_kind(((FuncExpr *) node)->funcid) != ACCESSOR_NONE)
		return true;
	return expression_tree_walker(node, has_accessor_walker, context);
}

/*
 * The accessor's value as a Const, or NULL where the accessor would raise
 * (key type mismatch, or no tenant with tenancy.require_tenant): those
 * calls stay, and raise when evaluated, as before.
 */
static Node *
accessor_const(FuncExpr *f, AccessorKind kind, const TenantKey *key)
{
	TenantKeyType type = (TenantKeyType) tenancy_tenant_type;
	Datum		value = (Datum) 0;
	int16		typlen;
	bool		typbyval;

	if ((kind == ACCESSOR_UUID && type != TENANT_KEY_UUID) ||
		(kind == ACCESSOR_BIGINT && type != TENANT_KEY_BIGINT))
		return NULL;
	if (key == NULL && tenancy_require_tenant)
		return NULL;
	if (key != NULL)
	{
		if (kind == ACCESSOR_UUID)
		{
			pg_uuid_t  *u = palloc(sizeof(pg_uuid_t));

			memcpy(u, &key->uuid, sizeof(pg_uuid_t));
			value = UUIDPGetDatum(u);
		}
		else if (kind == ACCESSOR_BIGINT)
			value = Int64GetDatum(key->i64);
		else
			value = PointerGetDatum(cstring_to_text(key->text));
	}
	get_typlenbyval(f->funcresulttype, &typlen, &typbyval);
	return (Node *) makeConst(f->funcresulttype, -1, f->funccollid, typlen,
							  value, key == NULL, typbyval);
}

/*
 * The value of an accessor call for key (not NULL), as a Const; NULL when
 * f is not one of the accessors, or when it would raise (key type
 * mismatch).  For prune.c, which specialises plans to the current tenant.
 */
Node *
rls_accessor_const(FuncExpr *f, const TenantKey *key)
{
	AccessorKind kind;

	if (f->args != NIL)
		return NULL;
	kind = accessor_kind(f->funcid);
	if (kind == ACCESSOR_NONE)
		return NULL;
	return accessor_const(f, kind, key);
}

static Node *
fold_mutator(Node *node, FoldState *st)
{
	if (node == NULL)
		return NULL;
	if (IsA(node, FuncExpr) && ((FuncExpr *) node)->args == NIL)
	{
		FuncExpr   *f = (FuncExpr *) node;
		AccessorKind kind = accessor_kind(f->funcid);

		if (kind != ACCESSOR_NONE)
		{
			Node	   *c = accessor_const(f, kind, st->key);

			if (c != NULL)
			{
				st->changed = true;
				return c;
			}
		}
	}
	return expression_tree_mutator(node, fold_mutator, (void *) st);
}

typedef struct FoldUndo
{
	Plan	   *plan;
	List	   *qual;
} FoldUndo;

/* Replace the accessors in the filters of plan and below; note what to undo. */
static void
fold_plan(Plan *plan, FoldState *st, List **undo)
{
	ListCell   *lc;
	List	   *children = NIL;

	if (plan == NULL)
		return;
	check_stack_depth();
	if (plan->qual != NIL && has_accessor_walker((Node *) plan->qual, NULL))
	{
		FoldUndo   *u = palloc(sizeof(FoldUndo));
		List	   *folded;

		st->changed = false;
		folded = (List *) fold_mutator((Node *) plan->qual, st);
		if (st->changed)
		{
			u->plan = plan;
			u->qual = plan->qual;
			*undo = lappend(*undo, u);
			plan->qual = folded;
		}
	}
	fold_plan(plan->lefttree, st, undo);
	fold_plan(plan->righttree, st, undo);
	switch (nodeTag(plan))
	{
		case T_Append:
			children = ((Append *) plan)->appendplans;
			break;
		case T_MergeAppend:
			children = ((MergeAppend *) plan)->mergeplans;
			break;
		case T_BitmapAnd:
			children = ((BitmapAnd *) plan)->bitmapplans;
			break;
		case T_BitmapOr:
			children = ((BitmapOr *) plan)->bitmapplans;
			break;
		case T_CustomScan:
			children = ((CustomScan *) plan)->custom_plans;
			break;
		case T_SubqueryScan:
			fold_plan(((SubqueryScan *) plan)->subplan, st, undo);
			break;
		default:
			break;
	}
	foreach(lc, children)
		fold_plan((Plan *) lfirst(lc), st, undo);
}

static void
unfold(List *undo)
{
	ListCell   *lc;

	foreach(lc, undo)
	{
		FoldUndo   *u = (FoldUndo *) lfirst(lc);

		u->plan->qual = u->qual;
	}
}

static void
run_executor_start(QueryDesc *queryDesc, int eflags)
{
	if (prev_executor_start)
		prev_executor_start(queryDesc, eflags);
	else
		standard_ExecutorStart(queryDesc, eflags);
}

/* Start the executor on the folded plan; restore the plan in any case. */
static void
run_folded(QueryDesc *queryDesc, int eflags, List *undo)
{
	PG_TRY();
	{
		run_executor_start(queryDesc, eflags);
	}
	PG_CATCH();
	{
		unfold(undo);
		PG_RE_THROW();
	}
	PG_END_TRY();
	unfold(undo);
}

/* Forget the held cursors whose portal is gone (or is another by now). */
static void
held_cursors_compact(void)
{
	for (int i = held_used - 1; i >= 0; i--)
	{
		Portal		p = GetPortalByName(held[i].name);

		if (!PortalIsValid(p) || p->creation_time != held[i].created)
			held[i] = held[--held_used];
	}
}

/* A guarded query starts: remember it if it is a cursor WITH HOLD. */
static void
held_cursor_note(const TenantKey *key)
{
	Portal		p = ActivePortal;
	HeldCursor *h;

	if (!PortalIsValid(p) || !(p->cursorOptions & CURSOR_OPT_HOLD) || p->name == NULL)
		return;
	held_cursors_compact();
	if (held_used == HELD_SLOTS)
		ereport(ERROR,
				(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
				 errmsg("at most %d cursors WITH HOLD over row-secured tables may be open", HELD_SLOTS),
				 errhint("Close a cursor WITH HOLD first.")));
	h = &held[held_used++];
	strlcpy(h->name, p->name, sizeof(h->name));
	h->created = p->creation_time;
	h->has_key = (key != NULL);
	h->type = key ? key->type : TENANT_KEY_UUID;
	strlcpy(h->key, key ? key->text : "", sizeof(h->key));
}

/*
 * The tenant changed (context.c's assign hooks): a persisted cursor WITH
 * HOLD of another tenant can no longer be read.  Never raises.
 */
void
held_cursors_tenant_changed(void)
{
	const TenantKey *key;

	if (likely(held_used == 0))
		return;
	key = tenant_context_peek();
	for (int i = held_used - 1; i >= 0; i--)
	{
		Portal		p = GetPortalByName(held[i].name);

		if (!PortalIsValid(p) || p->creation_time != held[i].created)
		{
			held[i] = held[--held_used];
			continue;
		}
		if ((key != NULL) == held[i].has_key &&
			(key == NULL || (key->type == held[i].type && strcmp(key->text, held[i].key) == 0)))
			continue;
		/* Not persisted yet: still in the executor, where the guard checks. */
		if (p->holdStore == NULL || p->status != PORTAL_READY)
			continue;
		MarkPortalFailed(p);
		held[i] = held[--held_used];
	}
}

static void
guard_executor_start(QueryDesc *queryDesc, int eflags)
{
	bool		guarded;
	const TenantKey *key;
	TenantKey	keycopy;

	/* A stale entry may carry the address of a query freed by an abort. */
	(void) guard_forget(queryDesc);
	guarded = !(eflags & EXEC_FLAG_EXPLAIN_ONLY) && uses_row_security(queryDesc->plannedstmt);
	if (!guarded)
	{
		run_executor_start(queryDesc, eflags);
		return;
	}

	/* Copy it: the GUC's copy may go if the tenant changes meanwhile. */
	key = tenant_context_peek();
	if (key != NULL)
	{
		memcpy(&keycopy, key, sizeof(TenantKey));
		key = &keycopy;
	}
	if (tenancy_fold_tenant)
	{
		List	   *undo = NIL;
		FoldState	st;
		MemoryContext old;
		ListCell   *lc;

		/* The folded filters live as long as the query. */
		old = MemoryContextSwitchTo(GetMemoryChunkContext(queryDesc));
		st.key = key;
		st.changed = false;
		fold_plan(queryDesc->plannedstmt->planTree, &st, &undo);
		foreach(lc, queryDesc->plannedstmt->subplans)
			fold_plan((Plan *) lfirst(lc), &st, &undo);
		MemoryContextSwitchTo(old);

		run_folded(queryDesc, eflags, undo);
	}
	else
		run_executor_start(queryDesc, eflags);

	{
		GuardEntry *e;

		if (guard_used == GUARD_SLOTS)
		{
			/* Untracked: no tenant may change until it ends. */
			guard_untracked++;
			return;
		}
		e = &guard[guard_used++];
		e->query = queryDesc;
		e->has_key = (key != NULL);
		e->type = key ? key->type : TENANT_KEY_UUID;
		strlcpy(e->key, key ? key->text : "", sizeof(e->key));
	}
	held_cursor_note(key);
}

/* Raise if the current tenant is not the one the query started with. */
static void
guard_check(const GuardEntry *e, bool resumed)
{
	const TenantKey *key = tenant_context_peek();

	if ((key != NULL) != e->has_key ||
		(key != NULL && (key->type != e->type || strcmp(key->text, e->key) != 0)))
	{
		if (resumed)
			ereport(ERROR,
					(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
					 errmsg("the current tenant changed while a query over row-secured tables was open"),
					 errdetail("The query started with tenant %s; the current tenant is %s.",
							   e->has_key ? e->key : "none", key ? key->text : "none"),
					 errhint("Close cursors before switching tenants, and open them again after.")));
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("the current tenant changed while a query over row-secured tables was running"),
				 errdetail("The query started with tenant %s; the current tenant is %s.",
						   e->has_key ? e->key : "none", key ? key->text : "none"),
				 errhint("Set the tenant before the statement, not from inside it.")));
	}
}

static void
run_executor_run(QueryDesc *queryDesc, ScanDirection direction, uint64 count, bool execute_once)
{
	if (prev_executor_run)
		prev_executor_run(queryDesc, direction, count, execute_once);
	else
		standard_ExecutorRun(queryDesc, direction, count, execute_once);
}

static void
guard_executor_run(QueryDesc *queryDesc, ScanDirection direction, uint64 count, bool execute_once)
{
	GuardEntry *e = guard_find(queryDesc);

	if (e == NULL)
	{
		run_executor_run(queryDesc, direction, count, execute_once);
		return;
	}
	guard_check(e, true);
	guard_running++;
	PG_TRY();
	{
		run_executor_run(queryDesc, direction, count, execute_once);
	}
	PG_FINALLY();
	{
		guard_running--;
	}
	PG_END_TRY();
	/* The entry may have moved: nested queries end and compact the table. */
	e = guard_find(queryDesc);
	if (e != NULL)
		guard_check(e, false);
}

static void
guard_executor_finish(QueryDesc *queryDesc)
{
	GuardEntry *e = guard_find(queryDesc);

	if (e == NULL)
	{
		if (prev_executor_finish)
			prev_executor_finish(queryDesc);
		else
			standard_ExecutorFinish(queryDesc);
		return;
	}
	guard_running++;
	PG_TRY();
	{
		if (prev_executor_finish)
			prev_executor_finish(queryDesc);
		else
			standard_ExecutorFinish(queryDesc);
	}
	PG_FINALLY();
	{
		guard_running--;
	}
	PG_END_TRY();
	e = guard_find(queryDesc);
	if (e != NULL)
		guard_check(e, false);
}

static void
guard_executor_end(QueryDesc *queryDesc)
{
	if (!guard_forget(queryDesc) && guard_untracked > 0 &&
		queryDesc->estate != NULL &&
		!(queryDesc->estate->es_top_eflags & EXEC_FLAG_EXPLAIN_ONLY) &&
		uses_row_security(queryDesc->plannedstmt))
		guard_untracked--;
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
	{
		guard_used = 0;
		guard_running = 0;
		guard_untracked = 0;
	}
}

void
tenancy_rls_guard_init(void)
{
	DefineCustomBoolVariable("tenancy.fold_tenant",
							 "Evaluate the current tenant once per query over row-secured tables.",
							 "When on, calls of tenancy.current_tenant() and its siblings in scan filters "
							 "are replaced by the key current when the query starts.",
							 &tenancy_fold_tenant,
							 true,
							 PGC_USERSET,
							 0,
							 NULL, NULL, NULL);
	CacheRegisterSyscacheCallback(PROCOID, kind_cache_invalidate, (Datum) 0);
	prev_executor_start = ExecutorStart_hook;
	ExecutorStart_hook = guard_executor_start;
	prev_executor_run = ExecutorRun_hook;
	ExecutorRun_hook = guard_executor_run;
	prev_executor_finish = ExecutorFinish_hook;
	ExecutorFinish_hook = guard_executor_finish;
	prev_executor_end = ExecutorEnd_hook;
	ExecutorEnd_hook = guard_executor_end;
	RegisterXactCallback(guard_xact_callback, NULL);
}

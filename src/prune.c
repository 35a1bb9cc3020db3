/*-------------------------------------------------------------------------
 * prune.c
 *	  One tenant, one shard: the current tenant as a constant that a
 *	  distributed planner can route on.
 *
 * The tenant policy is `tenant_col = tenancy.current_tenant()`.  The
 * rewriter puts it into the security quals of the row-secured table; the
 * accessor is a STABLE function, so a planner sees no constant: Citus
 * prunes shards only on `dist_col = Const` (or an external Param, pruned at
 * execution) in the query's own quals, and sends a tenant's query to every
 * shard.  rls_guard.c folds the accessor into the current key only at
 * executor start, after Citus has planned.
 *
 * 1. Specialising.  A planner hook (tenancy is loaded after citus, so it
 * runs before Citus's planner) finds, in every query level, each security
 * qual that is exactly the tenant policy, `Var = accessor()`, and adds a
 * copy with the accessor replaced by the current key: to the relation's
 * security quals (the router planner prunes on those restrictions) and,
 * for a query over that one relation, to its WHERE clause (the fast path
 * router planner looks only there).  While the tenant is the key, the copy
 * is the policy itself: it narrows nothing RLS shows and widens nothing.
 * Nothing is added where RLS does not apply (superuser, BYPASSRLS, the
 * owner without FORCE: no security quals), where the policy is OR-ed with
 * another (migrating mode), in shadow mode, or when no tenant is set.
 * tenancy.tenant_pruning: auto (default) specialises only for Citus tables,
 * so a single node plans exactly as before; on, every row-secured table
 * (single-node partitions prune at planning); off, never.
 *
 * 2. Never under another tenant.  Such a plan carries two PlanInvalItems:
 * a marker (PROCOID, SPECIALISED_HASH) and the hash of its key.  Every
 * change of the effective tenant (the tenant GUC, the key type, the context
 * source: their assign hooks call tenant_plans_invalidate()) marks every
 * cached plan carrying the marker invalid, the way a changed function does,
 * so a generic plan (prepared statement, PL/pgSQL) is planned again under
 * the new tenant.  And at executor start a plan whose key is not the
 * current one is refused (55000) rather than run: a plan made before a
 * switch in the same SQL function body, for instance.
 *-------------------------------------------------------------------------
 */
#include "tenancy.h"

#include "catalog/pg_type.h"
#include "common/hashfn.h"
#include "executor/executor.h"
#include "miscadmin.h"
#include "nodes/makefuncs.h"
#include "nodes/nodeFuncs.h"
#include "nodes/parsenodes.h"
#include "nodes/plannodes.h"
#include "optimizer/optimizer.h"
#include "optimizer/planner.h"
#include "utils/builtins.h"
#include "utils/inval.h"
#include "utils/syscache.h"
#include "utils/varlena.h"

/* PlanInvalItem hash marking a plan specialised to one tenant. */
#define SPECIALISED_HASH 0x54454e41u

typedef enum TenantPruning
{
	TENANT_PRUNING_OFF,
	TENANT_PRUNING_AUTO,
	TENANT_PRUNING_ON
} TenantPruning;

static const struct config_enum_entry tenant_pruning_options[] = {
	{"off", TENANT_PRUNING_OFF, false},
	{"auto", TENANT_PRUNING_AUTO, false},
	{"on", TENANT_PRUNING_ON, false},
	{NULL, 0, false}
};

static int	tenancy_tenant_pruning = TENANT_PRUNING_AUTO;

/* A specialised plan may be cached: the next tenant change invalidates. */
static bool specialised_pending = false;

/* Some plan was specialised in this backend: executor start checks keys. */
static bool specialised_ever = false;

/* Citus is in shared_preload_libraries; its IsCitusTable(), once found. */
static bool citus_preloaded = false;
typedef bool (*IsCitusTableFn) (Oid relid);
static IsCitusTableFn is_citus_table = NULL;
static bool citus_lookup_done = false;

static planner_hook_type prev_planner = NULL;
static ExecutorStart_hook_type prev_executor_start = NULL;

typedef struct PruneContext
{
	const TenantKey *key;
	bool		citus_only;
	int			added;
} PruneContext;

static bool prune_walker(Node *node, PruneContext *ctx);

static uint32
key_hash(const TenantKey *key)
{
	uint32		h = hash_bytes((const unsigned char *) key->text, strlen(key->text));

	/* Never 0 (which would mean "every object" to the plan cache). */
	return (h ^ (uint32) key->type) | 1;
}

/* Is relid a Citus table?  False when Citus is not loaded. */
static bool
relation_is_citus(Oid relid)
{
	if (!citus_preloaded)
		return false;
	if (!citus_lookup_done)
	{
		is_citus_table = (IsCitusTableFn)
			load_external_function("$libdir/citus", "IsCitusTable", false, NULL);
		citus_lookup_done = true;
	}
	return is_citus_table != NULL && is_citus_table(relid);
}

/* The Var of `Var = accessor()` (either side), under implicit coercions. */
static Node *
policy_var(Node *arg)
{
	while (arg != NULL && IsA(arg, RelabelType))
		arg = (Node *) ((RelabelType *) arg)->arg;
	if (arg != NULL && IsA(arg, Var) && ((Var *) arg)->varlevelsup == 0)
		return arg;
	return NULL;
}

/*
 * If qual is exactly the tenant policy of relation rti, `Var = accessor()`,
 * the same with the accessor replaced by the key; else NULL.
 */
static Node *
specialise_qual(Node *qual, Index rti, const TenantKey *key)
{
	OpExpr	   *op;
	OpExpr	   *copy;
	Node	   *left;
	Node	   *right;
	Node	   *value;
	int			fn;

	if (qual == NULL || !IsA(qual, OpExpr))
		return NULL;
	op = (OpExpr *) qual;
	if (list_length(op->args) != 2)
		return NULL;
	left = linitial(op->args);
	right = lsecond(op->args);
	if (policy_var(left) != NULL && IsA(right, FuncExpr))
		fn = 1;
	else if (policy_var(right) != NULL && IsA(left, FuncExpr))
		fn = 0;
	else
		return NULL;
	if (((Var *) policy_var(fn == 1 ? left : right))->varno != (int) rti)
		return NULL;
	value = rls_accessor_const((FuncExpr *) (fn == 1 ? right : left), key);
	if (value == NULL)
		return NULL;
	copy = (OpExpr *) copyObject(op);
	if (fn == 1)
		lsecond(copy->args) = value;
	else
		linitial(copy->args) = value;
	return (Node *) copy;
}

/* Specialise the tenant policies of one query level (not below). */
static void
prune_query(Query *query, PruneContext *ctx)
{
	ListCell   *lc;
	Index		rti = 0;

	if (query->commandType != CMD_SELECT && query->commandType != CMD_UPDATE &&
		query->commandType != CMD_DELETE)
		return;
	foreach(lc, query->rtable)
	{
		RangeTblEntry *rte = (RangeTblEntry *) lfirst(lc);
		List	   *added = NIL;
		ListCell   *q;

		rti++;
		if (rte->rtekind != RTE_RELATION || rte->securityQuals == NIL)
			continue;
		if (ctx->citus_only && !relation_is_citus(rte->relid))
			continue;
		foreach(q, rte->securityQuals)
		{
			Node	   *s = specialise_qual((Node *) lfirst(q), rti, ctx->key);

			/* Citus plans subqueries again: add each condition once. */
			if (s != NULL && !list_member(rte->securityQuals, s))
				added = lappend(added, s);
		}
		if (added == NIL)
			continue;
		rte->securityQuals = list_concat(rte->securityQuals, added);
		ctx->added += list_length(added);

		/*
		 * A query over this one relation: the same in its WHERE clause, for
		 * a router that reads only that (no join, so no nullable side).
		 */
		if (list_length(query->rtable) == 1 && query->jointree != NULL &&
			list_length(query->jointree->fromlist) == 1 &&
			IsA(linitial(query->jointree->fromlist), RangeTblRef) &&
			((RangeTblRef *) linitial(query->jointree->fromlist))->rtindex == (int) rti)
		{
			List	   *conj = make_ands_implicit((Expr *) query->jointree->quals);

			conj = list_concat(conj, copyObject(added));
			query->jointree->quals = (Node *) make_ands_explicit(conj);
		}
	}
}

static bool
prune_walker(Node *node, PruneContext *ctx)
{
	if (node == NULL)
		return false;
	if (IsA(node, Query))
	{
		prune_query((Query *) node, ctx);
		return query_tree_walker((Query *) node, prune_walker, (void *) ctx, 0);
	}
	return expression_tree_walker(node, prune_walker, (void *) ctx);
}

static PlannedStmt *
run_planner(Query *parse, const char *query_string, int cursorOptions,
			ParamListInfo boundParams)
{
	if (prev_planner)
		return prev_planner(parse, query_string, cursorOptions, boundParams);
	return standard_planner(parse, query_string, cursorOptions, boundParams);
}

static PlannedStmt *
prune_planner(Query *parse, const char *query_string, int cursorOptions,
			  ParamListInfo boundParams)
{
	PruneContext ctx;
	TenantKey	keycopy;
	const TenantKey *key;
	PlannedStmt *result;
	PlanInvalItem *marker;
	PlanInvalItem *keyitem;

	if (tenancy_tenant_pruning == TENANT_PRUNING_OFF || !parse->hasRowSecurity ||
		(tenancy_tenant_pruning == TENANT_PRUNING_AUTO && !citus_preloaded))
		return run_planner(parse, query_string, cursorOptions, boundParams);
	key = tenant_context_peek();
	if (key == NULL)
		return run_planner(parse, query_string, cursorOptions, boundParams);
	memcpy(&keycopy, key, sizeof(TenantKey));

	ctx.key = &keycopy;
	ctx.citus_only = (tenancy_tenant_pruning == TENANT_PRUNING_AUTO);
	ctx.added = 0;
	(void) prune_walker((Node *) parse, &ctx);
	if (ctx.added == 0)
		return run_planner(parse, query_string, cursorOptions, boundParams);

	result = run_planner(parse, query_string, cursorOptions, boundParams);

	marker = makeNode(PlanInvalItem);
	marker->cacheId = PROCOID;
	marker->hashValue = SPECIALISED_HASH;
	keyitem = makeNode(PlanInvalItem);
	keyitem->cacheId = PROCOID;
	keyitem->hashValue = key_hash(&keycopy);
	result->invalItems = lappend(lappend(result->invalItems, marker), keyitem);
	specialised_pending = true;
	specialised_ever = true;
	return result;
}

/*
 * The effective tenant changed (called by the assign hooks of context.c):
 * invalidate every cached plan specialised to a tenant.  Never raises.
 */
void
tenant_plans_invalidate(void)
{
	if (!specialised_pending)
		return;
	specialised_pending = false;
	CallSyscacheCallbacks(PROCOID, SPECIALISED_HASH);
}

/* Refuse a specialised plan whose tenant is not the current one. */
static void
prune_executor_start(QueryDesc *queryDesc, int eflags)
{
	if (specialised_ever && queryDesc->plannedstmt != NULL)
	{
		ListCell   *lc;

		foreach(lc, queryDesc->plannedstmt->invalItems)
		{
			PlanInvalItem *item = (PlanInvalItem *) lfirst(lc);
			PlanInvalItem *keyitem;
			const TenantKey *key;

			if (item->cacheId != PROCOID || item->hashValue != SPECIALISED_HASH ||
				lnext(queryDesc->plannedstmt->invalItems, lc) == NULL)
				continue;
			keyitem = (PlanInvalItem *) lfirst(lnext(queryDesc->plannedstmt->invalItems, lc));
			key = tenant_context_peek();
			if (key == NULL || key_hash(key) != keyitem->hashValue)
				ereport(ERROR,
						(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
						 errmsg("this plan was made for another tenant"),
						 errdetail("The plan routes to the tenant current when it was planned; the current tenant is %s.",
								   key ? key->text : "none"),
						 errhint("Set the tenant before the statement is planned, or set tenancy.tenant_pruning = off.")));
			break;
		}
	}
	if (prev_executor_start)
		prev_executor_start(queryDesc, eflags);
	else
		standard_ExecutorStart(queryDesc, eflags);
}

/* Is "citus" one of shared_preload_libraries? */
static bool
citus_in_preload(void)
{
	char	   *raw;
	List	   *names;
	ListCell   *lc;
	bool		found = false;

	if (shared_preload_libraries_string == NULL)
		return false;
	raw = pstrdup(shared_preload_libraries_string);
	if (!SplitDirectoriesString(raw, ',', &names))
		return false;
	foreach(lc, names)
	{
		const char *name = (const char *) lfirst(lc);
		const char *base = strrchr(name, '/');

		base = base ? base + 1 : name;
		if (strcmp(base, "citus") == 0 || strcmp(base, "citus.so") == 0)
			found = true;
	}
	return found;
}

void
tenancy_prune_init(void)
{
	DefineCustomEnumVariable("tenancy.tenant_pruning",
							 "Plan tenant-scoped queries for the current tenant, so that Citus routes them to one shard.",
							 "auto: only queries over Citus tables; on: every row-secured table; off: never. "
							 "A plan made for one tenant is planned again after a tenant switch.",
							 &tenancy_tenant_pruning,
							 TENANT_PRUNING_AUTO,
							 tenant_pruning_options,
							 PGC_USERSET,
							 0,
							 NULL, NULL, NULL);
	/* Citus comes first in shared_preload_libraries: it is loaded now. */
	citus_preloaded = process_shared_preload_libraries_in_progress && citus_in_preload();
	prev_planner = planner_hook;
	planner_hook = prune_planner;
	prev_executor_start = ExecutorStart_hook;
	ExecutorStart_hook = prune_executor_start;
}

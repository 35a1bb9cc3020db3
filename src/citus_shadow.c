/*-------------------------------------------------------------------------
 * citus_shadow.c
 *	  Shadow mode and the unmigrated-row count on Citus distributed tables.
 *
 * Citus propagates the tenancy policy to every shard as it is written: on a
 * worker, the policy of shard t_102008 reads
 * tenancy.shadow_read('t'::regclass, tenant_id), where 't' is the worker's
 * own copy of the distributed table (Citus 11 and later keep one on every
 * node, with the metadata: pg_dist_partition, pg_dist_shard).  The shadow
 * counters of a worker are therefore keyed by that table, the distributed
 * table as the worker knows it, and a shard needs no resolution of its own.
 *
 * What a worker does not have is the registry: tenancy.rls_tables is an
 * extension table of each node, filled on the coordinator only.  Instead of
 * copying it, a worker takes the mode from where the coordinator put it:
 * the policy.  A table is counted on a node whose tenancy.rls_tables does
 * not list it when
 *	- Citus lists it as a distributed table (pg_dist_partition), and
 *	- its tenancy_policy's USING expression is exactly
 *	  tenancy.shadow_read(<that table>, <column>): the policy set_mode()
 *	  writes in shadow mode and Citus copies to the workers.
 * Only the table's owner can put that policy there, as only the owner can
 * register a table, so the check trusts what rls_tables would; and the
 * answer follows set_mode() with no synchronisation: ALTER POLICY on the
 * coordinator alters the worker's copy too, whose relcache invalidation
 * drops shadow.c's cached answer.
 *
 * The figures of all nodes are gathered on the coordinator by
 * tenancy.cluster_shadow_stats (citus_shadow.sql).
 *-------------------------------------------------------------------------
 */
#include "tenancy.h"

#include "access/genam.h"
#include "access/htup_details.h"
#include "access/table.h"
#include "catalog/namespace.h"
#include "catalog/pg_namespace.h"
#include "catalog/pg_policy.h"
#include "catalog/pg_type.h"
#include "fmgr.h"
#include "nodes/primnodes.h"
#include "utils/builtins.h"
#include "utils/fmgroids.h"
#include "utils/lsyscache.h"
#include "utils/rel.h"

#include "citus_shadow.h"

/* Does Citus's metadata on this node list relid (pg_dist_partition)? */
bool
citus_table_distributed(Oid relid)
{
	Oid			dist = get_relname_relid("pg_dist_partition", PG_CATALOG_NAMESPACE);
	AttrNumber	attrel;
	Relation	rel;
	ScanKeyData skey;
	SysScanDesc scan;
	bool		found;

	if (!OidIsValid(dist) || !OidIsValid(relid))
		return false;
	attrel = get_attnum(dist, "logicalrelid");
	if (attrel == InvalidAttrNumber)
		return false;
	rel = table_open(dist, AccessShareLock);
	ScanKeyInit(&skey, attrel, BTEqualStrategyNumber, F_OIDEQ, ObjectIdGetDatum(relid));
	scan = systable_beginscan(rel, InvalidOid, false, NULL, 1, &skey);
	found = HeapTupleIsValid(systable_getnext(scan));
	systable_endscan(scan);
	table_close(rel, AccessShareLock);
	return found;
}

/* Is expr tenancy.shadow_read(relid, ...)? */
static bool
is_shadow_read_of(Node *expr, Oid relid)
{
	FuncExpr   *f;
	Const	   *arg;
	char	   *proname;
	Oid			nsp;

	if (expr == NULL || !IsA(expr, FuncExpr))
		return false;
	f = (FuncExpr *) expr;
	if (list_length(f->args) != 2 || !IsA(linitial(f->args), Const))
		return false;
	arg = (Const *) linitial(f->args);
	if (arg->constisnull || arg->consttype != REGCLASSOID ||
		DatumGetObjectId(arg->constvalue) != relid)
		return false;
	proname = get_func_name(f->funcid);
	nsp = get_func_namespace(f->funcid);
	return proname != NULL && strcmp(proname, "shadow_read") == 0 &&
		OidIsValid(nsp) && nsp == get_namespace_oid("tenancy", true);
}

/*
 * Is relid a distributed table whose tenancy_policy is the shadow-mode
 * policy on itself?  (A worker's answer to "registered in shadow mode".)
 */
bool
citus_shadow_policy(Oid relid)
{
	Relation	rel;
	ScanKeyData skey[2];
	SysScanDesc scan;
	HeapTuple	tup;
	bool		result = false;

	if (!citus_table_distributed(relid))
		return false;
	rel = table_open(PolicyRelationId, AccessShareLock);
	ScanKeyInit(&skey[0], Anum_pg_policy_polrelid, BTEqualStrategyNumber, F_OIDEQ,
				ObjectIdGetDatum(relid));
	ScanKeyInit(&skey[1], Anum_pg_policy_polname, BTEqualStrategyNumber, F_NAMEEQ,
				CStringGetDatum("tenancy_policy"));
	scan = systable_beginscan(rel, PolicyPolrelidPolnameIndexId, true, NULL, 2, skey);
	if (HeapTupleIsValid(tup = systable_getnext(scan)))
	{
		bool		isnull;
		Datum		qual = heap_getattr(tup, Anum_pg_policy_polqual, RelationGetDescr(rel), &isnull);

		if (!isnull)
			result = is_shadow_read_of(stringToNode(TextDatumGetCString(qual)), relid);
	}
	systable_endscan(scan);
	table_close(rel, AccessShareLock);
	return result;
}

/*
 * tenancy.rls_citus_distributed(regclass) -> boolean: does Citus distribute
 * the table (or keep it as a reference or Citus-local table)?  false where
 * Citus is not installed.
 */
PG_FUNCTION_INFO_V1(tenancy_rls_citus_distributed);
Datum
tenancy_rls_citus_distributed(PG_FUNCTION_ARGS)
{
	PG_RETURN_BOOL(citus_table_distributed(PG_GETARG_OID(0)));
}

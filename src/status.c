/*-------------------------------------------------------------------------
 * status.c
 *	  Count the rows of a registered table whose tenant column is still
 *	  NULL, as cheaply as the table allows, and record the result in
 *	  tenancy.migration_status.  The one implementation behind both the
 *	  background worker (worker.c) and tenancy.refresh_status().
 *
 * How a table is counted, cheapest first:
 *
 *	proof		the column is NOT NULL, or a validated CHECK (col IS NOT NULL)
 *				exists: zero, from the catalog, without reading the table.
 *	exact		a valid partial index whose predicate is exactly "col IS NULL"
 *				exists: count through it (index or index-only scan), at a
 *				cost proportional to the unmigrated rows.
 *	scan		otherwise the heap is counted in chunks of
 *				tenancy.worker_chunk_pages blocks (a TID range scan each),
 *				one chunk per step.  The worker runs each step in its own
 *				short transaction and goes on while its time budget lasts,
 *				then resumes at the next cycle from the block recorded in
 *				migration_status.scan_position.  Until the first full pass
 *				ends, the figure shown is an estimate from the statistics
 *				(null_frac * rows, method 'estimate'); afterwards the total of
 *				the last complete pass (method 'exact').
 *
 *	shards		a Citus table (citus_shadow.c): its rows are in shards on the
 *				workers, not in the local relation; each shard is counted in
 *				one query on its worker, as its owner, and the figures summed
 *				(method 'exact'; tenancy.citus_shard_sums()).
 *
 * A partitioned table is counted partition by partition: each leaf is
 * counted like a plain table, with its own row (and scan position) in
 * tenancy.migration_status_partitions, one leaf per step, in OID order; the
 * parent's row holds the sum over its current leaves, with the weakest of
 * their methods (proof < exact < estimate; a leaf not counted yet, or a
 * foreign table, is the statistics' estimate), and as scan_position the OID
 * from which the leaves are still to be visited in the pass under way.
 * Autovacuum never analyzes a partitioned parent, so its own statistics are
 * no answer.
 *
 * A step is called inside a transaction (or subtransaction) with SPI
 * connected; it does one unit of work and upserts the status row.  The
 * work on the table runs as its owner (as_owner.c): the relcache and the
 * planner run code the owner controls, which must never get the rights of
 * the worker's role or of a superuser calling refresh_status().
 *-------------------------------------------------------------------------
 */
#include "tenancy.h"

#include <math.h>

#include "access/amapi.h"
#include "access/genam.h"
#include "access/htup_details.h"
#include "access/relation.h"
#include "access/table.h"
#include "access/xact.h"
#include "catalog/namespace.h"
#include "catalog/pg_namespace.h"
#include "catalog/pg_class.h"
#include "catalog/pg_inherits.h"
#include "catalog/pg_statistic.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "nodes/makefuncs.h"
#include "nodes/primnodes.h"
#include "optimizer/optimizer.h"
#include "optimizer/plancat.h"
#include "pgstat.h"
#include "storage/bufmgr.h"
#include "storage/proc.h"
#include "utils/builtins.h"
#include "utils/lsyscache.h"
#include "utils/array.h"
#include "utils/memutils.h"
#include "utils/rel.h"
#include "utils/relcache.h"
#include "utils/syscache.h"
#include "utils/timestamp.h"

#include "citus_shadow.h"

/* GUC variables: the counting code's budget, shared with the worker */
int			tenancy_worker_cycle_budget = 1000;
int			tenancy_worker_chunk_pages = 1024;

void
tenancy_status_init(void)
{
	DefineCustomIntVariable("tenancy.worker_cycle_budget",
							"Time an incremental count may take per cycle and database (refresh_status() too).",
							"Every table still gets one step per cycle.",
							&tenancy_worker_cycle_budget,
							1000, 0, 3600 * 1000,
							PGC_SUSET,
							GUC_UNIT_MS,
							NULL, NULL, NULL);
	DefineCustomIntVariable("tenancy.worker_chunk_pages",
							"Heap pages counted per step (short transaction) of an incremental count.",
							NULL,
							&tenancy_worker_chunk_pages,
							1024, 1, INT_MAX / 2,
							PGC_SUSET,
							0,
							NULL, NULL, NULL);
}

/* Lock waits of the counting code never last longer than this. */
#define STATUS_LOCK_TIMEOUT "100"

typedef enum CountMethod
{
	COUNT_PROOF,
	COUNT_INDEX,
	COUNT_SCAN,
	COUNT_SHARDS
} CountMethod;

/* The previous status row of a table, if any. */
typedef struct StatusRow
{
	bool		found;
	char		column_name[NAMEDATALEN];
	bool		unmigrated_null;
	int64		unmigrated;
	char		method[16];
	bool		measured_null;
	TimestampTz measured_at;
	bool		base_null;		/* the figure before the last change */
	int64		base_unmigrated;
	TimestampTz base_measured_at;	/* last time it was measured */
	bool		rate_null;
	double		rate;
	bool		eta_null;
	double		eta_s;
	bool		scan_null;
	int64		scan_position;
	int64		scan_unmigrated;
	int64		scan_rows;
	int64		total_rows;
	bool		total_null;
} StatusRow;

static void count_shards(Oid relid, const char *qcol, StatusRow *row);

/* Is expr "var IS [NOT] NULL" on attribute attnum of the relation? */
static bool
is_nulltest_on(Node *expr, AttrNumber attnum, NullTestType kind)
{
	NullTest   *nt;
	Node	   *arg;

	if (expr == NULL || !IsA(expr, NullTest))
		return false;
	nt = (NullTest *) expr;
	if (nt->nulltesttype != kind || nt->argisrow)
		return false;
	arg = (Node *) nt->arg;
	while (arg && IsA(arg, RelabelType))
		arg = (Node *) ((RelabelType *) arg)->arg;
	return arg && IsA(arg, Var) && ((Var *) arg)->varattno == attnum;
}

/* A validated CHECK constraint that implies col IS NOT NULL? */
static bool
has_notnull_check(Relation rel, AttrNumber attnum)
{
	TupleConstr *constr = RelationGetDescr(rel)->constr;

	if (constr == NULL)
		return false;
	for (int i = 0; i < constr->num_check; i++)
	{
		ConstrCheck *check = &constr->check[i];
		List	   *conjuncts;
		ListCell   *lc;

		if (!check->ccvalid)
			continue;
		conjuncts = make_ands_implicit((Expr *) stringToNode(check->ccbin));
		foreach(lc, conjuncts)
		{
			if (is_nulltest_on(lfirst(lc), attnum, IS_NOT_NULL))
				return true;
		}
	}
	return false;
}

/* A valid partial index whose whole predicate is col IS NULL? */
static Oid
find_null_index(Relation rel, AttrNumber attnum)
{
	List	   *indexes = RelationGetIndexList(rel);
	ListCell   *lc;
	Oid			found = InvalidOid;

	foreach(lc, indexes)
	{
		Relation	idx = index_open(lfirst_oid(lc), AccessShareLock);
		List	   *pred;

		if (idx->rd_index->indisvalid && idx->rd_index->indisready &&
			idx->rd_indam->amgettuple != NULL)
		{
			pred = RelationGetIndexPredicate(idx);
			if (list_length(pred) == 1 &&
				is_nulltest_on(linitial(pred), attnum, IS_NULL))
				found = RelationGetRelid(idx);
		}
		index_close(idx, AccessShareLock);
		if (OidIsValid(found))
			break;
	}
	list_free(indexes);
	return found;
}

/* Rows in the table, estimated the way the planner does; -1 if unknown. */
static double
estimate_rows(Relation rel)
{
	if (rel->rd_rel->relkind == RELKIND_RELATION)
	{
		BlockNumber pages;
		double		tuples;
		double		allvisfrac;

		estimate_rel_size(rel, NULL, &pages, &tuples, &allvisfrac);
		return tuples;
	}
	return rel->rd_rel->reltuples;
}

/* NULLs of a column estimated from pg_statistic; false without statistics. */
static bool
estimate_nulls(Relation rel, AttrNumber attnum, double rows, int64 *nulls)
{
	HeapTuple	tup;
	float4		nullfrac;
	bool		inh = rel->rd_rel->relkind == RELKIND_PARTITIONED_TABLE;

	if (rows < 0)
		return false;
	tup = SearchSysCache3(STATRELATTINH, ObjectIdGetDatum(RelationGetRelid(rel)),
						  Int16GetDatum(attnum), BoolGetDatum(inh));
	if (!HeapTupleIsValid(tup))
		return false;
	nullfrac = ((Form_pg_statistic) GETSTRUCT(tup))->stanullfrac;
	ReleaseSysCache(tup);
	*nulls = (int64) rint(nullfrac * rows);
	return true;
}

static int64
spi_int8(int row, int col, bool *isnull)
{
	Datum		d = SPI_getbinval(SPI_tuptable->vals[row], SPI_tuptable->tupdesc, col, isnull);

	return *isnull ? 0 : DatumGetInt64(d);
}

/* The table holding the status row: a registered table's or a partition's. */
static const char *
status_table(Oid parent)
{
	return OidIsValid(parent) ? "migration_status_partitions" : "migration_status";
}

/*
 * Read (and row-lock) the previous status row of relid; parent is the
 * registered partitioned table when relid is one of its leaf partitions.
 */
static void
status_read(Oid relid, Oid parent, StatusRow *row)
{
	Oid			argtypes[1] = {OIDOID};
	Datum		values[1] = {ObjectIdGetDatum(relid)};
	bool		isnull;
	char	   *s;

	memset(row, 0, sizeof(StatusRow));
	if (SPI_execute_with_args(psprintf(
									   "SELECT column_name::text, unmigrated, method, measured_at, "
									   "prev_unmigrated, prev_measured_at, scan_position, "
									   "scan_unmigrated, scan_rows, total_rows "
									   "FROM tenancy.%s "
									   "WHERE relation OPERATOR(pg_catalog.=) $1::pg_catalog.regclass FOR UPDATE",
									   status_table(parent)),
							  1, argtypes, values, NULL, false, 1) != SPI_OK_SELECT)
		elog(ERROR, "could not read tenancy.%s", status_table(parent));
	if (SPI_processed == 0)
		return;
	row->found = true;
	s = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1);
	strlcpy(row->column_name, s ? s : "", NAMEDATALEN);
	row->unmigrated = spi_int8(0, 2, &row->unmigrated_null);
	s = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 3);
	strlcpy(row->method, s ? s : "", sizeof(row->method));
	row->measured_at = DatumGetTimestampTz(SPI_getbinval(SPI_tuptable->vals[0],
														 SPI_tuptable->tupdesc, 4,
														 &row->measured_null));
	if (row->measured_null)
		row->measured_at = 0;
	row->base_unmigrated = spi_int8(0, 5, &row->base_null);
	row->base_measured_at = DatumGetTimestampTz(SPI_getbinval(SPI_tuptable->vals[0],
															  SPI_tuptable->tupdesc, 6, &isnull));
	row->base_null |= isnull;
	row->scan_position = spi_int8(0, 7, &row->scan_null);
	row->scan_unmigrated = spi_int8(0, 8, &isnull);
	row->scan_rows = spi_int8(0, 9, &isnull);
	row->total_rows = spi_int8(0, 10, &row->total_null);
}

/* Upsert the status row (of a leaf partition of parent, if valid). */
static void
status_write(Oid relid, Oid parent, const char *column, const StatusRow *row, TimestampTz now)
{
	Oid			argtypes[16] = {OIDOID, TEXTOID, INT8OID, INT8OID, FLOAT8OID, TEXTOID,
		TIMESTAMPTZOID, TIMESTAMPTZOID, FLOAT8OID, FLOAT8OID, INT8OID, INT8OID, INT8OID,
	INT8OID, TIMESTAMPTZOID, OIDOID};
	Datum		values[16];
	char		nulls[16];
	bool		part = OidIsValid(parent);
	double		percent = 0;
	bool		percent_null = true;

	memset(nulls, ' ', sizeof(nulls));
	if (!row->unmigrated_null && !row->total_null)
	{
		double		total = Max((double) row->total_rows, (double) row->unmigrated);

		percent_null = false;
		percent = total > 0 ? 100.0 * (total - (double) row->unmigrated) / total : 100.0;
	}
	values[0] = ObjectIdGetDatum(relid);
	values[1] = CStringGetTextDatum(column);
	values[2] = Int64GetDatum(row->unmigrated);
	nulls[2] = row->unmigrated_null ? 'n' : ' ';
	values[3] = Int64GetDatum(row->total_rows);
	nulls[3] = row->total_null ? 'n' : ' ';
	values[4] = Float8GetDatum(percent);
	nulls[4] = percent_null ? 'n' : ' ';
	values[5] = CStringGetTextDatum(row->method);
	values[6] = TimestampTzGetDatum(now);
	values[7] = TimestampTzGetDatum(row->measured_at);
	nulls[7] = row->measured_null ? 'n' : ' ';
	values[8] = Float8GetDatum(row->rate);
	nulls[8] = row->rate_null ? 'n' : ' ';
	values[9] = Float8GetDatum(row->eta_s);
	nulls[9] = row->eta_null ? 'n' : ' ';
	values[10] = Int64GetDatum(row->scan_position);
	values[11] = Int64GetDatum(row->scan_unmigrated);
	values[12] = Int64GetDatum(row->scan_rows);
	nulls[10] = nulls[11] = nulls[12] = row->scan_null ? 'n' : ' ';
	values[13] = Int64GetDatum(row->base_unmigrated);
	values[14] = TimestampTzGetDatum(row->base_measured_at);
	nulls[13] = nulls[14] = row->base_null ? 'n' : ' ';
	values[15] = ObjectIdGetDatum(parent);

	if (SPI_execute_with_args(psprintf(
									   "INSERT INTO tenancy.%s AS s (relation, column_name, "
									   "unmigrated, total_rows, percent_migrated, method, checked_at, measured_at, "
									   "rate_per_s, eta, scan_position, scan_unmigrated, scan_rows, prev_unmigrated, prev_measured_at%s) "
									   "VALUES ($1::pg_catalog.regclass, $2::pg_catalog.name, $3, $4, "
									   "pg_catalog.round($5::pg_catalog.numeric, 2), $6, $7, $8, "
									   "pg_catalog.round($9::pg_catalog.numeric, 3), "
									   "pg_catalog.make_interval(secs => pg_catalog.round($10)), $11, $12, $13, $14, $15%s) "
									   "ON CONFLICT (relation) DO UPDATE SET column_name = EXCLUDED.column_name, %s"
									   "unmigrated = EXCLUDED.unmigrated, total_rows = EXCLUDED.total_rows, "
									   "percent_migrated = EXCLUDED.percent_migrated, method = EXCLUDED.method, "
									   "checked_at = EXCLUDED.checked_at, measured_at = EXCLUDED.measured_at, "
									   "rate_per_s = EXCLUDED.rate_per_s, eta = EXCLUDED.eta, "
									   "scan_position = EXCLUDED.scan_position, "
									   "scan_unmigrated = EXCLUDED.scan_unmigrated, scan_rows = EXCLUDED.scan_rows, "
									   "prev_unmigrated = EXCLUDED.prev_unmigrated, prev_measured_at = EXCLUDED.prev_measured_at",
									   status_table(parent),
									   part ? ", parent" : "",
									   part ? ", $16::pg_catalog.regclass" : "",
									   part ? "parent = EXCLUDED.parent, " : ""),
							  part ? 16 : 15, argtypes, values, nulls, false, 0) != SPI_OK_INSERT)
		elog(ERROR, "could not write tenancy.%s", status_table(parent));
}

/*
 * Run a counting query with settings that keep it cheap, polite and
 * honest: no parallel workers, no sequential or bitmap scan when an index
 * or a TID range does the job, and row_security off, so that a role subject
 * to a policy gets an error instead of a count of the rows it may see.  The settings are undone when
 * the query ends, as for a function's SET clause.
 */
static void
run_count(const char *sql, int nargs, Oid *argtypes, Datum *values,
		  int64 *count1, int64 *count2)
{
	int			nestlevel = NewGUCNestLevel();
	bool		isnull;

	(void) set_config_option("enable_seqscan", "off", PGC_USERSET, PGC_S_SESSION,
							 GUC_ACTION_SAVE, true, 0, false);
	(void) set_config_option("enable_bitmapscan", "off", PGC_USERSET, PGC_S_SESSION,
							 GUC_ACTION_SAVE, true, 0, false);
	(void) set_config_option("max_parallel_workers_per_gather", "0", PGC_USERSET,
							 PGC_S_SESSION, GUC_ACTION_SAVE, true, 0, false);
	/* Never a silently partial count: fail where row security would filter. */
	(void) set_config_option("row_security", "off", PGC_USERSET,
							 PGC_S_SESSION, GUC_ACTION_SAVE, true, 0, false);
	if (SPI_execute_with_args(sql, nargs, argtypes, values, NULL, true, 1) != SPI_OK_SELECT ||
		SPI_processed != 1)
		elog(ERROR, "counting query failed: %s", sql);
	*count1 = spi_int8(0, 1, &isnull);
	if (count2)
		*count2 = spi_int8(0, 2, &isnull);
	AtEOXact_GUC(true, nestlevel);
}

/*
 * Set lock_timeout for the rest of the (sub)transaction when the session's
 * is longer or unlimited; returns the GUC nest level to pass to
 * AtEOXact_GUC when done.
 */
int
status_lock_timeout_begin(void)
{
	int			nestlevel = NewGUCNestLevel();

	if (LockTimeout == 0 || LockTimeout > atoi(STATUS_LOCK_TIMEOUT))
		(void) set_config_option("lock_timeout", STATUS_LOCK_TIMEOUT, PGC_USERSET,
								 PGC_S_SESSION, GUC_ACTION_SAVE, true, 0, false);
	return nestlevel;
}

/*
 * The row a step starts from: the previous status row of relid, or a blank
 * one when there is none or it was for another column (start over).
 */
static void
status_start(Oid relid, Oid parent, const char *column, StatusRow *prev, StatusRow *row)
{
	status_read(relid, parent, prev);
	*row = *prev;
	row->found = true;
	if (prev->found && strcmp(prev->column_name, column) != 0)
	{
		memset(row, 0, sizeof(StatusRow));
		prev->found = false;
	}
	if (!prev->found)
	{
		row->unmigrated_null = row->measured_null = row->base_null = true;
		row->scan_null = row->total_null = true;
	}
}

/*
 * The end of a step: the figure before the last change, the rate, the ETA,
 * a LOG line when a measured figure changed (with do_log), and the upsert.
 * measured says the figure is a new exact count or proof (how says which).
 */
static void
status_finish(Oid relid, Oid parent, const char *column, const char *qualname,
			  const char *qcol, const StatusRow *prev, StatusRow *row,
			  bool measured, bool do_log, const char *how)
{
	TimestampTz now = GetCurrentTimestamp();

	if (strcmp(row->method, "estimate") == 0)
		row->base_null = true;
	if (measured)
	{
		bool		comparable = prev->found && !prev->unmigrated_null && !prev->measured_null &&
			strcmp(prev->method, "estimate") != 0;

		/* Remember the figure before a change, and when it was last seen. */
		if (comparable && prev->unmigrated != row->unmigrated)
		{
			row->base_null = false;
			row->base_unmigrated = prev->unmigrated;
			row->base_measured_at = prev->measured_at;
		}
		else if (!comparable)
			row->base_null = true;
		row->measured_at = now;
		row->measured_null = false;

		if (do_log && (!comparable || prev->unmigrated != row->unmigrated))
		{
			if (row->unmigrated == 0)
				ereport(LOG,
						(errmsg("tenancy: every row of %s has %s set", qualname, qcol),
						 errdetail("Counted by %s.", how)));
			else
				ereport(LOG,
						(errmsg("tenancy: %s has " INT64_FORMAT " rows with %s NULL",
								qualname, row->unmigrated, qcol),
						 comparable ?
						 errdetail("Previously " INT64_FORMAT ".", prev->unmigrated) : 0));
		}
	}

	/*
	 * Rate: rows migrated since the figure before the last change was last
	 * seen, per second.  It is recomputed at every check, so it decays
	 * while nothing moves; the ETA assumes it holds.
	 */
	row->rate_null = row->eta_null = true;
	if (!row->base_null && !row->unmigrated_null && now > row->base_measured_at)
	{
		row->rate = (double) (row->base_unmigrated - row->unmigrated) /
			((double) (now - row->base_measured_at) / USECS_PER_SEC);
		row->rate_null = false;
	}
	if (!row->unmigrated_null && row->unmigrated == 0 && strcmp(row->method, "estimate") != 0)
	{
		row->eta_s = 0;
		row->eta_null = false;
	}
	else if (!row->rate_null && row->rate > 0 && !row->unmigrated_null)
	{
		row->eta_s = Min((double) row->unmigrated / row->rate, 1e9);
		row->eta_null = false;
	}

	status_write(relid, parent, column, row, now);
}

/*
 * One step of counting a table (a plain table, or a leaf partition of the
 * registered partitioned table parent): see the file header.  Returns true
 * when an incremental pass is still under way.
 */
static bool
count_table(Relation rel, const char *column, Oid parent, bool in_worker)
{
	Oid			relid = RelationGetRelid(rel);
	AttrNumber	attnum;
	CountMethod how;
	StatusRow	prev;
	StatusRow	row;
	bool		measured = false;
	bool		more = false;
	char	   *relname;
	char	   *qualname;
	const char *qcol;
	Oid			index = InvalidOid;
	double		rows;
	StringInfoData sql;
	AsOwnerState as_owner;

	relname = RelationGetRelationName(rel);
	qualname = quote_qualified_identifier(get_namespace_name(RelationGetNamespace(rel)), relname);
	attnum = get_attnum(relid, column);
	if (attnum == InvalidAttrNumber || attnum < 0)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_COLUMN),
				 errmsg("column \"%s\" of relation \"%s\" does not exist", column, relname),
				 errhint("Add the tenant column with tenancy.add_tenant_column(), or correct tenancy.tables.")));
	qcol = quote_identifier(column);

	status_start(relid, parent, column, &prev, &row);

	/*
	 * From here on the table's own code can run: the planner and the
	 * relcache evaluate index predicates and expressions, the count runs
	 * operators and functions the owner chose.  Run it as the table's owner
	 * (or as the caller, if less privileged) under
	 * SECURITY_RESTRICTED_OPERATION, and see every row under FORCE ROW
	 * LEVEL SECURITY (as_owner.c).  tenancy.migration_status is read and
	 * written outside, as the caller.
	 */
	as_owner_begin(relid, GetUserId(), &as_owner);

	if (TupleDescAttr(RelationGetDescr(rel), attnum - 1)->attnotnull ||
		has_notnull_check(rel, attnum))
		how = COUNT_PROOF;
	else if (citus_table_distributed(relid))
		how = COUNT_SHARDS;
	else if (OidIsValid(index = find_null_index(rel, attnum)))
		how = COUNT_INDEX;
	else
		how = COUNT_SCAN;

	if (in_worker)
	{
		char		activity[NAMEDATALEN * 3 + 64];

		snprintf(activity, sizeof(activity), "tenancy: counting %s.%s (%s)",
				 qualname, qcol,
				 how == COUNT_PROOF ? "catalog proof" :
				 how == COUNT_INDEX ? "partial index" :
				 how == COUNT_SHARDS ? "Citus shards" : "incremental scan");
		pgstat_report_activity(STATE_RUNNING, activity);
	}

	rows = estimate_rows(rel);
	row.total_null = rows < 0;
	row.total_rows = rows < 0 ? 0 : (int64) rint(rows);
	initStringInfo(&sql);

	switch (how)
	{
		case COUNT_PROOF:
			row.unmigrated = 0;
			row.unmigrated_null = false;
			strlcpy(row.method, "proof", sizeof(row.method));
			row.scan_null = true;
			measured = true;
			break;

		case COUNT_INDEX:
			{
				int64		n;

				/* Shaped like the index predicate, so the planner uses it. */
				appendStringInfo(&sql, "SELECT pg_catalog.count(*) FROM ONLY %s WHERE %s IS NULL",
								 qualname, qcol);
				run_count(sql.data, 0, NULL, NULL, &n, NULL);
				row.unmigrated = n;
				row.unmigrated_null = false;
				strlcpy(row.method, "exact", sizeof(row.method));
				row.scan_null = true;
				measured = true;
				break;
			}

		case COUNT_SHARDS:
			count_shards(relid, qcol, &row);
			measured = true;
			break;

		case COUNT_SCAN:
			{
				BlockNumber nblocks = RelationGetNumberOfBlocks(rel);
				int64		start;
				int64		end;
				int64		nulls = 0;
				int64		seen = 0;

				if (row.scan_null)
				{
					/* A new pass. */
					row.scan_null = false;
					row.scan_position = 0;
					row.scan_unmigrated = 0;
					row.scan_rows = 0;
				}
				start = row.scan_position;
				end = Min(start + (int64) tenancy_worker_chunk_pages, (int64) nblocks);
				if (start < end)
				{
					Oid			types[2] = {TEXTOID, TEXTOID};
					Datum		vals[2];

					vals[0] = CStringGetTextDatum(psprintf("(" INT64_FORMAT ",0)", start));
					vals[1] = CStringGetTextDatum(psprintf("(" INT64_FORMAT ",0)", end));
					appendStringInfo(&sql,
									 "SELECT pg_catalog.count(*) FILTER (WHERE %s IS NULL), pg_catalog.count(*) "
									 "FROM ONLY %s WHERE ctid OPERATOR(pg_catalog.>=) $1::pg_catalog.tid "
									 "AND ctid OPERATOR(pg_catalog.<) $2::pg_catalog.tid",
									 qcol, qualname);
					run_count(sql.data, 2, types, vals, &nulls, &seen);
				}
				row.scan_unmigrated += nulls;
				row.scan_rows += seen;
				row.scan_position = end;
				if (end >= (int64) RelationGetNumberOfBlocks(rel))
				{
					/* The pass is complete: its total is the new figure. */
					row.unmigrated = row.scan_unmigrated;
					row.unmigrated_null = false;
					row.total_rows = row.scan_rows;
					row.total_null = false;
					strlcpy(row.method, "exact", sizeof(row.method));
					row.scan_null = true;
					measured = true;
				}
				else
				{
					more = true;
					if (!prev.found || strcmp(prev.method, "estimate") == 0)
					{
						/* No complete pass yet: show the statistics' estimate. */
						row.unmigrated_null = !estimate_nulls(rel, attnum, rows, &row.unmigrated);
						strlcpy(row.method, "estimate", sizeof(row.method));
					}
					else if (strcmp(prev.method, "exact") != 0)
					{
						/* Was proof or index: the old figure no longer holds. */
						row.unmigrated_null = !estimate_nulls(rel, attnum, rows, &row.unmigrated);
						strlcpy(row.method, "estimate", sizeof(row.method));
						row.base_null = true;
					}
					else if (!prev.total_null)
					{
						/* Keep the last pass's total row count. */
						row.total_rows = prev.total_rows;
						row.total_null = false;
					}
				}
				break;
			}
	}
	as_owner_end(&as_owner);

	/* A partition's figures are logged as its parent's sum. */
	status_finish(relid, parent, column, qualname, qcol, &prev, &row, measured,
				  !OidIsValid(parent),
				  how == COUNT_PROOF ? "catalog proof" : "exact count");
	pfree(sql.data);
	return more;
}

/*
 * A Citus table: its rows are in shards on the workers, not in the local
 * relation.  Each shard is counted in one query on its worker, as its owner
 * (tenancy.citus_shard_sums(), citus_shadow.sql), and the sums are exact.
 * tenancy.citus_shard_sums() runs as the role that runs this step: the
 * owner, under SECURITY_RESTRICTED_OPERATION (as_owner_begin()).
 */
static void
count_shards(Oid relid, const char *qcol, StatusRow *row)
{
	Oid			types[2] = {REGCLASSOID, TEXTOID};
	Datum		vals[2];
	char	   *tpl;
	int64		nulls;
	int64		seen;
	bool		isnull;
	ArrayType  *arr;
	Datum	   *elems;
	int			nelems;
	StringInfoData col;

	/* A literal % of the column name must survive format() on the worker. */
	initStringInfo(&col);
	for (const char *c = qcol; *c; c++)
	{
		if (*c == '%')
			appendStringInfoChar(&col, '%');
		appendStringInfoChar(&col, *c);
	}
	tpl = psprintf("SELECT pg_catalog.count(*) FILTER (WHERE %s IS NULL), pg_catalog.count(*) FROM %%1$s",
				   col.data);
	vals[0] = ObjectIdGetDatum(relid);
	vals[1] = CStringGetTextDatum(tpl);
	if (SPI_execute_with_args("SELECT tenancy.citus_shard_sums($1, $2)", 2, types, vals, NULL,
							  false, 1) != SPI_OK_SELECT || SPI_processed != 1)
		elog(ERROR, "counting the shards of relation %u failed", relid);
	arr = DatumGetArrayTypeP(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
	nulls = seen = 0;
	if (!isnull)
	{
		deconstruct_array(arr, INT8OID, 8, FLOAT8PASSBYVAL, TYPALIGN_DOUBLE, &elems, NULL, &nelems);
		if (nelems == 2)
		{
			nulls = DatumGetInt64(elems[0]);
			seen = DatumGetInt64(elems[1]);
		}
	}
	row->unmigrated = nulls;
	row->unmigrated_null = false;
	row->total_rows = seen;
	row->total_null = false;
	strlcpy(row->method, "exact", sizeof(row->method));
	row->scan_null = true;
}

/* The leaf partitions of a partitioned table, in OID order. */
static List *
leaf_partitions(Oid relid)
{
	List	   *all = find_all_inheritors(relid, NoLock, NULL);
	List	   *leaves = NIL;
	ListCell   *lc;

	foreach(lc, all)
	{
		char		relkind = get_rel_relkind(lfirst_oid(lc));

		if (relkind == RELKIND_RELATION || relkind == RELKIND_FOREIGN_TABLE)
			leaves = lappend_oid(leaves, lfirst_oid(lc));
	}
	list_free(all);
	list_sort(leaves, list_oid_cmp);
	return leaves;
}

/*
 * The parent's figures: the sum over its current leaves of their status
 * rows, with the weakest method; a leaf without a row of this column (not
 * counted yet, or a foreign table) is the statistics' estimate, and one
 * without statistics makes the sum unknown.  Also drops the rows of
 * partitions that are no longer leaves of parent.
 */
static void
partitions_sum(Oid parent, List *leaves, const char *column, StatusRow *row)
{
	static const char *const methods[] = {"proof", "exact", "estimate"};
	Oid			argtypes[2] = {OIDOID, OIDARRAYOID};
	Oid			readtypes[2] = {OIDOID, TEXTOID};
	Datum		values[2];
	Datum	   *oids = palloc(sizeof(Datum) * Max(list_length(leaves), 1));
	int			n = 0;
	int			weakest = 0;
	int64		unmigrated = 0;
	int64		total = 0;
	bool		unmigrated_null = false;
	bool		total_null = false;
	ListCell   *lc;
	SPITupleTable *tuptable;
	uint64		nrows;

	foreach(lc, leaves)
		oids[n++] = ObjectIdGetDatum(lfirst_oid(lc));
	values[0] = ObjectIdGetDatum(parent);
	values[1] = PointerGetDatum(construct_array(oids, n, OIDOID, sizeof(Oid), true, TYPALIGN_INT));
	if (SPI_execute_with_args("DELETE FROM tenancy.migration_status_partitions "
							  "WHERE parent OPERATOR(pg_catalog.=) $1::pg_catalog.regclass "
							  "AND relation::pg_catalog.oid OPERATOR(pg_catalog.<>) ALL ($2)",
							  2, argtypes, values, NULL, false, 0) != SPI_OK_DELETE)
		elog(ERROR, "could not prune tenancy.migration_status_partitions");
	values[1] = CStringGetTextDatum(column);
	if (SPI_execute_with_args("SELECT relation::pg_catalog.oid, unmigrated, total_rows, method "
							  "FROM tenancy.migration_status_partitions "
							  "WHERE parent OPERATOR(pg_catalog.=) $1::pg_catalog.regclass "
							  "AND column_name OPERATOR(pg_catalog.=) $2::pg_catalog.name",
							  2, readtypes, values, NULL, false, 0) != SPI_OK_SELECT)
		elog(ERROR, "could not read tenancy.migration_status_partitions");
	tuptable = SPI_tuptable;
	nrows = SPI_processed;

	foreach(lc, leaves)
	{
		Oid			leaf = lfirst_oid(lc);
		bool		found = false;

		CHECK_FOR_INTERRUPTS();
		for (uint64 i = 0; i < nrows && !found; i++)
		{
			HeapTuple	tup = tuptable->vals[i];
			bool		isnull;
			char	   *method;
			int64		v;

			if (DatumGetObjectId(SPI_getbinval(tup, tuptable->tupdesc, 1, &isnull)) != leaf)
				continue;
			found = true;
			v = DatumGetInt64(SPI_getbinval(tup, tuptable->tupdesc, 2, &isnull));
			if (isnull)
				unmigrated_null = true;
			else
				unmigrated += v;
			v = DatumGetInt64(SPI_getbinval(tup, tuptable->tupdesc, 3, &isnull));
			if (isnull)
				total_null = true;
			else
				total += v;
			method = SPI_getvalue(tup, tuptable->tupdesc, 4);
			for (int m = 0; m < (int) lengthof(methods); m++)
				if (strcmp(method, methods[m]) == 0)
					weakest = Max(weakest, m);
		}
		if (!found)
		{
			/* Not counted yet: the statistics' estimate, as for a plain table. */
			Relation	lrel = try_relation_open(leaf, AccessShareLock);
			AttrNumber	attnum;
			AsOwnerState as_owner;
			double		rows;
			int64		nulls;

			if (lrel == NULL)
				continue;		/* dropped meanwhile */
			weakest = (int) lengthof(methods) - 1;
			attnum = get_attnum(leaf, column);
			as_owner_begin(leaf, GetUserId(), &as_owner);
			rows = estimate_rows(lrel);
			if (attnum > 0 && estimate_nulls(lrel, attnum, rows, &nulls))
				unmigrated += nulls;
			else
				unmigrated_null = true;
			as_owner_end(&as_owner);
			if (rows < 0)
				total_null = true;
			else
				total += (int64) rint(rows);
			relation_close(lrel, AccessShareLock);
		}
	}
	row->unmigrated = unmigrated_null ? 0 : unmigrated;
	row->unmigrated_null = unmigrated_null;
	row->total_rows = total_null ? 0 : total;
	row->total_null = total_null;
	strlcpy(row->method, methods[weakest], sizeof(row->method));
	pfree(oids);
}

/*
 * One step of counting a partitioned table: one leaf partition, the next
 * of the pass under way (or the first of a new pass), counted with
 * count_table(); then the parent's row is the sum.  Returns true while the
 * pass is under way.  Until the pass ends, the parent's scan_unmigrated
 * keeps the figure of the last complete pass, which the rate is based on.
 */
static bool
partitioned_step(Relation rel, const char *column, bool in_worker)
{
	Oid			relid = RelationGetRelid(rel);
	List	   *leaves = leaf_partitions(relid);
	StatusRow	prev;
	StatusRow	row;
	StatusRow	last;
	int64		cursor;
	int64		next;
	bool		pass_done = true;
	bool		visited = false;
	ListCell   *lc;
	char	   *qualname;

	qualname = quote_qualified_identifier(get_namespace_name(RelationGetNamespace(rel)),
										  RelationGetRelationName(rel));
	status_start(relid, InvalidOid, column, &prev, &row);
	cursor = row.scan_null ? 0 : row.scan_position;
	next = cursor;

	/* The first table leaf from the cursor on: count it one step. */
	foreach(lc, leaves)
	{
		Oid			leaf = lfirst_oid(lc);
		Relation	lrel;
		bool		leaf_more;

		if ((int64) leaf < cursor || get_rel_relkind(leaf) != RELKIND_RELATION)
			continue;
		lrel = try_relation_open(leaf, AccessShareLock);
		if (lrel == NULL)
			continue;			/* dropped meanwhile */
		leaf_more = count_table(lrel, column, relid, in_worker);
		relation_close(lrel, AccessShareLock);
		next = leaf_more ? (int64) leaf : (int64) leaf + 1;
		visited = true;
		break;
	}
	if (!visited)
		next = PG_INT64_MAX;	/* no leaf left from the cursor on */
	foreach(lc, leaves)
	{
		if ((int64) lfirst_oid(lc) >= next && get_rel_relkind(lfirst_oid(lc)) == RELKIND_RELATION)
		{
			pass_done = false;
			break;
		}
	}

	/* The figure of the last complete pass, to compare with at its end. */
	last = prev;
	if (prev.found && !prev.scan_null)
	{
		last.unmigrated_null = prev.scan_unmigrated < 0;
		last.unmigrated = prev.scan_unmigrated;
	}

	partitions_sum(relid, leaves, column, &row);
	if (pass_done)
		row.scan_null = true;
	else
	{
		row.scan_null = false;
		row.scan_position = next;
		row.scan_unmigrated = last.unmigrated_null || strcmp(last.method, "estimate") == 0
			? -1 : last.unmigrated;
		row.scan_rows = 0;
	}
	status_finish(relid, InvalidOid, column, qualname, quote_identifier(column),
				  &last, &row, pass_done && strcmp(row.method, "estimate") != 0, true,
				  "the sum of its partitions");
	list_free(leaves);
	return !pass_done;
}

/*
 * One step of counting for relid: see the file header.  Returns true when
 * a pass is still under way (another step would advance it).  With
 * in_worker, the step reports what it does in pg_stat_activity.
 */
bool
status_step(Oid relid, const char *column, bool in_worker)
{
	Relation	rel;
	bool		more;

	rel = try_relation_open(relid, AccessShareLock);
	if (rel == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_TABLE),
				 errmsg("relation with OID %u does not exist", relid),
				 errhint("Remove it from tenancy.tables.")));
	if (rel->rd_rel->relkind != RELKIND_RELATION &&
		rel->rd_rel->relkind != RELKIND_PARTITIONED_TABLE)
		ereport(ERROR,
				(errcode(ERRCODE_WRONG_OBJECT_TYPE),
				 errmsg("\"%s\" is not a table", RelationGetRelationName(rel)),
				 errdetail("Only tables and partitioned tables can be counted.")));
	if (get_attnum(relid, column) == InvalidAttrNumber)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_COLUMN),
				 errmsg("column \"%s\" of relation \"%s\" does not exist", column,
						RelationGetRelationName(rel)),
				 errhint("Add the tenant column with tenancy.add_tenant_column(), or correct tenancy.tables.")));
	if (rel->rd_rel->relkind == RELKIND_PARTITIONED_TABLE)
		more = partitioned_step(rel, column, in_worker);
	else
		more = count_table(rel, column, InvalidOid, in_worker);
	relation_close(rel, AccessShareLock);
	return more;
}

/*
 * Remove status rows of relations that were dropped or unregistered;
 * logs each one.
 */
void
status_prune(void)
{
	if (SPI_execute("DELETE FROM tenancy.migration_status s "
					"WHERE NOT EXISTS (SELECT 1 FROM tenancy.tables t "
					"JOIN pg_catalog.pg_class c ON c.oid OPERATOR(pg_catalog.=) t.relation::pg_catalog.oid "
					"WHERE t.relation::pg_catalog.oid OPERATOR(pg_catalog.=) s.relation::pg_catalog.oid) "
					"RETURNING s.relation::pg_catalog.oid::pg_catalog.text", false, 0) != SPI_OK_DELETE_RETURNING)
		elog(ERROR, "could not prune tenancy.migration_status");
	for (uint64 i = 0; i < SPI_processed; i++)
		ereport(LOG,
				(errmsg("tenancy: no longer reporting on relation %s",
						SPI_getvalue(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 1)),
				 errdetail("The table was dropped or removed from tenancy.tables.")));
	/* Partitions: with their parent, or when dropped themselves. */
	if (SPI_execute("DELETE FROM tenancy.migration_status_partitions p "
					"WHERE NOT EXISTS (SELECT 1 FROM tenancy.migration_status s "
					"WHERE s.relation::pg_catalog.oid OPERATOR(pg_catalog.=) p.parent::pg_catalog.oid) "
					"OR NOT EXISTS (SELECT 1 FROM pg_catalog.pg_class c "
					"WHERE c.oid OPERATOR(pg_catalog.=) p.relation::pg_catalog.oid)",
					false, 0) != SPI_OK_DELETE)
		elog(ERROR, "could not prune tenancy.migration_status_partitions");
}

/*
 * The registered tables that still exist (relid = InvalidOid: all of
 * them), in OID order, as a list of StatusTable allocated in cxt.
 */
List *
status_tables(Oid relid, MemoryContext cxt)
{
	Oid			argtypes[1] = {OIDOID};
	Datum		values[1] = {ObjectIdGetDatum(relid)};
	List	   *result = NIL;
	MemoryContext old;

	if (SPI_execute_with_args("SELECT t.relation::pg_catalog.oid, t.column_name::pg_catalog.text, "
							  "pg_catalog.format('%I.%I', n.nspname, c.relname) "
							  "FROM tenancy.tables t "
							  "JOIN pg_catalog.pg_class c ON c.oid OPERATOR(pg_catalog.=) t.relation::pg_catalog.oid "
							  "JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) c.relnamespace "
							  "WHERE $1 OPERATOR(pg_catalog.=) 0 OR t.relation::pg_catalog.oid OPERATOR(pg_catalog.=) $1 "
							  "ORDER BY 1",
							  1, argtypes, values, NULL, true, 0) != SPI_OK_SELECT)
		elog(ERROR, "could not read tenancy.tables");
	old = MemoryContextSwitchTo(cxt);
	for (uint64 i = 0; i < SPI_processed; i++)
	{
		StatusTable *t = palloc(sizeof(StatusTable));
		bool		isnull;

		t->relid = DatumGetObjectId(SPI_getbinval(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 1, &isnull));
		strlcpy(t->column, SPI_getvalue(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 2), NAMEDATALEN);
		strlcpy(t->name, SPI_getvalue(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 3), sizeof(t->name));
		result = lappend(result, t);
	}
	MemoryContextSwitchTo(old);
	return result;
}

/* Count relid until its pass ends or the deadline passes. */
static void
refresh_one(StatusTable *t, TimestampTz deadline)
{
	while (status_step(t->relid, t->column, false))
	{
		CHECK_FOR_INTERRUPTS();
		if (GetCurrentTimestamp() >= deadline)
			break;
	}
}

/*
 * The name of a relation as the pinned SQL functions print a regclass
 * (search_path = pg_catalog, pg_temp): qualified unless it is in one of
 * those, so that the "not registered" error reads as the one of
 * tenancy.registered_table().
 */
static char *
status_pinned_name(Oid relid)
{
	Oid			nsp = get_rel_namespace(relid);
	char	   *rel = get_rel_name(relid);

	if (nsp == PG_CATALOG_NAMESPACE || isTempNamespace(nsp))
		return (char *) quote_identifier(rel);
	return quote_qualified_identifier(get_namespace_name(nsp), rel);
}

/*
 * tenancy.refresh_status(tbl regclass DEFAULT NULL) returns setof
 * tenancy.migration_status: what one worker cycle does, for one registered
 * table or all of them, in the caller's transaction, within
 * tenancy.worker_cycle_budget.  For one named table errors are raised; for
 * all tables each is counted in a subtransaction and an error becomes a
 * WARNING.
 */
PG_FUNCTION_INFO_V1(tenancy_refresh_status);
Datum
tenancy_refresh_status(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	Oid			relid = PG_ARGISNULL(0) ? InvalidOid : PG_GETARG_OID(0);
	TimestampTz deadline;
	TupleDesc	tupdesc;
	Tuplestorestate *tupstore;
	MemoryContext per_query;
	MemoryContext oldcxt;
	List	   *tables;
	ListCell   *lc;
	int			nestlevel;
	Oid			argtypes[1] = {OIDARRAYOID};
	Datum		values[1];
	Datum	   *oids;
	volatile int n = 0;

	if (rsinfo == NULL || !IsA(rsinfo, ReturnSetInfo) ||
		!(rsinfo->allowedModes & SFRM_Materialize))
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("set-valued function called in context that cannot accept a set")));
	if (get_call_result_type(fcinfo, NULL, &tupdesc) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "return type must be a row type");

	deadline = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), tenancy_worker_cycle_budget);
	SPI_connect();
	nestlevel = status_lock_timeout_begin();

	tables = status_tables(relid, CurrentMemoryContext);
	if (OidIsValid(relid) && tables == NIL)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("table %s is not registered in tenancy.tables", status_pinned_name(relid)),
				 errhint("Register it with tenancy.add_tenant_column().")));
	if (!OidIsValid(relid))
		status_prune();

	oids = palloc(sizeof(Datum) * Max(list_length(tables), 1));
	foreach(lc, tables)
	{
		StatusTable *t = lfirst(lc);
		MemoryContext cxt = CurrentMemoryContext;
		ResourceOwner owner = CurrentResourceOwner;

		CHECK_FOR_INTERRUPTS();
		oids[n++] = ObjectIdGetDatum(t->relid);
		if (OidIsValid(relid))
		{
			refresh_one(t, deadline);
			continue;
		}
		BeginInternalSubTransaction(NULL);
		MemoryContextSwitchTo(cxt);
		PG_TRY();
		{
			refresh_one(t, deadline);
			ReleaseCurrentSubTransaction();
			MemoryContextSwitchTo(cxt);
			CurrentResourceOwner = owner;
		}
		PG_CATCH();
		{
			ErrorData  *edata;

			MemoryContextSwitchTo(cxt);
			edata = CopyErrorData();
			FlushErrorState();
			RollbackAndReleaseCurrentSubTransaction();
			MemoryContextSwitchTo(cxt);
			CurrentResourceOwner = owner;
			if (edata->sqlerrcode == ERRCODE_QUERY_CANCELED)
				ReThrowError(edata);
			ereport(WARNING,
					(errcode(edata->sqlerrcode),
					 errmsg("could not count unmigrated rows of %s: %s",
							t->name, edata->message)));
			FreeErrorData(edata);
		}
		PG_END_TRY();
	}
	AtEOXact_GUC(true, nestlevel);

	values[0] = PointerGetDatum(construct_array(oids, n, OIDOID, sizeof(Oid), true, TYPALIGN_INT));
	if (SPI_execute_with_args("SELECT s.* FROM tenancy.migration_status s "
							  "WHERE s.relation::pg_catalog.oid OPERATOR(pg_catalog.=) ANY ($1) "
							  "ORDER BY s.relation::pg_catalog.text",
							  1, argtypes, values, NULL, false, 0) != SPI_OK_SELECT)
		elog(ERROR, "could not read tenancy.migration_status");

	per_query = rsinfo->econtext->ecxt_per_query_memory;
	oldcxt = MemoryContextSwitchTo(per_query);
	tupdesc = CreateTupleDescCopy(tupdesc);
	tupstore = tuplestore_begin_heap(true, false, work_mem);
	rsinfo->returnMode = SFRM_Materialize;
	rsinfo->setResult = tupstore;
	rsinfo->setDesc = tupdesc;
	for (uint64 i = 0; i < SPI_processed; i++)
		tuplestore_puttuple(tupstore, SPI_tuptable->vals[i]);
	MemoryContextSwitchTo(oldcxt);
	SPI_finish();
	return (Datum) 0;
}

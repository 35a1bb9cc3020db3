/*-------------------------------------------------------------------------
 * context_stats.c
 *	  Cluster-wide counters of tenant switches and refusals, in shared
 *	  memory when tenancy is preloaded.
 *-------------------------------------------------------------------------
 */
#include "tenancy.h"

#include "access/htup_details.h"
#include "fmgr.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "port/atomics.h"
#include "storage/ipc.h"
#include "storage/lwlock.h"
#include "storage/shmem.h"
#include "utils/builtins.h"
#include "utils/timestamp.h"

typedef struct TenancyStatsShared
{
	pg_atomic_uint64 counters[TENANCY_NUM_COUNTERS];
	pg_atomic_uint64 reset_at;	/* TimestampTz of the last reset */
} TenancyStatsShared;

static TenancyStatsShared *stats = NULL;

/* Called by the shared-memory hooks of tenancy.c. */
void
context_stats_shmem_request(void)
{
	RequestAddinShmemSpace(MAXALIGN(sizeof(TenancyStatsShared)));
}

void
context_stats_shmem_startup(void)
{
	bool		found;

	LWLockAcquire(AddinShmemInitLock, LW_EXCLUSIVE);
	stats = ShmemInitStruct("tenancy context stats", sizeof(TenancyStatsShared), &found);
	if (!found)
	{
		for (int i = 0; i < TENANCY_NUM_COUNTERS; i++)
			pg_atomic_init_u64(&stats->counters[i], 0);
		pg_atomic_init_u64(&stats->reset_at, (uint64) GetCurrentTimestamp());
	}
	LWLockRelease(AddinShmemInitLock);
}

void
tenancy_count(TenancyCounter counter)
{
	if (stats != NULL)
		pg_atomic_fetch_add_u64(&stats->counters[counter], 1);
}

PG_FUNCTION_INFO_V1(tenancy_context_stats);
Datum
tenancy_context_stats(PG_FUNCTION_ARGS)
{
	TupleDesc	tupdesc;
	Datum		values[TENANCY_NUM_COUNTERS + 1];
	bool		nulls[TENANCY_NUM_COUNTERS + 1] = {0};

	tenancy_require_preload("tenancy.context_stats()");
	if (get_call_result_type(fcinfo, NULL, &tupdesc) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "return type must be a row type");
	for (int i = 0; i < TENANCY_NUM_COUNTERS; i++)
		values[i] = Int64GetDatum((int64) pg_atomic_read_u64(&stats->counters[i]));
	values[TENANCY_NUM_COUNTERS] = TimestampTzGetDatum((TimestampTz) pg_atomic_read_u64(&stats->reset_at));
	PG_RETURN_DATUM(HeapTupleGetDatum(heap_form_tuple(BlessTupleDesc(tupdesc), values, nulls)));
}

PG_FUNCTION_INFO_V1(tenancy_reset_context_stats);
Datum
tenancy_reset_context_stats(PG_FUNCTION_ARGS)
{
	tenancy_require_preload("tenancy.reset_context_stats()");
	for (int i = 0; i < TENANCY_NUM_COUNTERS; i++)
		pg_atomic_write_u64(&stats->counters[i], 0);
	pg_atomic_write_u64(&stats->reset_at, (uint64) GetCurrentTimestamp());
	PG_RETURN_VOID();
}

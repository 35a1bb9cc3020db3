/*-------------------------------------------------------------------------
 * stats.c
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

#if PG_VERSION_NUM >= 150000
static shmem_request_hook_type prev_shmem_request_hook = NULL;
#endif
static shmem_startup_hook_type prev_shmem_startup_hook = NULL;

static void
stats_shmem_request(void)
{
#if PG_VERSION_NUM >= 150000
	if (prev_shmem_request_hook)
		prev_shmem_request_hook();
#endif
	RequestAddinShmemSpace(MAXALIGN(sizeof(TenancyStatsShared)));
}

static void
stats_shmem_startup(void)
{
	bool		found;

	if (prev_shmem_startup_hook)
		prev_shmem_startup_hook();
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
tenancy_stats_init(void)
{
	if (!process_shared_preload_libraries_in_progress)
		return;
#if PG_VERSION_NUM >= 150000
	prev_shmem_request_hook = shmem_request_hook;
	shmem_request_hook = stats_shmem_request;
#else
	stats_shmem_request();
#endif
	prev_shmem_startup_hook = shmem_startup_hook;
	shmem_startup_hook = stats_shmem_startup;
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

/*-------------------------------------------------------------------------
 * shadow.c
 *	  Shadow mode: policy functions that hide nothing and refuse nothing,
 *	  but count, per table, each row enforce mode would hide and each write
 *	  it would refuse.
 *
 * Counting is per row, so it must be cheap: each backend accumulates its
 * counts in a small local array (no lock, no atomic) and flushes them into
 * a fixed-size shared hash keyed by (database, table) at the end of each
 * transaction, every SHADOW_FLUSH_ROWS rows, and before the view is read.
 * The hash is protected by one LWLock: a flush takes it shared and adds with
 * atomics; only the first flush for a table takes it exclusive, to insert.
 * Divergences can be sampled into the server log
 * (tenancy.shadow_log_sample_rate).
 *
 * The policy functions are executable by every role, and take any regclass:
 * only tables registered in shadow mode (tenancy.rls_tables) are counted,
 * looked up once per backend and table (the answer is dropped when the
 * table's relcache entry is invalidated, as switching its mode does).  The
 * hash has a fixed size (tenancy.shadow_max_tables); counts of tables that
 * find it full are added up in shadow_stats_dropped(), which verify()
 * reports as incomplete counters, instead of being lost silently.
 *-------------------------------------------------------------------------
 */
#include "tenancy.h"

#include "access/genam.h"
#include "access/htup_details.h"
#include "access/table.h"
#include "access/xact.h"
#include "catalog/namespace.h"
#include "common/pg_prng.h"
#include "fmgr.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "port/atomics.h"
#include "storage/ipc.h"
#include "storage/lwlock.h"
#include "storage/shmem.h"
#include "utils/builtins.h"
#include "utils/fmgroids.h"
#include "utils/hsearch.h"
#include "utils/inval.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/rel.h"
#include "utils/relcache.h"
#include "utils/timestamp.h"
#include "utils/uuid.h"

#include "citus_shadow.h"

/* Local slots, and the number of counted rows that forces a flush. */
#define SHADOW_LOCAL_SLOTS	16
#define SHADOW_FLUSH_ROWS	65536

typedef struct ShadowKey
{
	Oid			dbid;
	Oid			relid;
} ShadowKey;

typedef struct ShadowEntry
{
	ShadowKey	key;
	pg_atomic_uint64 rows_checked;
	pg_atomic_uint64 rows_hidden;
	pg_atomic_uint64 writes_refused;
	pg_atomic_uint64 last_divergence;	/* TimestampTz, 0 = never */
} ShadowEntry;

typedef struct ShadowShared
{
	LWLock	   *lock;
	/* Counts not kept because the hash was full (since the last reset). */
	pg_atomic_uint64 dropped;	/* rows checked */
	pg_atomic_uint64 dropped_divergences;	/* rows hidden + writes refused */
} ShadowShared;

typedef struct ShadowLocal
{
	Oid			relid;
	uint64		checked;
	uint64		hidden;
	uint64		refused;
} ShadowLocal;

/* GUCs */
static double shadow_log_sample_rate = 0.0;
static int	shadow_max_tables = 1000;

static ShadowShared *shadow = NULL;
static HTAB *shadow_hash = NULL;

/* This backend's tables known to be registered in shadow mode. */
static HTAB *registered = NULL;
static Oid	last_registered = InvalidOid;

static ShadowLocal local_counts[SHADOW_LOCAL_SLOTS];
static int	local_used = 0;
static int	local_last = 0;
static uint64 local_pending = 0;

static Size
shadow_shmem_size(void)
{
	return add_size(MAXALIGN(sizeof(ShadowShared)),
					hash_estimate_size(shadow_max_tables, sizeof(ShadowEntry)));
}

/* Called by the shared-memory hooks of tenancy.c. */
void
shadow_shmem_request(void)
{
	RequestAddinShmemSpace(shadow_shmem_size());
	RequestNamedLWLockTranche("tenancy shadow", 1);
}

void
shadow_shmem_startup(void)
{
	bool		found;
	HASHCTL		info;

	LWLockAcquire(AddinShmemInitLock, LW_EXCLUSIVE);
	shadow = ShmemInitStruct("tenancy shadow stats", sizeof(ShadowShared), &found);
	if (!found)
	{
		shadow->lock = &(GetNamedLWLockTranche("tenancy shadow"))->lock;
		pg_atomic_init_u64(&shadow->dropped, 0);
		pg_atomic_init_u64(&shadow->dropped_divergences, 0);
	}
	memset(&info, 0, sizeof(info));
	info.keysize = sizeof(ShadowKey);
	info.entrysize = sizeof(ShadowEntry);
	/* Fixed size: never takes more than shadow_shmem_size() reserved. */
	shadow_hash = ShmemInitHash("tenancy shadow hash", shadow_max_tables, shadow_max_tables,
								&info, HASH_ELEM | HASH_BLOBS | HASH_FIXED_SIZE);
	LWLockRelease(AddinShmemInitLock);
}

/* Add this backend's counts to shared memory and start afresh. */
static void
shadow_flush(void)
{
	TimestampTz now = 0;

	if (local_used == 0)
		return;
	if (shadow == NULL)
	{
		local_used = 0;
		local_pending = 0;
		return;
	}
	for (int i = 0; i < local_used; i++)
	{
		ShadowLocal *l = &local_counts[i];
		ShadowKey	key;
		ShadowEntry *e;

		memset(&key, 0, sizeof(key));
		key.dbid = MyDatabaseId;
		key.relid = l->relid;

		LWLockAcquire(shadow->lock, LW_SHARED);
		e = hash_search(shadow_hash, &key, HASH_FIND, NULL);
		if (e == NULL)
		{
			bool		found;

			LWLockRelease(shadow->lock);
			LWLockAcquire(shadow->lock, LW_EXCLUSIVE);
			e = hash_search(shadow_hash, &key, HASH_FIND, NULL);
			if (e == NULL && hash_get_num_entries(shadow_hash) < shadow_max_tables)
				e = hash_search(shadow_hash, &key, HASH_ENTER_NULL, &found);
			else
				found = true;
			if (e != NULL && !found)
			{
				pg_atomic_init_u64(&e->rows_checked, 0);
				pg_atomic_init_u64(&e->rows_hidden, 0);
				pg_atomic_init_u64(&e->writes_refused, 0);
				pg_atomic_init_u64(&e->last_divergence, 0);
			}
		}
		if (e == NULL)
		{
			pg_atomic_fetch_add_u64(&shadow->dropped, l->checked);
			pg_atomic_fetch_add_u64(&shadow->dropped_divergences, l->hidden + l->refused);
		}
		else
		{
			pg_atomic_fetch_add_u64(&e->rows_checked, l->checked);
			if (l->hidden > 0)
				pg_atomic_fetch_add_u64(&e->rows_hidden, l->hidden);
			if (l->refused > 0)
				pg_atomic_fetch_add_u64(&e->writes_refused, l->refused);
			if (l->hidden > 0 || l->refused > 0)
			{
				if (now == 0)
					now = GetCurrentTimestamp();
				pg_atomic_write_u64(&e->last_divergence, (uint64) now);
			}
		}
		LWLockRelease(shadow->lock);
	}
	local_used = 0;
	local_last = 0;
	local_pending = 0;
}

static void
shadow_xact_callback(XactEvent event, void *arg)
{
	switch (event)
	{
		case XACT_EVENT_COMMIT:
		case XACT_EVENT_PARALLEL_COMMIT:
		case XACT_EVENT_ABORT:
		case XACT_EVENT_PARALLEL_ABORT:
		case XACT_EVENT_PREPARE:
			shadow_flush();
			break;
		default:
			break;
	}
}

void
tenancy_shadow_init(void)
{
	DefineCustomRealVariable("tenancy.shadow_log_sample_rate",
							 "Fraction of shadow-mode divergences written to the server log.",
							 "Each row enforce mode would hide, and each write it would refuse, "
							 "is logged with this probability (table, current tenant, row tenant).",
							 &shadow_log_sample_rate,
							 0.0, 0.0, 1.0,
							 PGC_SUSET,
							 0,
							 NULL, NULL, NULL);

	RegisterXactCallback(shadow_xact_callback, NULL);

	/* A postmaster setting can only be defined while preloading. */
	if (!process_shared_preload_libraries_in_progress)
		return;

	DefineCustomIntVariable("tenancy.shadow_max_tables",
							"Number of tables whose shadow-mode counts are kept in shared memory.",
							NULL,
							&shadow_max_tables,
							1000, 16, 1000000,
							PGC_POSTMASTER,
							0,
							NULL, NULL, NULL);
}

/* A relcache invalidation: forget what is known of the table (or all). */
static void
registered_invalidate(Datum arg, Oid relid)
{
	if (registered == NULL)
		return;
	if (!OidIsValid(relid))
	{
		HASH_SEQ_STATUS seq;
		Oid		   *entry;

		hash_seq_init(&seq, registered);
		while ((entry = hash_seq_search(&seq)) != NULL)
			hash_search(registered, entry, HASH_REMOVE, NULL);
	}
	else
		hash_search(registered, &relid, HASH_REMOVE, NULL);
	last_registered = InvalidOid;
}

/* Does tenancy.rls_tables record relid in mode shadow? */
static bool
lookup_shadow_mode(Oid relid)
{
	Oid			nsp = get_namespace_oid("tenancy", true);
	Oid			tableoid = OidIsValid(nsp) ? get_relname_relid("rls_tables", nsp) : InvalidOid;
	Relation	rel;
	Oid			pkey;
	AttrNumber	attrel;
	AttrNumber	attmode;
	ScanKeyData skey;
	SysScanDesc scan;
	HeapTuple	tup;
	bool		result = false;

	if (!OidIsValid(tableoid))
		return false;
	rel = table_open(tableoid, AccessShareLock);
	pkey = RelationGetPrimaryKeyIndex(rel);
	attrel = get_attnum(tableoid, "relation");
	attmode = get_attnum(tableoid, "mode");
	if (attrel == InvalidAttrNumber || attmode == InvalidAttrNumber)
		elog(ERROR, "tenancy.rls_tables has no column relation or mode");
	ScanKeyInit(&skey, attrel, BTEqualStrategyNumber, F_OIDEQ, ObjectIdGetDatum(relid));
	scan = systable_beginscan(rel, pkey, OidIsValid(pkey), NULL, 1, &skey);
	while ((tup = systable_getnext(scan)) != NULL)
	{
		bool		isnull;
		Datum		mode = heap_getattr(tup, attmode, RelationGetDescr(rel), &isnull);

		if (!isnull && strcmp(TextDatumGetCString(mode), "shadow") == 0)
			result = true;
	}
	systable_endscan(scan);
	table_close(rel, AccessShareLock);
	return result;
}

/*
 * On a Citus worker, whose tenancy.rls_tables lists nothing, shards count
 * under the distributed table their policy names, when the coordinator put
 * it in shadow mode (citus_shadow.c).
 */
static bool
shadow_registered_on_citus(Oid relid)
{
	return citus_shadow_policy(relid);
}

/*
 * Is relid registered in shadow mode?  Only those tables are counted: the
 * policy functions are executable by every role, with any regclass.
 */
static bool
shadow_registered(Oid relid)
{
	bool		found;

	if (relid == last_registered && OidIsValid(relid))
		return true;
	if (registered == NULL)
	{
		HASHCTL		info;

		memset(&info, 0, sizeof(info));
		info.keysize = sizeof(Oid);
		info.entrysize = sizeof(Oid);
		info.hcxt = TopMemoryContext;
		registered = hash_create("tenancy shadow tables", 16, &info,
								 HASH_ELEM | HASH_BLOBS | HASH_CONTEXT);
		tenancy_register_relcache_callback(registered_invalidate, (Datum) 0);
	}
	(void) hash_search(registered, &relid, HASH_FIND, &found);
	if (!found)
	{
		/* Not cached when not registered: a later registration counts. */
		if (!lookup_shadow_mode(relid) && !shadow_registered_on_citus(relid) &&
			!rollout_has_shadow(relid))
			return false;
		(void) hash_search(registered, &relid, HASH_ENTER, NULL);
	}
	last_registered = relid;
	return true;
}

/* The local slot of a table, flushing when all slots are taken. */
static inline ShadowLocal *
local_slot(Oid relid)
{
	ShadowLocal *l;

	if (local_used > 0 && local_counts[local_last].relid == relid)
		return &local_counts[local_last];
	for (int i = 0; i < local_used; i++)
	{
		if (local_counts[i].relid == relid)
		{
			local_last = i;
			return &local_counts[i];
		}
	}
	if (local_used == SHADOW_LOCAL_SLOTS)
		shadow_flush();
	l = &local_counts[local_used];
	l->relid = relid;
	l->checked = l->hidden = l->refused = 0;
	local_last = local_used++;
	return l;
}

static void
log_divergence(Oid relid, bool is_write, const char *row_tenant, const TenantKey *key)
{
	char	   *nsp = get_namespace_name(get_rel_namespace(relid));
	char	   *rel = get_rel_name(relid);

	ereport(LOG,
			(errmsg("tenancy shadow mode: enforce would %s table %s (row tenant %s, current tenant %s)",
					is_write ? "refuse a write to" : "hide a row of",
					rel ? quote_qualified_identifier(nsp, rel) : "?",
					row_tenant ? row_tenant : "NULL",
					key ? key->text : "none")));
}

/*
 * Count one row (read or write) of relid whose tenant matched the current
 * one or not; may log it.  valtext renders the row's tenant for the log.
 */
static inline void
shadow_count(FunctionCallInfo fcinfo, bool is_write, bool diverges,
			 const TenantKey *key, char *(*valtext) (Datum))
{
	Oid			relid = PG_GETARG_OID(0);
	ShadowLocal *l;

	if (shadow == NULL || !shadow_registered(relid))
		return;
	/* A legacy write whose tenant the derive trigger set (derive.c). */
	if (diverges && is_write && !PG_ARGISNULL(1) &&
		derive_accepts(relid, valtext(PG_GETARG_DATUM(1))))
		diverges = false;
	l = local_slot(relid);
	l->checked++;
	if (diverges)
	{
		if (is_write)
			l->refused++;
		else
			l->hidden++;
		if (shadow_log_sample_rate > 0.0 &&
			(shadow_log_sample_rate >= 1.0 ||
			 pg_prng_double(&pg_global_prng_state) < shadow_log_sample_rate))
			log_divergence(relid, is_write,
						   PG_ARGISNULL(1) ? NULL : valtext(PG_GETARG_DATUM(1)), key);
	}
	/* The same row, by path, role and tenant (path_stats.c). */
	path_stats_count(relid, is_write, diverges, key, valtext,
					 PG_GETARG_DATUM(1), PG_ARGISNULL(1));
	if (++local_pending >= SHADOW_FLUSH_ROWS)
		shadow_flush();
}

/*
 * Count, for a table in shadow mode, a write that enforce mode would refuse
 * because its stored tenant disagrees with its derived tenant (derive.c);
 * false (nothing counted) when the table is not in shadow mode.
 */
bool
shadow_note_derived(Oid relid)
{
	ShadowLocal *l;

	if (shadow == NULL || !shadow_registered(relid))
		return false;
	l = local_slot(relid);
	l->refused++;
	path_stats_count(relid, true, true, tenant_context_peek(), NULL, (Datum) 0, true);
	if (++local_pending >= SHADOW_FLUSH_ROWS)
		shadow_flush();
	return true;
}

static char *
uuid_text(Datum d)
{
	return DatumGetCString(DirectFunctionCall1(uuid_out, d));
}

static char *
bigint_text(Datum d)
{
	return psprintf(INT64_FORMAT, DatumGetInt64(d));
}

static char *
text_text(Datum d)
{
	return TextDatumGetCString(d);
}

/* Would enforce mode (col = current tenant) let this row through? */
static inline bool
matches_uuid(FunctionCallInfo fcinfo, const TenantKey *key)
{
	return key != NULL && key->type == TENANT_KEY_UUID && !PG_ARGISNULL(1) &&
		memcmp(PG_GETARG_UUID_P(1)->data, key->uuid.data, UUID_LEN) == 0;
}

static inline bool
matches_bigint(FunctionCallInfo fcinfo, const TenantKey *key)
{
	return key != NULL && key->type == TENANT_KEY_BIGINT && !PG_ARGISNULL(1) &&
		PG_GETARG_INT64(1) == key->i64;
}

static inline bool
matches_text(FunctionCallInfo fcinfo, const TenantKey *key)
{
	text	   *t;
	size_t		len;

	if (key == NULL || PG_ARGISNULL(1))
		return false;
	t = PG_GETARG_TEXT_PP(1);
	len = VARSIZE_ANY_EXHDR(t);
	return len == strlen(key->text) && memcmp(VARDATA_ANY(t), key->text, len) == 0;
}

#define SHADOW_FUNC(fname, is_write, matches, valtext) \
PG_FUNCTION_INFO_V1(fname); \
Datum \
fname(PG_FUNCTION_ARGS) \
{ \
	const TenantKey *key = tenant_context_peek(); \
	shadow_count(fcinfo, is_write, !matches(fcinfo, key), key, valtext); \
	PG_RETURN_BOOL(true); \
}

SHADOW_FUNC(tenancy_shadow_read_uuid, false, matches_uuid, uuid_text)
SHADOW_FUNC(tenancy_shadow_read_bigint, false, matches_bigint, bigint_text)
SHADOW_FUNC(tenancy_shadow_read_text, false, matches_text, text_text)
SHADOW_FUNC(tenancy_shadow_write_uuid, true, matches_uuid, uuid_text)
SHADOW_FUNC(tenancy_shadow_write_bigint, true, matches_bigint, bigint_text)
SHADOW_FUNC(tenancy_shadow_write_text, true, matches_text, text_text)

PG_FUNCTION_INFO_V1(tenancy_shadow_require_preload);
Datum
tenancy_shadow_require_preload(PG_FUNCTION_ARGS)
{
	tenancy_require_preload("shadow mode");
	PG_RETURN_VOID();
}

PG_FUNCTION_INFO_V1(tenancy_read_shadow_stats);
Datum
tenancy_read_shadow_stats(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	HASH_SEQ_STATUS seq;
	ShadowEntry *e;

	tenancy_require_preload("tenancy.shadow_stats");
	InitMaterializedSRF(fcinfo, 0);
	shadow_flush();

	LWLockAcquire(shadow->lock, LW_SHARED);
	hash_seq_init(&seq, shadow_hash);
	while ((e = hash_seq_search(&seq)) != NULL)
	{
		Datum		values[5];
		bool		nulls[5] = {false, false, false, false, false};
		uint64		last;

		if (e->key.dbid != MyDatabaseId)
			continue;
		values[0] = ObjectIdGetDatum(e->key.relid);
		values[1] = Int64GetDatum((int64) pg_atomic_read_u64(&e->rows_checked));
		values[2] = Int64GetDatum((int64) pg_atomic_read_u64(&e->rows_hidden));
		values[3] = Int64GetDatum((int64) pg_atomic_read_u64(&e->writes_refused));
		last = pg_atomic_read_u64(&e->last_divergence);
		values[4] = TimestampTzGetDatum((TimestampTz) last);
		nulls[4] = (last == 0);
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	}
	LWLockRelease(shadow->lock);
	return (Datum) 0;
}

/*
 * tenancy.shadow_stats_dropped() -> (rows_dropped, divergences_dropped):
 * counts not kept since the last reset of every table because the hash was
 * full (tenancy.shadow_max_tables tables counted already), cluster-wide.
 */
PG_FUNCTION_INFO_V1(tenancy_shadow_stats_dropped);
Datum
tenancy_shadow_stats_dropped(PG_FUNCTION_ARGS)
{
	TupleDesc	tupdesc;
	Datum		values[2];
	bool		nulls[2] = {false, false};

	tenancy_require_preload("tenancy.shadow_stats_dropped()");
	if (get_call_result_type(fcinfo, NULL, &tupdesc) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "return type must be a row type");
	shadow_flush();
	values[0] = Int64GetDatum((int64) pg_atomic_read_u64(&shadow->dropped));
	values[1] = Int64GetDatum((int64) pg_atomic_read_u64(&shadow->dropped_divergences));
	PG_RETURN_DATUM(HeapTupleGetDatum(heap_form_tuple(BlessTupleDesc(tupdesc), values, nulls)));
}

PG_FUNCTION_INFO_V1(tenancy_reset_shadow_stats);
Datum
tenancy_reset_shadow_stats(PG_FUNCTION_ARGS)
{
	HASH_SEQ_STATUS seq;
	ShadowEntry *e;

	tenancy_require_preload("tenancy.reset_shadow_stats()");
	shadow_flush();

	LWLockAcquire(shadow->lock, LW_EXCLUSIVE);
	hash_seq_init(&seq, shadow_hash);
	while ((e = hash_seq_search(&seq)) != NULL)
	{
		if (e->key.dbid != MyDatabaseId)
			continue;
		if (!PG_ARGISNULL(0) && e->key.relid != PG_GETARG_OID(0))
			continue;
		hash_search(shadow_hash, &e->key, HASH_REMOVE, NULL);
	}
	/* Every table of this database reset: what was dropped goes too. */
	if (PG_ARGISNULL(0))
	{
		pg_atomic_write_u64(&shadow->dropped, 0);
		pg_atomic_write_u64(&shadow->dropped_divergences, 0);
	}
	LWLockRelease(shadow->lock);
	PG_RETURN_VOID();
}

/*-------------------------------------------------------------------------
 * path_stats.c
 *	  What each code path sees: the shadow-mode counts of shadow.c split by
 *	  path (legacy or new), by role and by tenant, per-path activity, and a
 *	  bounded sample of recent divergences with their query ids.
 *
 * The path of a counted row: "legacy" when the session has no tenant, or
 * its tenant came from a default (a role binding, ALTER ROLE/DATABASE ...
 * SET, the server's configuration); "new" when the client or the session
 * set it (set_tenant(), set_tenant_token(), SET, connection options).
 *
 * As in shadow.c, each backend accumulates counts in a few local slots,
 * keyed by (table, path, role, tenant), and flushes them at the end of each
 * transaction, when its slots are full, every PATH_FLUSH_ROWS rows and
 * before a view is read.  A flush adds each slot to three shared entries:
 * (table, path, role), (path) and (path, tenant); each entry counts a
 * transaction once however many flushes it takes (a per-transaction set of
 * entries already credited).  A parallel worker adds its rows, but not
 * transactions or statements: those are its leader's (counted when the
 * leader itself counts a row of the entry).
 *
 * Shared memory has a fixed size.  The (table, path, role) hash holds
 * tenancy.path_stats_max entries; counts that find it full are added up
 * (path_stats_dropped()).  Tenants are bounded as citus_stat_tenants bounds
 * its list: room for 3 x tenancy.path_stats_tenants entries, each with a
 * score (rows counted, halved every tenancy.path_stats_tenant_period); when
 * full, the lowest-scored are evicted down to 2 x the limit (their counts
 * added to the evicted totals), and the view shows the top limit by score.
 * The divergence sample is a ring of tenancy.path_divergence_samples
 * entries: the first divergence of each statement per local slot, so a
 * large scan cannot flood it; overwritten samples are counted.
 *-------------------------------------------------------------------------
 */
#include "tenancy.h"

#include "access/htup_details.h"
#include "access/parallel.h"
#include "access/xact.h"
#include "fmgr.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "port/atomics.h"
#include "storage/ipc.h"
#include "storage/lwlock.h"
#include "storage/shmem.h"
#include "utils/backend_status.h"
#include "utils/builtins.h"
#include "utils/hsearch.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"

#define PATH_LOCAL_SLOTS	16
#define PATH_FLUSH_ROWS		65536
#define PATH_KEYLEN			(TENANT_KEY_MAXLEN + 1)

typedef enum PathKind
{
	PATH_LEGACY = 0,
	PATH_NEW = 1
} PathKind;

static const char *const path_names[] = {"legacy", "new"};

/* The counters every entry keeps. */
typedef struct PathCounts
{
	uint64		xacts;
	uint64		reads;			/* statements that read the table (per table only) */
	uint64		rows_read;		/* rows the read policy let through (all, in shadow mode) */
	uint64		rows_hidden;	/* of those, rows enforce mode would hide */
	uint64		rows_written;	/* rows the write policy checked */
	uint64		writes_refused; /* of those, writes enforce mode would refuse */
} PathCounts;

/* (table, path, role); relid and role 0: the path's totals. */
typedef struct RoleKey
{
	Oid			dbid;
	Oid			relid;
	Oid			roleid;
	int32		path;
} RoleKey;

typedef struct RoleEntry
{
	RoleKey		key;
	pg_atomic_uint64 c[6];		/* PathCounts, in order */
	pg_atomic_uint64 last_divergence;
} RoleEntry;

typedef struct TenantStatKey
{
	Oid			dbid;
	int32		path;
	bool		has_tenant;
	char		tenant[PATH_KEYLEN];
} TenantStatKey;

/* Updated under the exclusive lock only. */
typedef struct TenantEntry
{
	TenantStatKey key;
	PathCounts	c;
	uint64		score;
	TimestampTz score_at;		/* start of the score's current period */
	TimestampTz last_divergence;
} TenantEntry;

typedef struct DivergenceSample
{
	TimestampTz at;
	Oid			dbid;
	Oid			relid;
	Oid			roleid;
	int32		path;
	bool		is_write;
	bool		has_tenant;
	bool		has_row_tenant;
	int64		query_id;
	char		tenant[PATH_KEYLEN];
	char		row_tenant[PATH_KEYLEN];
} DivergenceSample;

typedef struct PathShared
{
	LWLock	   *lock;
	/* (table, path, role) counts not kept: the hash was full */
	pg_atomic_uint64 role_rows_dropped;
	pg_atomic_uint64 role_divergences_dropped;
	/* tenants evicted, and their counts (exclusive lock) */
	uint64		tenants_evicted;
	uint64		tenant_rows_evicted;
	uint64		tenant_divergences_evicted;
	/* samples ever taken (exclusive lock); the ring holds the last ones */
	uint64		samples_total;
	DivergenceSample samples[FLEXIBLE_ARRAY_MEMBER];
} PathShared;

typedef struct PathLocal
{
	Oid			relid;
	Oid			roleid;
	int32		path;
	bool		has_tenant;
	TenantKeyType type;			/* the key, to compare it cheaply */
	pg_uuid_t	uuid;
	int64		i64;
	char		tenant[PATH_KEYLEN];
	PathCounts	c;
	bool		diverged;
	TimestampTz read_stmt;		/* statement whose read was counted */
	TimestampTz sample_stmt;	/* statement whose divergence was sampled */
} PathLocal;

/* GUCs */
static bool path_stats_enabled = true;
static int	path_stats_max = 1000;
static int	path_stats_tenants = 100;
static int	path_divergence_samples = 100;
static int	path_stats_tenant_period = 60;

static PathShared *pshared = NULL;
static HTAB *role_hash = NULL;
static HTAB *tenant_hash = NULL;

static PathLocal local[PATH_LOCAL_SLOTS];
static int	local_used = 0;
static int	local_last = 0;
static uint64 local_pending = 0;

/* Entries credited with this transaction already (TopTransactionContext). */
static HTAB *xact_credited = NULL;

typedef struct CreditKey
{
	int32		kind;			/* 0: RoleKey, 1: TenantStatKey */
	RoleKey		role;
	TenantStatKey tenant;
} CreditKey;

static Size
path_shared_size(void)
{
	return add_size(offsetof(PathShared, samples),
					mul_size(path_divergence_samples, sizeof(DivergenceSample)));
}

static Size
path_shmem_size(void)
{
	Size		size = MAXALIGN(path_shared_size());

	size = add_size(size, hash_estimate_size(path_stats_max, sizeof(RoleEntry)));
	size = add_size(size, hash_estimate_size(3 * path_stats_tenants, sizeof(TenantEntry)));
	return size;
}

/* Called by the shared-memory hooks of tenancy.c. */
void
path_stats_shmem_request(void)
{
	RequestAddinShmemSpace(path_shmem_size());
	RequestNamedLWLockTranche("tenancy path stats", 1);
}

void
path_stats_shmem_startup(void)
{
	bool		found;
	HASHCTL		info;

	LWLockAcquire(AddinShmemInitLock, LW_EXCLUSIVE);
	pshared = ShmemInitStruct("tenancy path stats", path_shared_size(), &found);
	if (!found)
	{
		memset(pshared, 0, path_shared_size());
		pshared->lock = &(GetNamedLWLockTranche("tenancy path stats"))->lock;
		pg_atomic_init_u64(&pshared->role_rows_dropped, 0);
		pg_atomic_init_u64(&pshared->role_divergences_dropped, 0);
	}
	memset(&info, 0, sizeof(info));
	info.keysize = sizeof(RoleKey);
	info.entrysize = sizeof(RoleEntry);
	role_hash = ShmemInitHash("tenancy path role hash", path_stats_max, path_stats_max,
							  &info, HASH_ELEM | HASH_BLOBS | HASH_FIXED_SIZE);
	memset(&info, 0, sizeof(info));
	info.keysize = sizeof(TenantStatKey);
	info.entrysize = sizeof(TenantEntry);
	tenant_hash = ShmemInitHash("tenancy path tenant hash",
								3 * path_stats_tenants, 3 * path_stats_tenants,
								&info, HASH_ELEM | HASH_BLOBS | HASH_FIXED_SIZE);
	LWLockRelease(AddinShmemInitLock);
}

/* Was this entry credited with the current transaction?  Marks it. */
static bool
credit_once(CreditKey *ck)
{
	bool		found;

	if (TopTransactionContext == NULL)
		return true;			/* cannot tell: count it */
	if (xact_credited == NULL)
	{
		HASHCTL		info;

		memset(&info, 0, sizeof(info));
		info.keysize = sizeof(CreditKey);
		info.entrysize = sizeof(CreditKey);
		info.hcxt = TopTransactionContext;
		xact_credited = hash_create("tenancy path credits", 16, &info,
									HASH_ELEM | HASH_BLOBS | HASH_CONTEXT);
	}
	(void) hash_search(xact_credited, ck, HASH_ENTER, &found);
	return !found;
}

static void
role_add(const RoleKey *key, const PathCounts *c, bool diverged, TimestampTz now)
{
	RoleEntry  *e;

	LWLockAcquire(pshared->lock, LW_SHARED);
	e = hash_search(role_hash, key, HASH_FIND, NULL);
	if (e == NULL)
	{
		bool		found = true;

		LWLockRelease(pshared->lock);
		LWLockAcquire(pshared->lock, LW_EXCLUSIVE);
		e = hash_search(role_hash, key, HASH_FIND, NULL);
		if (e == NULL && hash_get_num_entries(role_hash) < path_stats_max)
			e = hash_search(role_hash, key, HASH_ENTER_NULL, &found);
		if (e != NULL && !found)
		{
			for (int i = 0; i < 6; i++)
				pg_atomic_init_u64(&e->c[i], 0);
			pg_atomic_init_u64(&e->last_divergence, 0);
		}
	}
	if (e == NULL)
	{
		pg_atomic_fetch_add_u64(&pshared->role_rows_dropped, c->rows_read + c->rows_written);
		pg_atomic_fetch_add_u64(&pshared->role_divergences_dropped,
								c->rows_hidden + c->writes_refused);
	}
	else
	{
		const uint64 *v = (const uint64 *) c;

		for (int i = 0; i < 6; i++)
			if (v[i] > 0)
				pg_atomic_fetch_add_u64(&e->c[i], v[i]);
		if (diverged)
			pg_atomic_write_u64(&e->last_divergence, (uint64) now);
	}
	LWLockRelease(pshared->lock);
}

/* The score of a tenant entry now: halved for each period gone by. */
static uint64
decayed_score(TenantEntry *e, TimestampTz now)
{
	int64		period = (int64) path_stats_tenant_period * USECS_PER_SEC;
	int64		gone = (now - e->score_at) / period;

	if (gone > 0)
	{
		e->score = gone >= 64 ? 0 : e->score >> gone;
		e->score_at += gone * period;
	}
	else if (gone < 0)
		e->score_at = now;		/* the clock went back */
	return e->score;
}

static int
tenant_score_cmp(const void *a, const void *b)
{
	uint64		sa = (*(TenantEntry *const *) a)->score;
	uint64		sb = (*(TenantEntry *const *) b)->score;

	return sa < sb ? -1 : (sa > sb ? 1 : 0);
}

/* The list is full: keep the 2 x limit best-scored tenants (exclusive lock). */
static void
tenants_evict(TimestampTz now)
{
	long		n = hash_get_num_entries(tenant_hash);
	TenantEntry **all = palloc(sizeof(TenantEntry *) * n);
	HASH_SEQ_STATUS seq;
	TenantEntry *e;
	long		i = 0;

	hash_seq_init(&seq, tenant_hash);
	while ((e = hash_seq_search(&seq)) != NULL && i < n)
	{
		(void) decayed_score(e, now);
		all[i++] = e;
	}
	if (e != NULL)
		hash_seq_term(&seq);
	qsort(all, i, sizeof(TenantEntry *), tenant_score_cmp);
	for (long j = 0; j < i - 2 * path_stats_tenants; j++)
	{
		e = all[j];
		pshared->tenants_evicted++;
		pshared->tenant_rows_evicted += e->c.rows_read + e->c.rows_written;
		pshared->tenant_divergences_evicted += e->c.rows_hidden + e->c.writes_refused;
		hash_search(tenant_hash, &e->key, HASH_REMOVE, NULL);
	}
	pfree(all);
}

static void
tenant_add(const TenantStatKey *key, const PathCounts *c, bool diverged, TimestampTz now)
{
	TenantEntry *e;
	bool		found;

	LWLockAcquire(pshared->lock, LW_EXCLUSIVE);
	e = hash_search(tenant_hash, key, HASH_FIND, NULL);
	if (e == NULL)
	{
		if (hash_get_num_entries(tenant_hash) >= 3 * path_stats_tenants)
			tenants_evict(now);
		e = hash_search(tenant_hash, key, HASH_ENTER_NULL, &found);
		if (e == NULL)
		{
			/* Cannot happen after an eviction; counted as evicted anyway. */
			pshared->tenant_rows_evicted += c->rows_read + c->rows_written;
			pshared->tenant_divergences_evicted += c->rows_hidden + c->writes_refused;
			LWLockRelease(pshared->lock);
			return;
		}
		memset(&e->c, 0, sizeof(e->c));
		e->score = 0;
		e->score_at = now;
		e->last_divergence = 0;
	}
	e->c.xacts += c->xacts;
	e->c.rows_read += c->rows_read;
	e->c.rows_hidden += c->rows_hidden;
	e->c.rows_written += c->rows_written;
	e->c.writes_refused += c->writes_refused;
	(void) decayed_score(e, now);
	e->score += c->rows_read + c->rows_written;	/* refused among written */
	if (diverged)
		e->last_divergence = now;
	LWLockRelease(pshared->lock);
}

/* Add this backend's counts to shared memory; keep the slots when asked. */
static void
path_flush(bool keep_slots)
{
	TimestampTz now;

	if (local_used == 0)
		return;
	if (pshared == NULL)
	{
		local_used = 0;
		local_pending = 0;
		return;
	}
	now = GetCurrentTimestamp();
	for (int i = 0; i < local_used; i++)
	{
		PathLocal  *l = &local[i];
		CreditKey	ck;
		PathCounts	c = l->c;

		if (c.rows_read == 0 && c.rows_written == 0)
			continue;
		memset(&ck, 0, sizeof(ck));
		ck.role.dbid = MyDatabaseId;
		ck.role.relid = l->relid;
		ck.role.roleid = l->roleid;
		ck.role.path = l->path;
		/* A parallel worker's rows count; its leader's transaction counts. */
		if (IsParallelWorker())
			c.reads = 0;
		c.xacts = (!IsParallelWorker() && credit_once(&ck)) ? 1 : 0;
		role_add(&ck.role, &c, l->diverged, now);

		/* The path's totals: statements are per table, not added up. */
		ck.role.relid = InvalidOid;
		ck.role.roleid = InvalidOid;
		c.reads = 0;
		c.xacts = (!IsParallelWorker() && credit_once(&ck)) ? 1 : 0;
		role_add(&ck.role, &c, l->diverged, now);

		memset(&ck, 0, sizeof(ck));
		ck.kind = 1;
		ck.tenant.dbid = MyDatabaseId;
		ck.tenant.path = l->path;
		ck.tenant.has_tenant = l->has_tenant;
		strlcpy(ck.tenant.tenant, l->tenant, PATH_KEYLEN);
		c.xacts = (!IsParallelWorker() && credit_once(&ck)) ? 1 : 0;
		tenant_add(&ck.tenant, &c, l->diverged, now);

		memset(&l->c, 0, sizeof(l->c));
		l->diverged = false;
	}
	if (!keep_slots)
	{
		local_used = 0;
		local_last = 0;
	}
	local_pending = 0;
}

static void
path_xact_callback(XactEvent event, void *arg)
{
	switch (event)
	{
		case XACT_EVENT_COMMIT:
		case XACT_EVENT_PARALLEL_COMMIT:
		case XACT_EVENT_ABORT:
		case XACT_EVENT_PARALLEL_ABORT:
		case XACT_EVENT_PREPARE:
			path_flush(false);
			/* Freed with TopTransactionContext. */
			xact_credited = NULL;
			break;
		default:
			break;
	}
}

void
tenancy_path_stats_init(void)
{
	DefineCustomIntVariable("tenancy.path_stats_tenant_period",
							"Seconds after which a tenant's score in the path counters is halved.",
							"The path counters keep the tenants with the highest scores "
							"(rows counted, decayed).",
							&path_stats_tenant_period,
							60, 1, 86400 * 7,
							PGC_SIGHUP,
							GUC_UNIT_S,
							NULL, NULL, NULL);

	DefineCustomBoolVariable("tenancy.path_stats",
							 "Count shadow-mode rows by code path, role and tenant.",
							 "Off: shadow mode counts per table only (tenancy.shadow_stats), "
							 "as before the path counters.",
							 &path_stats_enabled,
							 true,
							 PGC_SUSET,
							 0,
							 NULL, NULL, NULL);

	RegisterXactCallback(path_xact_callback, NULL);

	if (!process_shared_preload_libraries_in_progress)
		return;

	DefineCustomIntVariable("tenancy.path_stats_max",
							"Number of (table, path, role) entries of the path counters kept in shared memory.",
							NULL,
							&path_stats_max,
							1000, 16, 1000000,
							PGC_POSTMASTER,
							0,
							NULL, NULL, NULL);
	DefineCustomIntVariable("tenancy.path_stats_tenants",
							"Number of tenants the path counters show (three times as many are tracked).",
							NULL,
							&path_stats_tenants,
							100, 1, 100000,
							PGC_POSTMASTER,
							0,
							NULL, NULL, NULL);
	DefineCustomIntVariable("tenancy.path_divergence_samples",
							"Number of recent shadow-mode divergences kept in shared memory.",
							NULL,
							&path_divergence_samples,
							100, 1, 100000,
							PGC_POSTMASTER,
							0,
							NULL, NULL, NULL);
}

/* Is the slot's tenant this key (NULL: none)?  By value, cheapest first. */
static inline bool
slot_tenant_is(const PathLocal *l, const TenantKey *key)
{
	if (key == NULL || !l->has_tenant)
		return key == NULL && !l->has_tenant;
	if (l->type != key->type)
		return false;
	switch (key->type)
	{
		case TENANT_KEY_UUID:
			return memcmp(l->uuid.data, key->uuid.data, UUID_LEN) == 0;
		case TENANT_KEY_BIGINT:
			return l->i64 == key->i64;
		default:
			return strcmp(l->tenant, key->text) == 0;
	}
}

static inline bool
slot_is(const PathLocal *l, Oid relid, int32 path, Oid roleid, const TenantKey *key)
{
	return l->relid == relid && l->path == path && l->roleid == roleid &&
		slot_tenant_is(l, key);
}

/* The local slot of (table, path, role, tenant). */
static inline PathLocal *
path_slot(Oid relid, int32 path, Oid roleid, const TenantKey *key)
{
	PathLocal  *l;

	if (likely(local_used > 0) &&
		slot_is(&local[local_last], relid, path, roleid, key))
		return &local[local_last];
	for (int i = 0; i < local_used; i++)
	{
		if (slot_is(&local[i], relid, path, roleid, key))
		{
			local_last = i;
			return &local[i];
		}
	}
	if (local_used == PATH_LOCAL_SLOTS)
		path_flush(false);
	l = &local[local_used];
	memset(l, 0, sizeof(*l));
	l->relid = relid;
	l->path = path;
	l->roleid = roleid;
	l->has_tenant = (key != NULL);
	if (key != NULL)
	{
		l->type = key->type;
		l->uuid = key->uuid;
		l->i64 = key->i64;
		strlcpy(l->tenant, key->text, PATH_KEYLEN);
	}
	local_last = local_used++;
	return l;
}

static void
sample_divergence(const PathLocal *l, bool is_write, const char *row_tenant)
{
	DivergenceSample *s;

	LWLockAcquire(pshared->lock, LW_EXCLUSIVE);
	s = &pshared->samples[pshared->samples_total % path_divergence_samples];
	pshared->samples_total++;
	s->at = GetCurrentTimestamp();
	s->dbid = MyDatabaseId;
	s->relid = l->relid;
	s->roleid = l->roleid;
	s->path = l->path;
	s->is_write = is_write;
	s->has_tenant = l->has_tenant;
	strlcpy(s->tenant, l->tenant, PATH_KEYLEN);
	s->has_row_tenant = (row_tenant != NULL);
	strlcpy(s->row_tenant, row_tenant ? row_tenant : "", PATH_KEYLEN);
	s->query_id = (int64) pgstat_get_my_query_id();
	LWLockRelease(pshared->lock);
}

/*
 * Count one row that shadow mode checked (shadow.c): read or write, and
 * whether enforce mode would hide or refuse it.  valtext renders the row's
 * tenant (NULL when unknown) for the divergence sample.
 */
void
path_stats_count(Oid relid, bool is_write, bool diverges, const TenantKey *key,
				 char *(*valtext) (Datum), Datum value, bool isnull)
{
	PathLocal  *l;
	int32		path;
	TimestampTz stmt;

	if (pshared == NULL || !path_stats_enabled)
		return;
	path = (key == NULL || tenant_context_is_default()) ? PATH_LEGACY : PATH_NEW;
	l = path_slot(relid, path, GetUserId(), key);
	stmt = GetCurrentStatementStartTimestamp();
	if (is_write)
	{
		l->c.rows_written++;
		if (diverges)
			l->c.writes_refused++;
	}
	else
	{
		l->c.rows_read++;
		if (l->read_stmt != stmt)
		{
			l->read_stmt = stmt;
			l->c.reads++;
		}
		if (diverges)
			l->c.rows_hidden++;
	}
	if (diverges)
	{
		l->diverged = true;
		if (l->sample_stmt != stmt)
		{
			l->sample_stmt = stmt;
			sample_divergence(l, is_write,
							  (valtext == NULL || isnull) ? NULL : valtext(value));
		}
	}
	if (++local_pending >= PATH_FLUSH_ROWS)
		path_flush(true);
}

static void
path_require(const char *what)
{
	tenancy_require_preload(what);
	path_flush(true);
}

/*
 * tenancy.read_path_stats(): per (table, path, role) of this database, and
 * per path (relation and role NULL).
 */
PG_FUNCTION_INFO_V1(tenancy_read_path_stats);
Datum
tenancy_read_path_stats(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	HASH_SEQ_STATUS seq;
	RoleEntry  *e;

	path_require("tenancy.path_stats");
	InitMaterializedSRF(fcinfo, 0);
	LWLockAcquire(pshared->lock, LW_SHARED);
	hash_seq_init(&seq, role_hash);
	while ((e = hash_seq_search(&seq)) != NULL)
	{
		Datum		values[10];
		bool		nulls[10] = {0};
		uint64		last;

		if (e->key.dbid != MyDatabaseId)
			continue;
		values[0] = ObjectIdGetDatum(e->key.relid);
		nulls[0] = !OidIsValid(e->key.relid);
		values[1] = CStringGetTextDatum(path_names[e->key.path]);
		values[2] = ObjectIdGetDatum(e->key.roleid);
		nulls[2] = !OidIsValid(e->key.roleid);
		for (int i = 0; i < 6; i++)
			values[3 + i] = Int64GetDatum((int64) pg_atomic_read_u64(&e->c[i]));
		last = pg_atomic_read_u64(&e->last_divergence);
		values[9] = TimestampTzGetDatum((TimestampTz) last);
		nulls[9] = (last == 0);
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	}
	LWLockRelease(pshared->lock);
	return (Datum) 0;
}

static int
tenant_rank_cmp(const void *a, const void *b)
{
	const TenantEntry *ea = (const TenantEntry *) a;
	const TenantEntry *eb = (const TenantEntry *) b;
	int			r;

	if (ea->score != eb->score)
		return ea->score > eb->score ? -1 : 1;
	if (ea->key.path != eb->key.path)
		return ea->key.path - eb->key.path;
	r = strcmp(ea->key.tenant, eb->key.tenant);
	return r != 0 ? r : (int) ea->key.has_tenant - (int) eb->key.has_tenant;
}

/* tenancy.read_tenant_path_stats(): the top tenants of this database. */
PG_FUNCTION_INFO_V1(tenancy_read_tenant_path_stats);
Datum
tenancy_read_tenant_path_stats(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	HASH_SEQ_STATUS seq;
	TenantEntry *e;
	TenantEntry *copy;
	long		n = 0;
	TimestampTz now = GetCurrentTimestamp();

	path_require("tenancy.tenant_path_stats");
	InitMaterializedSRF(fcinfo, 0);
	/* Exclusive: the scores decay as they are read. */
	LWLockAcquire(pshared->lock, LW_EXCLUSIVE);
	copy = palloc(sizeof(TenantEntry) * Max(hash_get_num_entries(tenant_hash), 1));
	hash_seq_init(&seq, tenant_hash);
	while ((e = hash_seq_search(&seq)) != NULL)
	{
		(void) decayed_score(e, now);
		if (e->key.dbid == MyDatabaseId)
			copy[n++] = *e;
	}
	LWLockRelease(pshared->lock);

	qsort(copy, n, sizeof(TenantEntry), tenant_rank_cmp);
	for (long i = 0; i < n && i < path_stats_tenants; i++)
	{
		Datum		values[9];
		bool		nulls[9] = {0};
		const PathCounts *c = &copy[i].c;

		values[0] = CStringGetTextDatum(path_names[copy[i].key.path]);
		values[1] = CStringGetTextDatum(copy[i].key.tenant);
		nulls[1] = !copy[i].key.has_tenant;
		values[2] = Int64GetDatum((int64) c->xacts);
		values[3] = Int64GetDatum((int64) c->rows_read);
		values[4] = Int64GetDatum((int64) c->rows_hidden);
		values[5] = Int64GetDatum((int64) c->rows_written);
		values[6] = Int64GetDatum((int64) c->writes_refused);
		values[7] = Int64GetDatum((int64) copy[i].score);
		values[8] = TimestampTzGetDatum(copy[i].last_divergence);
		nulls[8] = (copy[i].last_divergence == 0);
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	}
	pfree(copy);
	return (Datum) 0;
}

/* tenancy.read_path_divergences(): the sample of this database, oldest first. */
PG_FUNCTION_INFO_V1(tenancy_read_path_divergences);
Datum
tenancy_read_path_divergences(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	uint64		total;
	uint64		first;

	path_require("tenancy.path_divergences");
	InitMaterializedSRF(fcinfo, 0);
	LWLockAcquire(pshared->lock, LW_SHARED);
	total = pshared->samples_total;
	first = total > (uint64) path_divergence_samples ? total - path_divergence_samples : 0;
	for (uint64 n = first; n < total; n++)
	{
		DivergenceSample *s = &pshared->samples[n % path_divergence_samples];
		Datum		values[9];
		bool		nulls[9] = {0};

		if (s->dbid != MyDatabaseId)
			continue;
		values[0] = Int64GetDatum((int64) n + 1);
		values[1] = TimestampTzGetDatum(s->at);
		values[2] = ObjectIdGetDatum(s->relid);
		values[3] = CStringGetTextDatum(s->is_write ? "write" : "read");
		values[4] = CStringGetTextDatum(path_names[s->path]);
		values[5] = ObjectIdGetDatum(s->roleid);
		values[6] = CStringGetTextDatum(s->tenant);
		nulls[6] = !s->has_tenant;
		values[7] = CStringGetTextDatum(s->row_tenant);
		nulls[7] = !s->has_row_tenant;
		values[8] = Int64GetDatum(s->query_id);
		nulls[8] = (s->query_id == 0);
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	}
	LWLockRelease(pshared->lock);
	return (Datum) 0;
}

/* tenancy.path_stats_dropped(): what the bounded lists could not keep. */
PG_FUNCTION_INFO_V1(tenancy_path_stats_dropped);
Datum
tenancy_path_stats_dropped(PG_FUNCTION_ARGS)
{
	TupleDesc	tupdesc;
	Datum		values[7];
	bool		nulls[7] = {0};
	uint64		total;

	path_require("tenancy.path_stats_dropped()");
	if (get_call_result_type(fcinfo, NULL, &tupdesc) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "return type must be a row type");
	LWLockAcquire(pshared->lock, LW_SHARED);
	values[0] = Int64GetDatum((int64) pg_atomic_read_u64(&pshared->role_rows_dropped));
	values[1] = Int64GetDatum((int64) pg_atomic_read_u64(&pshared->role_divergences_dropped));
	values[2] = Int64GetDatum((int64) pshared->tenants_evicted);
	values[3] = Int64GetDatum((int64) pshared->tenant_rows_evicted);
	values[4] = Int64GetDatum((int64) pshared->tenant_divergences_evicted);
	total = pshared->samples_total;
	values[5] = Int64GetDatum((int64) total);
	values[6] = Int64GetDatum((int64) (total > (uint64) path_divergence_samples
									   ? total - path_divergence_samples : 0));
	LWLockRelease(pshared->lock);
	PG_RETURN_DATUM(HeapTupleGetDatum(heap_form_tuple(BlessTupleDesc(tupdesc), values, nulls)));
}

/*
 * tenancy.reset_path_stats(): forget this database's path counters, tenants
 * and samples, and (cluster-wide) what the bounded lists dropped.
 */
PG_FUNCTION_INFO_V1(tenancy_reset_path_stats);
Datum
tenancy_reset_path_stats(PG_FUNCTION_ARGS)
{
	HASH_SEQ_STATUS seq;
	RoleEntry  *re;
	TenantEntry *te;

	path_require("tenancy.reset_path_stats()");
	LWLockAcquire(pshared->lock, LW_EXCLUSIVE);
	hash_seq_init(&seq, role_hash);
	while ((re = hash_seq_search(&seq)) != NULL)
		if (re->key.dbid == MyDatabaseId)
			hash_search(role_hash, &re->key, HASH_REMOVE, NULL);
	hash_seq_init(&seq, tenant_hash);
	while ((te = hash_seq_search(&seq)) != NULL)
		if (te->key.dbid == MyDatabaseId)
			hash_search(tenant_hash, &te->key, HASH_REMOVE, NULL);
	for (int i = 0; i < path_divergence_samples; i++)
		if (pshared->samples[i].dbid == MyDatabaseId)
			pshared->samples[i].dbid = InvalidOid;
	pg_atomic_write_u64(&pshared->role_rows_dropped, 0);
	pg_atomic_write_u64(&pshared->role_divergences_dropped, 0);
	pshared->tenants_evicted = 0;
	pshared->tenant_rows_evicted = 0;
	pshared->tenant_divergences_evicted = 0;
	LWLockRelease(pshared->lock);
	PG_RETURN_VOID();
}

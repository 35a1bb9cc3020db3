/*-------------------------------------------------------------------------
 * deprecation.c
 *	  The legacy path's deprecation: every transaction of a role marked
 *	  deprecated (tenancy.role_deprecations, src/deprecation.sql) is counted
 *	  in shared memory, with its time and application_name, and writes a
 *	  WARNING to the server log (never to the client, which is the
 *	  unchanged legacy application) at most once per
 *	  tenancy.deprecation_warning_interval per role.
 *
 * The role is the one the binding holds for (context.c's session_binding):
 * the current role outside security-definer functions, else the login
 * role.  The roles' states are read from tenancy.role_deprecations into a
 * per-backend cache, renewed on a relcache invalidation of that table.
 *-------------------------------------------------------------------------
 */
#include "tenancy.h"

#include "access/heapam.h"
#include "access/htup_details.h"
#include "access/parallel.h"
#include "access/table.h"
#include "access/tableam.h"
#include "access/xact.h"
#include "catalog/namespace.h"
#include "fmgr.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "storage/ipc.h"
#include "storage/lwlock.h"
#include "storage/shmem.h"
#include "storage/spin.h"
#include "tcop/dest.h"
#include "tcop/tcopprot.h"
#include "utils/builtins.h"
#include "utils/inval.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

/* Deprecated roles tracked in shared memory, over all databases. */
#define DEPRECATION_MAX_ROLES 128
/* Roles of one database the backend cache holds. */
#define DEPRECATION_CACHE_MAX 64

typedef struct DeprecationEntry
{
	Oid			db;
	Oid			role;
	int64		transactions;	/* since the server started */
	int64		unwarned;		/* transactions since the last warning */
	int64		warnings;
	TimestampTz last_run;
	TimestampTz last_warning;
	char		last_application_name[NAMEDATALEN];
} DeprecationEntry;

typedef struct DeprecationShared
{
	slock_t		mutex;
	int			n;
	int64		overflow;		/* transactions of roles beyond the table */
	TimestampTz since;			/* when counting started (server start) */
	DeprecationEntry entries[DEPRECATION_MAX_ROLES];
} DeprecationShared;

static DeprecationShared *shared = NULL;

/* The backend's cache of tenancy.role_deprecations. */
typedef struct DeprecatedRole
{
	Oid			role;
	bool		retired;
} DeprecatedRole;

static DeprecatedRole cache[DEPRECATION_CACHE_MAX];
static int	cache_n = 0;
static bool cache_valid = false;
static Oid	cache_relid = InvalidOid;

/* Without shared memory: the rate is kept per backend. */
static TimestampTz local_last_warning = 0;
static int64 local_unwarned = 0;

/* GUC variables */
static int	deprecation_warning_interval = 60;	/* seconds; 0: every one */
static int	retire_after = 7 * SECS_PER_DAY;	/* seconds */

static void deprecation_xact_callback(XactEvent event, void *arg);
static void deprecation_relcache_callback(Datum arg, Oid relid);

void
tenancy_deprecation_init(void)
{
	DefineCustomIntVariable("tenancy.deprecation_warning_interval",
							"Least time between two server-log warnings about one deprecated legacy role.",
							"Every transaction of a deprecated role is counted; 0 logs a warning for each.",
							&deprecation_warning_interval,
							60, 0, INT_MAX / 1000,
							PGC_SUSET,
							GUC_UNIT_S,
							NULL, NULL, NULL);

	DefineCustomIntVariable("tenancy.retire_after",
							"How long a deprecated legacy role must not have run before tenancy.retire_role() retires it.",
							"Counted from its last transaction, or from its deprecation or the server's start, whichever is later.",
							&retire_after,
							7 * SECS_PER_DAY, 0, INT_MAX,
							PGC_SUSET,
							GUC_UNIT_S,
							NULL, NULL, NULL);

	RegisterXactCallback(deprecation_xact_callback, NULL);
	CacheRegisterRelcacheCallback(deprecation_relcache_callback, (Datum) 0);
}

/* Called by the shared-memory hooks of tenancy.c. */
void
deprecation_shmem_request(void)
{
	RequestAddinShmemSpace(MAXALIGN(sizeof(DeprecationShared)));
}

void
deprecation_shmem_startup(void)
{
	bool		found;

	LWLockAcquire(AddinShmemInitLock, LW_EXCLUSIVE);
	shared = ShmemInitStruct("tenancy deprecation", sizeof(DeprecationShared), &found);
	if (!found)
	{
		memset(shared, 0, sizeof(DeprecationShared));
		SpinLockInit(&shared->mutex);
		shared->since = GetCurrentTimestamp();
	}
	LWLockRelease(AddinShmemInitLock);
}

static void
deprecation_relcache_callback(Datum arg, Oid relid)
{
	/* Not found yet: any new relation may be the table. */
	if (relid == InvalidOid || relid == cache_relid || !OidIsValid(cache_relid))
		cache_valid = false;
}

/*
 * Read tenancy.role_deprecations (role regrole, ..., retired_at: columns 1
 * and the one named retired_at) straight from the heap with a fresh
 * snapshot, as context.c reads the bindings: no executor, no privilege
 * check, no search_path.
 */
static void
cache_refresh(void)
{
	Oid			nsp;
	Relation	rel;
	TableScanDesc scan;
	Snapshot	snap;
	HeapTuple	tup;
	AttrNumber	retired_att;

	cache_n = 0;
	cache_valid = true;			/* an invalidation during the scan resets it */
	nsp = get_namespace_oid("tenancy", true);
	cache_relid = OidIsValid(nsp) ? get_relname_relid("role_deprecations", nsp) : InvalidOid;
	if (!OidIsValid(cache_relid))
		return;
	retired_att = get_attnum(cache_relid, "retired_at");
	rel = table_open(cache_relid, AccessShareLock);
	snap = RegisterSnapshot(GetLatestSnapshot());
	scan = table_beginscan(rel, snap, 0, NULL);
	while ((tup = heap_getnext(scan, ForwardScanDirection)) != NULL && cache_n < DEPRECATION_CACHE_MAX)
	{
		bool		isnull;
		Datum		d;

		CHECK_FOR_INTERRUPTS();
		d = heap_getattr(tup, 1, RelationGetDescr(rel), &isnull);
		if (isnull)
			continue;
		cache[cache_n].role = DatumGetObjectId(d);
		cache[cache_n].retired = false;
		if (retired_att != InvalidAttrNumber)
		{
			(void) heap_getattr(tup, retired_att, RelationGetDescr(rel), &isnull);
			cache[cache_n].retired = !isnull;
		}
		cache_n++;
	}
	table_endscan(scan);
	UnregisterSnapshot(snap);
	table_close(rel, AccessShareLock);
}

static const DeprecatedRole *
cache_find(Oid role)
{
	for (int i = 0; i < cache_n; i++)
		if (cache[i].role == role)
			return &cache[i];
	return NULL;
}

/*
 * The deprecated (or retired) role this transaction runs for, if any: the
 * current role outside security-definer functions, else the login role.
 * may_read: the cache may be renewed (in a transaction that can still read
 * tables); else a stale cache answers nothing.
 */
static const DeprecatedRole *
deprecated_role(bool may_read)
{
	const DeprecatedRole *d;
	Oid			outer;

	if (!cache_valid)
	{
		if (!may_read)
			return NULL;
		cache_refresh();
	}
	if (cache_n == 0)
		return NULL;
	outer = GetOuterUserId();
	d = cache_find(outer);
	if (d == NULL && GetSessionUserId() != outer)
		d = cache_find(GetSessionUserId());
	return d;
}

/*
 * Count one transaction of role in shared memory; true when it is due a
 * warning.  unwarned_out: transactions since the last warning, this one
 * included; total_out: since counting started.
 */
static bool
count_transaction(Oid role, bool may_warn, int64 *unwarned_out, int64 *total_out)
{
	TimestampTz now = GetCurrentTimestamp();
	int64		interval_us = (int64) deprecation_warning_interval * USECS_PER_SEC;
	bool		warn = false;

	if (shared == NULL)
	{
		local_unwarned++;
		*unwarned_out = local_unwarned;
		*total_out = -1;
		if (may_warn && (local_last_warning == 0 || now - local_last_warning >= interval_us))
		{
			local_last_warning = now;
			local_unwarned = 0;
			warn = true;
		}
		return warn;
	}

	SpinLockAcquire(&shared->mutex);
	{
		DeprecationEntry *e = NULL;

		for (int i = 0; i < shared->n; i++)
			if (shared->entries[i].db == MyDatabaseId && shared->entries[i].role == role)
			{
				e = &shared->entries[i];
				break;
			}
		if (e == NULL && shared->n < DEPRECATION_MAX_ROLES)
		{
			e = &shared->entries[shared->n++];
			memset(e, 0, sizeof(*e));
			e->db = MyDatabaseId;
			e->role = role;
		}
		if (e == NULL)
		{
			shared->overflow++;
			*unwarned_out = 1;
			*total_out = -1;
			warn = may_warn;
		}
		else
		{
			e->transactions++;
			e->unwarned++;
			e->last_run = now;
			strlcpy(e->last_application_name, application_name ? application_name : "",
					sizeof(e->last_application_name));
			*unwarned_out = e->unwarned;
			*total_out = e->transactions;
			if (may_warn && (e->last_warning == 0 || now - e->last_warning >= interval_us))
			{
				e->last_warning = now;
				e->unwarned = 0;
				e->warnings++;
				warn = true;
			}
		}
	}
	SpinLockRelease(&shared->mutex);
	return warn;
}

/*
 * The warning, to the server log only: the client is the legacy
 * application, which must run unchanged (a WARNING in its protocol stream
 * may be shown to users or fail strict drivers).  LOG_SERVER_ONLY would
 * keep it from the client as well, but logs with severity LOG, below what
 * log_min_messages = warning keeps and not what a log alert greps for: the
 * message is raised as a WARNING with the client's destination switched
 * off for the call, so should_output_to_client() is false for it alone.
 */
static void
warn_server_log(Oid role, bool retired, int64 unwarned, int64 total)
{
	CommandDest save = whereToSendOutput;
	const char *rolname = GetUserNameFromId(role, true);
	const char *app = application_name != NULL && application_name[0] != '\0'
		? application_name : "";

	whereToSendOutput = DestNone;
	PG_TRY();
	{
		if (retired)
			ereport(WARNING,
					(errcode(ERRCODE_WARNING_DEPRECATED_FEATURE),
					 errmsg("retired legacy role \"%s\" ran a transaction (application_name \"%s\")",
							rolname ? rolname : "?", app),
					 errdetail("%lld transactions of this role since the last warning; its tenant binding is gone, so it runs without a tenant.",
							   (long long) unwarned),
					 errhint("Find the client by its application_name; tenancy.unretire_role() restores the binding.")));
		else if (total >= 0)
			ereport(WARNING,
					(errcode(ERRCODE_WARNING_DEPRECATED_FEATURE),
					 errmsg("deprecated legacy role \"%s\" ran a transaction (application_name \"%s\")",
							rolname ? rolname : "?", app),
					 errdetail("%lld transactions of this role since the last warning, %lld since the server started (tenancy.deprecation_warning_interval = %d s).",
							   (long long) unwarned, (long long) total, deprecation_warning_interval),
					 errhint("Move this client to set its tenant per request (tenancy.set_tenant()); tenancy.retire_role() retires the role once it has stopped.")));
		else
			ereport(WARNING,
					(errcode(ERRCODE_WARNING_DEPRECATED_FEATURE),
					 errmsg("deprecated legacy role \"%s\" ran a transaction (application_name \"%s\")",
							rolname ? rolname : "?", app),
					 errdetail("%lld transactions of this role since the last warning in this session (tenancy.deprecation_warning_interval = %d s).",
							   (long long) unwarned, deprecation_warning_interval),
					 errhint("Move this client to set its tenant per request (tenancy.set_tenant()); tenancy.retire_role() retires the role once it has stopped.")));
	}
	PG_FINALLY();
	{
		whereToSendOutput = save;
	}
	PG_END_TRY();
}

/*
 * Each transaction of a client backend: committing ones are counted (and
 * warned about) before the commit, with the cache renewed if need be;
 * aborting ones are counted from the cache alone (no table is read in an
 * aborted transaction), without a warning.
 */
static void
deprecation_xact_callback(XactEvent event, void *arg)
{
	const DeprecatedRole *d;
	int64		unwarned;
	int64		total;
	bool		commit;

	if (event == XACT_EVENT_PRE_COMMIT)
		commit = true;
	else if (event == XACT_EVENT_ABORT)
		commit = false;
	else
		return;
	if (MyBackendType != B_BACKEND || IsParallelWorker() || !OidIsValid(MyDatabaseId))
		return;
	d = deprecated_role(commit);
	if (d == NULL)
		return;
	if (count_transaction(d->role, commit, &unwarned, &total))
		warn_server_log(d->role, d->retired, unwarned, total);
}

/*
 * tenancy.deprecation_activity(): the counters of this database's roles;
 * none without shared memory (tenancy not preloaded).
 */
PG_FUNCTION_INFO_V1(tenancy_deprecation_activity);
Datum
tenancy_deprecation_activity(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	DeprecationEntry *copy;
	int			n;
	TimestampTz since;

	InitMaterializedSRF(fcinfo, 0);
	if (shared == NULL)
		PG_RETURN_VOID();

	copy = palloc(sizeof(DeprecationEntry) * DEPRECATION_MAX_ROLES);
	SpinLockAcquire(&shared->mutex);
	n = shared->n;
	memcpy(copy, shared->entries, sizeof(DeprecationEntry) * n);
	since = shared->since;
	SpinLockRelease(&shared->mutex);

	for (int i = 0; i < n; i++)
	{
		Datum		values[7];
		bool		nulls[7] = {0};

		CHECK_FOR_INTERRUPTS();
		if (copy[i].db != MyDatabaseId)
			continue;
		values[0] = ObjectIdGetDatum(copy[i].role);
		values[1] = Int64GetDatum(copy[i].transactions);
		values[2] = Int64GetDatum(copy[i].warnings);
		values[3] = TimestampTzGetDatum(copy[i].last_run);
		values[4] = CStringGetTextDatum(copy[i].last_application_name);
		values[5] = TimestampTzGetDatum(copy[i].last_warning);
		nulls[5] = copy[i].last_warning == 0;
		values[6] = TimestampTzGetDatum(since);
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	}
	PG_RETURN_VOID();
}

/*
 * tenancy.deprecation_watch(): since when transactions are counted (NULL
 * without shared memory), and tenancy.retire_after as an interval.
 */
PG_FUNCTION_INFO_V1(tenancy_deprecation_watch);
Datum
tenancy_deprecation_watch(PG_FUNCTION_ARGS)
{
	TupleDesc	tupdesc;
	Datum		values[2];
	bool		nulls[2] = {0};
	Interval   *iv = palloc0(sizeof(Interval));

	if (get_call_result_type(fcinfo, NULL, &tupdesc) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "return type must be a row type");
	if (shared != NULL)
	{
		SpinLockAcquire(&shared->mutex);
		values[0] = TimestampTzGetDatum(shared->since);
		SpinLockRelease(&shared->mutex);
	}
	else
		nulls[0] = true;
	iv->time = (int64) retire_after * USECS_PER_SEC;
	values[1] = IntervalPGetDatum(iv);
	PG_RETURN_DATUM(HeapTupleGetDatum(heap_form_tuple(BlessTupleDesc(tupdesc), values, nulls)));
}

/*-------------------------------------------------------------------------
 * tenancy.c
 *	  Module entry point: initialises each part, and the one chain of
 *	  shared-memory hooks that serves the parts keeping state there.
 *
 * Each module defines its own settings in its *_init() function; the
 * "tenancy" prefix is reserved once all of them are defined.
 *
 * Relcache invalidation callbacks go through one callback of this module
 * (tenancy_register_relcache_callback()): a backend has room for only
 * MAX_RELCACHE_CALLBACKS (10) of them, shared with PostgreSQL's own caches
 * and with other extensions; Citus takes five, and with one slot per
 * module a Citus worker backend ran out ("out of relcache_callback_list
 * slots").
 *-------------------------------------------------------------------------
 */
#include "tenancy.h"
#include "citus_context.h"

#include "fmgr.h"
#include "miscadmin.h"
#include "storage/ipc.h"
#include "utils/guc.h"
#include "utils/inval.h"

PG_MODULE_MAGIC;

void		_PG_init(void);

bool		tenancy_preloaded = false;

/* The modules' relcache callbacks, called by the one registered. */
#define TENANCY_RELCACHE_CALLBACKS 8
static struct
{
	RelcacheCallbackFunction func;
	Datum		arg;
}			relcache_callbacks[TENANCY_RELCACHE_CALLBACKS];
static int	relcache_callbacks_used = 0;

static shmem_request_hook_type prev_shmem_request_hook = NULL;
static shmem_startup_hook_type prev_shmem_startup_hook = NULL;

/* Reserve the shared memory of every module that keeps state there. */
static void
tenancy_shmem_request(void)
{
	if (prev_shmem_request_hook)
		prev_shmem_request_hook();
	context_stats_shmem_request();
	worker_shmem_request();
	shadow_shmem_request();
	path_stats_shmem_request();
	deprecation_shmem_request();
}

/* Attach to (or, first, initialise) each module's shared state. */
static void
tenancy_shmem_startup(void)
{
	if (prev_shmem_startup_hook)
		prev_shmem_startup_hook();
	context_stats_shmem_startup();
	worker_shmem_startup();
	shadow_shmem_startup();
	path_stats_shmem_startup();
	deprecation_shmem_startup();
}

void
_PG_init(void)
{
	tenancy_preloaded = process_shared_preload_libraries_in_progress;

	/* The key type first: the tenant key is validated against it. */
	tenancy_tenant_key_init();
	tenancy_context_init();
	tenancy_registry_init();
	tenancy_backfill_init();
	tenancy_status_init();
	tenancy_worker_init();
	tenancy_shadow_init();
	tenancy_path_stats_init();
	tenancy_rls_guard_init();
	tenancy_prune_init();
	tenancy_derive_init();
	tenancy_token_init();
	tenancy_deprecation_init();
	tenancy_citus_context_init();
	tenancy_rollout_init();

	MarkGUCPrefixReserved("tenancy");

	/* Shared memory exists only when the library is preloaded. */
	if (process_shared_preload_libraries_in_progress)
	{
		prev_shmem_request_hook = shmem_request_hook;
		shmem_request_hook = tenancy_shmem_request;
		prev_shmem_startup_hook = shmem_startup_hook;
		shmem_startup_hook = tenancy_shmem_startup;
	}
}

static void
tenancy_relcache_callback(Datum arg, Oid relid)
{
	for (int i = 0; i < relcache_callbacks_used; i++)
		relcache_callbacks[i].func(relcache_callbacks[i].arg, relid);
}

/* CacheRegisterRelcacheCallback() for the modules: one slot for them all. */
void
tenancy_register_relcache_callback(RelcacheCallbackFunction func, Datum arg)
{
	if (relcache_callbacks_used >= TENANCY_RELCACHE_CALLBACKS)
		elog(FATAL, "out of tenancy relcache callback slots");
	if (relcache_callbacks_used == 0)
		CacheRegisterRelcacheCallback(tenancy_relcache_callback, (Datum) 0);
	relcache_callbacks[relcache_callbacks_used].func = func;
	relcache_callbacks[relcache_callbacks_used].arg = arg;
	relcache_callbacks_used++;
}

/*
 * Features that keep state in shared memory need the library preloaded;
 * without it they raise 55000 with a hint.
 */
void
tenancy_require_preload(const char *feature)
{
	if (!tenancy_preloaded)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("%s requires tenancy to be loaded via shared_preload_libraries", feature),
				 errhint("Add 'tenancy' to shared_preload_libraries in postgresql.conf and restart the server.")));
}

/*-------------------------------------------------------------------------
 * tenancy.c
 *	  Module entry point: initialises each part, and the one chain of
 *	  shared-memory hooks that serves the parts keeping state there.
 *
 * Each module defines its own settings in its *_init() function; the
 * "tenancy" prefix is reserved once all of them are defined.
 *-------------------------------------------------------------------------
 */
#include "tenancy.h"

#include "fmgr.h"
#include "miscadmin.h"
#include "storage/ipc.h"
#include "utils/guc.h"

PG_MODULE_MAGIC;

void		_PG_init(void);

bool		tenancy_preloaded = false;

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
	tenancy_rls_guard_init();
	tenancy_derive_init();
	tenancy_token_init();
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

/*-------------------------------------------------------------------------
 * tenancy.c
 *	  Module entry point: GUC definitions and initialisation of each part.
 *-------------------------------------------------------------------------
 */
#include "tenancy.h"

#include "fmgr.h"
#include "miscadmin.h"
#include "utils/guc.h"

PG_MODULE_MAGIC;

void		_PG_init(void);

int			tenancy_tenant_type = TENANT_KEY_UUID;
bool		tenancy_require_tenant = false;
bool		tenancy_validate_tenant = true;
bool		tenancy_allow_session_tenant = true;
char	   *tenancy_tenant_id = NULL;
bool		tenancy_preloaded = false;

static const struct config_enum_entry tenant_type_options[] = {
	{"uuid", TENANT_KEY_UUID, false},
	{"bigint", TENANT_KEY_BIGINT, false},
	{"text", TENANT_KEY_TEXT, false},
	{NULL, 0, false}
};

void
_PG_init(void)
{
	tenancy_preloaded = process_shared_preload_libraries_in_progress;

	/* The key type first: the tenant key is validated against it. */
	DefineCustomEnumVariable("tenancy.tenant_type",
							 "Type of tenant keys: uuid, bigint or text.",
							 "Set it in postgresql.conf or with ALTER DATABASE before CREATE EXTENSION.",
							 &tenancy_tenant_type,
							 TENANT_KEY_UUID,
							 tenant_type_options,
							 PGC_SUSET,
							 0,
							 NULL,
							 tenancy_assign_tenant_type,
							 NULL);

	DefineCustomStringVariable("tenancy.tenant_id",
							   "Key of the current tenant; empty when no tenant is set.",
							   "Validated when set.  Prefer tenancy.set_tenant(), which is transaction-local.",
							   &tenancy_tenant_id,
							   "",
							   PGC_USERSET,
							   GUC_REPORT | GUC_NOT_IN_SAMPLE,
							   tenancy_check_tenant_id,
							   tenancy_assign_tenant_id,
							   NULL);

	DefineCustomBoolVariable("tenancy.require_tenant",
							 "Raise an error when the current tenant is read while none is set.",
							 NULL,
							 &tenancy_require_tenant,
							 false,
							 PGC_USERSET,
							 0,
							 NULL, NULL, NULL);

	DefineCustomBoolVariable("tenancy.validate_tenant",
							 "Check tenancy.set_tenant() keys against the tenant registry.",
							 "When off, any well-formed key is accepted without a registry lookup.",
							 &tenancy_validate_tenant,
							 true,
							 PGC_SUSET,
							 0,
							 NULL, NULL, NULL);

	DefineCustomBoolVariable("tenancy.allow_session_tenant",
							 "Allow the tenant to be set for the whole session.",
							 "Turn off for clients behind a transaction-mode connection pooler, "
							 "where a session-level tenant would leak to the next client.",
							 &tenancy_allow_session_tenant,
							 true,
							 PGC_SUSET,
							 0,
							 NULL, NULL, NULL);

	tenancy_context_init();
	tenancy_registry_init();
	tenancy_stats_init();
	tenancy_backfill_init();
	tenancy_worker_init();
	tenancy_shadow_init();
	tenancy_rls_guard_init();
	tenancy_derive_init();

#if PG_VERSION_NUM >= 150000
	MarkGUCPrefixReserved("tenancy");
#else
	EmitWarningsOnPlaceholders("tenancy");
#endif
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

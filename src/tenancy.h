/*-------------------------------------------------------------------------
 * tenancy.h
 *	  Declarations shared by the modules of the tenancy extension: the
 *	  supported PostgreSQL version, each module's initialisation and
 *	  shared memory, and the headers of the types modules share.
 *-------------------------------------------------------------------------
 */
#ifndef TENANCY_H
#define TENANCY_H

#include "postgres.h"

/* PostgreSQL 15 is the version tenancy is built and tested against. */
#if PG_VERSION_NUM < 150000 || PG_VERSION_NUM >= 160000
#error "tenancy requires PostgreSQL 15: point PG_CONFIG at a PostgreSQL 15 pg_config"
#endif

#include "nodes/primnodes.h"
#include "utils/guc.h"
#include "utils/inval.h"

#include "as_owner.h"
#include "context.h"
#include "status.h"
#include "tenant_key.h"

/* registry.c */
extern void tenancy_registry_init(void);
extern bool registry_lookup(const char *tenant, bool by_slug,
							char *key_out, char *slug_out, char *status_out);
extern bool registry_tenant_home(const char *key, char *home_out);
extern bool registry_implicit_key(char *key_out);

/* tenancy.c */
extern bool tenancy_preloaded;
extern void tenancy_require_preload(const char *feature);
extern void tenancy_register_relcache_callback(RelcacheCallbackFunction func, Datum arg);

/* Memory for GUC check hooks: malloc before 16, guc_malloc from 16 on. */
#if PG_VERSION_NUM >= 160000
#define tenancy_guc_malloc(sz)	guc_malloc(LOG, (sz))
#define tenancy_guc_strdup(s)	guc_strdup(LOG, (s))
#define tenancy_guc_free(p)		guc_free(p)
#else
#define tenancy_guc_malloc(sz)	malloc(sz)
#define tenancy_guc_strdup(s)	strdup(s)
#define tenancy_guc_free(p)		free(p)
#endif

/* backfill.c: helpers of the batched backfill engine */
extern void tenancy_backfill_init(void);
/* shadow.c, rls_guard.c: row-level security */
extern void tenancy_shadow_init(void);
extern void shadow_shmem_request(void);
extern void shadow_shmem_startup(void);
extern void tenancy_rls_guard_init(void);
extern bool tenant_switch_refused(const char **reason, const char **detail);
extern bool shadow_note_derived(Oid relid);
extern Node *rls_accessor_const(FuncExpr *f, const TenantKey *key);
/* prune.c: plans specialised to the current tenant (one tenant, one shard) */
extern void tenancy_prune_init(void);
extern void tenant_plans_invalidate(void);
extern void held_cursors_tenant_changed(void);
/* path_stats.c: shadow counts by path, role and tenant */
extern void tenancy_path_stats_init(void);
extern void path_stats_shmem_request(void);
extern void path_stats_shmem_startup(void);
extern void path_stats_count(Oid relid, bool is_write, bool diverges, const TenantKey *key,
							 char *(*valtext) (Datum), Datum value, bool isnull);
/* derive.c: tenants derived from the row or its parent */
extern void tenancy_derive_init(void);
extern bool derive_accepts(Oid relid, const char *tenant);
/* rollout.c: per-tenant modes */
extern void tenancy_rollout_init(void);
extern void rollout_tenant_changed(bool recheck);
extern bool rollout_has_shadow(Oid relid);

/* deprecation.c: the legacy path's deprecation */
extern void tenancy_deprecation_init(void);
extern void deprecation_shmem_request(void);
extern void deprecation_shmem_startup(void);

#endif							/* TENANCY_H */

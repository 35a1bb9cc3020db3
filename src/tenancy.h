/*-------------------------------------------------------------------------
 * tenancy.h
 *	  Declarations shared by the modules of the tenancy extension.
 *-------------------------------------------------------------------------
 */
#ifndef TENANCY_H
#define TENANCY_H

#include "postgres.h"
#include "utils/guc.h"
#include "utils/uuid.h"

/* Longest text tenant key, in bytes. */
#define TENANT_KEY_MAXLEN 255

typedef enum TenantKeyType
{
	TENANT_KEY_UUID,
	TENANT_KEY_BIGINT,
	TENANT_KEY_TEXT
} TenantKeyType;

/* A parsed tenant key: its type, binary value and canonical text. */
typedef struct TenantKey
{
	TenantKeyType type;
	pg_uuid_t	uuid;
	int64		i64;
	char		text[TENANT_KEY_MAXLEN + 1];
} TenantKey;

/* GUC variables (tenancy.c) */
extern int	tenancy_tenant_type;
extern bool tenancy_require_tenant;
extern bool tenancy_validate_tenant;
extern bool tenancy_allow_session_tenant;
extern char *tenancy_tenant_id;

/* tenant_key.c */
extern bool tenant_key_parse(const char *input, TenantKeyType type,
							 TenantKey *key, const char **detail);
extern const char *tenant_key_type_name(TenantKeyType type);
extern Oid	tenant_key_type_oid(TenantKeyType type);
extern bool tenant_key_shaped(const char *input, TenantKeyType type);

/* context.c */
extern bool tenancy_check_tenant_id(char **newval, void **extra, GucSource source);
extern void tenancy_assign_tenant_id(const char *newval, void *extra);
extern void tenancy_assign_tenant_type(int newval, void *extra);
extern void tenancy_context_init(void);
extern const TenantKey *tenant_context_get(void);
extern const TenantKey *tenant_context_peek(void);
extern bool tenant_context_is_default(void);

/* registry.c */
extern void tenancy_registry_init(void);
extern bool registry_lookup(const char *tenant, bool by_slug,
							char *key_out, char *slug_out, char *status_out);
extern bool registry_implicit_key(char *key_out);

/* tenancy.c */
extern bool tenancy_preloaded;
extern void tenancy_require_preload(const char *feature);

/* stats.c: cluster-wide tenant context counters */
typedef enum TenancyCounter
{
	TENANCY_SET_TENANT,
	TENANCY_REFUSED_UNKNOWN,
	TENANCY_REFUSED_SUSPENDED,
	TENANCY_REFUSED_SESSION,
	TENANCY_NUM_COUNTERS
} TenancyCounter;
extern void tenancy_stats_init(void);
extern void tenancy_count(TenancyCounter counter);

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
/* status.c, worker.c: unmigrated-row counts and the background worker */
typedef struct StatusTable
{
	Oid			relid;
	char		column[NAMEDATALEN];
	char		name[2 * NAMEDATALEN + 8];	/* schema-qualified, quoted */
} StatusTable;
extern int	tenancy_worker_cycle_budget;
extern int	tenancy_worker_chunk_pages;
extern bool status_step(Oid relid, const char *column, bool in_worker);
extern void status_prune(void);
extern struct List *status_tables(Oid relid, MemoryContext cxt);
extern int	status_lock_timeout_begin(void);
extern void tenancy_worker_init(void);
/* as_owner.c: work on a user table with no more rights than its owner's */
typedef struct AsOwnerState
{
	Oid			save_userid;
	int			save_sec_context;
	int			save_nestlevel;
} AsOwnerState;
extern Oid	as_owner_role(Oid relid, Oid requester);
extern void as_owner_begin(Oid relid, Oid requester, AsOwnerState *state);
extern void as_owner_end(AsOwnerState *state);
/* shadow.c, rls_guard.c: row-level security */
extern void tenancy_shadow_init(void);
extern void tenancy_rls_guard_init(void);
extern bool tenant_switch_refused(const char **reason, const char **detail);
extern bool shadow_note_derived(Oid relid);
/* derive.c: tenants derived from the row or its parent */
extern void tenancy_derive_init(void);
extern bool derive_accepts(Oid relid, const char *tenant);

#endif							/* TENANCY_H */

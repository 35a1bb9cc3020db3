/*-------------------------------------------------------------------------
 * context.h
 *	  The current tenant (context.c) and the cluster-wide counters of
 *	  tenant switches and refusals (context_stats.c).
 *-------------------------------------------------------------------------
 */
#ifndef CONTEXT_H
#define CONTEXT_H

#include "utils/guc.h"

#include "tenant_key.h"

/* tenancy.context_source */
typedef enum ContextSource
{
	CONTEXT_SOURCE_ANY,
	CONTEXT_SOURCE_TOKEN
} ContextSource;

/* GUC variables (context.c) */
extern int	tenancy_context_source;
extern bool tenancy_require_tenant;
extern bool tenancy_validate_tenant;
extern bool tenancy_allow_session_tenant;
extern char *tenancy_tenant_id;

/*
 * True only around the extension's own verified setter's set_config_option()
 * call (set_tenant_token()): tenancy.context_source = token lets it through.
 */
extern bool tenancy_trusted_setter;

/* context.c */
extern void tenancy_context_init(void);
extern bool tenancy_check_tenant_id(char **newval, void **extra, GucSource source);
extern void tenancy_assign_tenant_id(const char *newval, void *extra);
extern void tenancy_assign_tenant_type(int newval, void *extra);
extern const TenantKey *tenant_context_get(void);
extern const TenantKey *tenant_context_peek(void);
extern bool tenant_context_is_default(void);
extern void tenant_context_resolve(const char *input, char *key_out);
extern void tenant_context_set(const char *key, bool is_local);

/* token.c */
extern void tenancy_token_init(void);

/* context_stats.c: cluster-wide tenant context counters */
typedef enum TenancyCounter
{
	TENANCY_SET_TENANT,
	TENANCY_REFUSED_UNKNOWN,
	TENANCY_REFUSED_SUSPENDED,
	TENANCY_REFUSED_SESSION,
	TENANCY_NUM_COUNTERS
} TenancyCounter;
extern void tenancy_count(TenancyCounter counter);
extern void context_stats_shmem_request(void);
extern void context_stats_shmem_startup(void);

#endif							/* CONTEXT_H */

/*-------------------------------------------------------------------------
 * citus_context.h
 *	  The tenant context on a Citus cluster (citus_context.c): forwarding
 *	  the tenant, and the tenant token, to the workers.
 *-------------------------------------------------------------------------
 */
#ifndef CITUS_CONTEXT_H
#define CITUS_CONTEXT_H

extern void tenancy_citus_context_init(void);

/* Is Citus loaded in this backend?  Decided once per backend. */
extern bool citus_context_loaded(void);

/*
 * After the tenant GUC was set to value (canonical key, or "" to clear):
 * forward it to the workers of this transaction.  No-op without Citus.
 */
extern void citus_context_forward_tenant(const char *value);

/* Before the tenant is set from a verified token: forward the token. */
extern void citus_context_forward_token(const char *token);

/*
 * Is value the tenant of the verified tenancy.tenant_token in force?  The
 * route by which a worker admits a tenant forwarded with its token.
 */
extern bool citus_context_token_admits(const char *value);

/* token.c: verify a token's signature and claims; its tenant key. */
extern void token_verify_tenant_key(const char *token, char *key_out);

#endif							/* CITUS_CONTEXT_H */

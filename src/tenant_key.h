/*-------------------------------------------------------------------------
 * tenant_key.h
 *	  Tenant keys (tenant_key.c): their types, parsed form and the
 *	  tenancy.tenant_type setting.
 *-------------------------------------------------------------------------
 */
#ifndef TENANT_KEY_H
#define TENANT_KEY_H

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

/* GUC variable: tenancy.tenant_type, a TenantKeyType */
extern int	tenancy_tenant_type;

extern void tenancy_tenant_key_init(void);
extern bool tenant_key_parse(const char *input, TenantKeyType type,
							 TenantKey *key, const char **detail);
extern const char *tenant_key_type_name(TenantKeyType type);
extern Oid	tenant_key_type_oid(TenantKeyType type);
extern bool tenant_key_shaped(const char *input, TenantKeyType type);

#endif							/* TENANT_KEY_H */

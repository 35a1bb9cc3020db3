/*-------------------------------------------------------------------------
 * registry.c
 *	  Cached lookups in the tenant registry, tenancy.tenants.
 *
 * set_tenant() must not query the catalog on every call, so each backend
 * caches what it looked up (found or not).  A statement trigger on the
 * registry sends a relcache invalidation for it on every change; our
 * callback marks the cache stale, and the next lookup starts afresh.
 * Lookups run as the registry's owner, so application roles need no
 * privilege on the registry to set their tenant; they run with search_path
 * pinned to pg_catalog, so the caller's search_path cannot slip its own
 * types or functions into a query that runs with the owner's rights.
 *
 * A lookup reads the registry with a fresh snapshot (not the statement's,
 * which in REPEATABLE READ may predate a change whose invalidation was
 * already received), and is not cached when an invalidation arrived while
 * it ran: either way a stale answer would be kept for the backend's life.
 *-------------------------------------------------------------------------
 */
#include "tenancy.h"

#include "access/htup_details.h"
#include "catalog/namespace.h"
#include "commands/trigger.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "utils/builtins.h"
#include "utils/hsearch.h"
#include "utils/inval.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "utils/syscache.h"

/* Cache entries beyond this many make the cache start afresh. */
#define REGISTRY_CACHE_MAX 10000

typedef struct RegistryCacheEntry
{
	char		lookup[TENANT_KEY_MAXLEN + 2];	/* 'k' or 's', then the key or slug */
	bool		found;
	char		status;			/* 'a'ctive or 's'uspended */
	char		key[TENANT_KEY_MAXLEN + 1];
	char		slug[TENANT_KEY_MAXLEN + 1];
	char		home[NAMEDATALEN];	/* moved away: its home label, else "" */
} RegistryCacheEntry;

static HTAB *registry_cache = NULL;
static bool registry_valid = false;
static uint64 registry_invalidations = 0;	/* invalidations received */
static Oid	registry_relid = InvalidOid;
static Oid	registry_homes_relid = InvalidOid;	/* tenancy.tenant_homes (move.sql) */
static Oid	registry_owner = InvalidOid;
static Oid	registry_key_type = InvalidOid;
static SPIPlanPtr plan_by_key = NULL;
static SPIPlanPtr plan_by_slug = NULL;
static SPIPlanPtr plan_implicit = NULL;

/*
 * A Citus worker's copy of the coordinator's implicit tenant
 * (tenancy.citus_implicit_tenant, citus_context.sql), cached until that
 * table's relcache entry is invalidated (its statement trigger does that).
 */
static Oid	implicit_copy_relid = InvalidOid;
static bool implicit_copy_valid = false;
static bool implicit_copy_found = false;
static char implicit_copy_key[TENANT_KEY_MAXLEN + 1];
static uint64 implicit_copy_invalidations = 0;

static void
registry_relcache_callback(Datum arg, Oid relid)
{
	if (relid == InvalidOid || relid == implicit_copy_relid)
	{
		implicit_copy_valid = false;
		implicit_copy_invalidations++;
	}
	if (relid == InvalidOid || relid == registry_relid ||
		(OidIsValid(registry_homes_relid) && relid == registry_homes_relid))
	{
		registry_valid = false;
		registry_invalidations++;
	}
}

void
tenancy_registry_init(void)
{
	tenancy_register_relcache_callback(registry_relcache_callback, (Datum) 0);
}

/* Start afresh: find the registry, forget every lookup and plan. */
static void
registry_reset(void)
{
	HASHCTL		ctl;
	Oid			nsp;
	HeapTuple	tup;

	if (registry_cache != NULL)
		hash_destroy(registry_cache);
	registry_cache = NULL;
	if (plan_by_key != NULL)
		SPI_freeplan(plan_by_key);
	if (plan_by_slug != NULL)
		SPI_freeplan(plan_by_slug);
	if (plan_implicit != NULL)
		SPI_freeplan(plan_implicit);
	plan_by_key = plan_by_slug = plan_implicit = NULL;

	nsp = get_namespace_oid("tenancy", true);
	registry_relid = OidIsValid(nsp) ? get_relname_relid("tenants", nsp) : InvalidOid;
	/* Absent in a database not yet updated to the version that has it. */
	registry_homes_relid = OidIsValid(nsp) ? get_relname_relid("tenant_homes", nsp) : InvalidOid;
	if (!OidIsValid(registry_relid))
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_TABLE),
				 errmsg("tenant registry tenancy.tenants does not exist"),
				 errhint("Run CREATE EXTENSION tenancy in this database.")));
	tup = SearchSysCache1(RELOID, ObjectIdGetDatum(registry_relid));
	if (!HeapTupleIsValid(tup))
		elog(ERROR, "cache lookup failed for relation %u", registry_relid);
	registry_owner = ((Form_pg_class) GETSTRUCT(tup))->relowner;
	ReleaseSysCache(tup);
	registry_key_type = get_atttype(registry_relid, get_attnum(registry_relid, "id"));

	memset(&ctl, 0, sizeof(ctl));
	ctl.keysize = TENANT_KEY_MAXLEN + 2;
	ctl.entrysize = sizeof(RegistryCacheEntry);
	ctl.hcxt = TopMemoryContext;
	registry_cache = hash_create("tenancy registry cache", 64, &ctl,
								 HASH_ELEM | HASH_STRINGS | HASH_CONTEXT);
	registry_valid = true;
}

/* kind: 'k' by key, 's' by slug, 'i' the implicit tenant. */
static SPIPlanPtr
registry_plan(char kind)
{
	SPIPlanPtr	plan;
	Oid			argtype = TEXTOID;
	char	   *sql;

	/*
	 * Every name qualified; search_path is pinned as well (registry_fetch).
	 * The fourth column: the home label of a tenant moved away, when the
	 * database has tenancy.tenant_homes.
	 */
	const char *home = OidIsValid(registry_homes_relid)
		? ", (SELECT h.home FROM tenancy.tenant_homes h "
		"WHERE h.tenant OPERATOR(pg_catalog.=) t.id::pg_catalog.text)"
		: ", NULL::pg_catalog.text";

	if (kind == 's')
		sql = psprintf("SELECT t.id::pg_catalog.text, t.slug, t.status%s FROM tenancy.tenants t "
					   "WHERE t.slug OPERATOR(pg_catalog.=) $1", home);
	else if (kind == 'i')
		sql = psprintf("SELECT t.id::pg_catalog.text, t.slug, t.status%s FROM tenancy.tenants t "
					   "WHERE t.is_implicit", home);
	else
		sql = psprintf("SELECT t.id::pg_catalog.text, t.slug, t.status%s FROM tenancy.tenants t "
					   "WHERE t.id OPERATOR(pg_catalog.=) CAST($1 AS %s)", home,
					   format_type_extended(registry_key_type, -1,
											FORMAT_TYPE_FORCE_QUALIFY));
	plan = SPI_prepare(sql, kind == 'i' ? 0 : 1, &argtype);
	if (plan == NULL)
		elog(ERROR, "SPI_prepare failed: %s", SPI_result_code_string(SPI_result));
	if (SPI_keepplan(plan) != 0)
		elog(ERROR, "SPI_keepplan failed");
	return plan;
}

/*
 * Read one registry row into entry, as the registry's owner, with
 * search_path pinned to pg_catalog and a fresh snapshot.
 */
static void
registry_fetch(const char *tenant, char kind, RegistryCacheEntry *entry)
{
	Oid			save_userid;
	int			save_sec;
	int			save_nestlevel;
	Datum		arg = CStringGetTextDatum(tenant);
	SPIPlanPtr *plan = kind == 's' ? &plan_by_slug : kind == 'i' ? &plan_implicit : &plan_by_key;

	GetUserIdAndSecContext(&save_userid, &save_sec);
	SetUserIdAndSecContext(registry_owner,
						   save_sec | SECURITY_LOCAL_USERID_CHANGE | SECURITY_RESTRICTED_OPERATION);
	save_nestlevel = NewGUCNestLevel();
	(void) set_config_option("search_path", "pg_catalog, pg_temp",
							 PGC_USERSET, PGC_S_SESSION,
							 GUC_ACTION_SAVE, true, 0, false);
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	if (*plan == NULL)
		*plan = registry_plan(kind);
	if (SPI_execute_snapshot(*plan, &arg, NULL, GetLatestSnapshot(), InvalidSnapshot,
							 true, false, 1) != SPI_OK_SELECT)
		elog(ERROR, "tenant registry lookup failed");
	entry->found = (SPI_processed > 0);
	if (entry->found)
	{
		HeapTuple	row = SPI_tuptable->vals[0];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		char	   *status = SPI_getvalue(row, desc, 3);
		char	   *home = SPI_getvalue(row, desc, 4);

		strlcpy(entry->key, SPI_getvalue(row, desc, 1), sizeof(entry->key));
		strlcpy(entry->slug, SPI_getvalue(row, desc, 2), sizeof(entry->slug));
		entry->status = (status != NULL && strcmp(status, "active") == 0) ? 'a' : 's';
		strlcpy(entry->home, home != NULL ? home : "", sizeof(entry->home));
	}
	SPI_finish();
	AtEOXact_GUC(true, save_nestlevel);
	SetUserIdAndSecContext(save_userid, save_sec);
}

static bool registry_lookup_kind(const char *tenant, char kind,
								 char *key_out, char *slug_out, char *status_out,
								 char *home_out);

/*
 * Look a tenant up by canonical key or by slug.  Returns whether it exists;
 * if so, fills key_out, slug_out (TENANT_KEY_MAXLEN + 1 bytes each) and
 * *status_out ('a' or 's').
 */
bool
registry_lookup(const char *tenant, bool by_slug,
				char *key_out, char *slug_out, char *status_out)
{
	return registry_lookup_kind(tenant, by_slug ? 's' : 'k', key_out, slug_out, status_out, NULL);
}

/*
 * The home label of a tenant (by canonical key) moved to another database
 * (tenancy.tenant_homes, src/move.sql) into home_out (NAMEDATALEN bytes);
 * false when it has not moved or is unknown.
 */
bool
registry_tenant_home(const char *key, char *home_out)
{
	char		key_out[TENANT_KEY_MAXLEN + 1];
	char		slug[TENANT_KEY_MAXLEN + 1];
	char		status;

	if (!registry_lookup_kind(key, 'k', key_out, slug, &status, home_out))
		return false;
	return home_out[0] != '\0';
}

static bool
registry_lookup_kind(const char *tenant, char kind,
					 char *key_out, char *slug_out, char *status_out,
					 char *home_out)
{
	char		lookup[TENANT_KEY_MAXLEN + 2];
	RegistryCacheEntry *entry;
	RegistryCacheEntry fetched;
	bool		present;

	if (!registry_valid || hash_get_num_entries(registry_cache) >= REGISTRY_CACHE_MAX)
		registry_reset();
	if (kind == 'k' && registry_key_type != tenant_key_type_oid((TenantKeyType) tenancy_tenant_type))
		ereport(ERROR,
				(errcode(ERRCODE_DATATYPE_MISMATCH),
				 errmsg("tenant registry keys are of type %s but tenancy.tenant_type is %s",
						format_type_be(registry_key_type),
						tenant_key_type_name((TenantKeyType) tenancy_tenant_type)),
				 errhint("Set tenancy.tenant_type to the type of tenancy.tenants.id.")));

	lookup[0] = kind;
	strlcpy(lookup + 1, tenant, sizeof(lookup) - 1);
	entry = hash_search(registry_cache, lookup, HASH_FIND, NULL);
	if (entry == NULL)
	{
		uint64		invalidations = registry_invalidations;

		memset(&fetched, 0, sizeof(fetched));
		registry_fetch(tenant, kind, &fetched);
		if (registry_invalidations != invalidations)
		{
			/*
			 * The registry changed while we read it: answer from what we
			 * read (as fresh as a lookup can be), but do not keep it; the
			 * next lookup starts afresh.
			 */
			entry = &fetched;
		}
		else
		{
			entry = hash_search(registry_cache, lookup, HASH_ENTER, &present);
			memcpy(entry->key, fetched.key, sizeof(entry->key));
			memcpy(entry->slug, fetched.slug, sizeof(entry->slug));
			entry->found = fetched.found;
			entry->status = fetched.status;
			memcpy(entry->home, fetched.home, sizeof(entry->home));
		}
	}
	if (!entry->found)
		return false;
	strlcpy(key_out, entry->key, TENANT_KEY_MAXLEN + 1);
	strlcpy(slug_out, entry->slug, TENANT_KEY_MAXLEN + 1);
	*status_out = entry->status;
	if (home_out != NULL)
		strlcpy(home_out, entry->home, NAMEDATALEN);
	return true;
}

/*
 * The copy of the coordinator's implicit tenant on a Citus worker into
 * key_out; false when there is none (always, on the coordinator and on one
 * node, where the table is empty).  Read as the table's owner, with
 * search_path pinned, as the registry is.
 */
static bool
implicit_copy_lookup(char *key_out)
{
	if (!implicit_copy_valid)
	{
		Oid			nsp = get_namespace_oid("tenancy", true);
		Oid			relid = OidIsValid(nsp) ? get_relname_relid("citus_implicit_tenant", nsp) : InvalidOid;
		Oid			owner;
		Oid			save_userid;
		int			save_sec;
		int			save_nestlevel;
		HeapTuple	tup;
		bool		found = false;
		uint64		invalidations = implicit_copy_invalidations;

		if (!OidIsValid(relid))
			return false;		/* a version without it: nothing cached */
		tup = SearchSysCache1(RELOID, ObjectIdGetDatum(relid));
		if (!HeapTupleIsValid(tup))
			elog(ERROR, "cache lookup failed for relation %u", relid);
		owner = ((Form_pg_class) GETSTRUCT(tup))->relowner;
		ReleaseSysCache(tup);

		implicit_copy_relid = relid;
		GetUserIdAndSecContext(&save_userid, &save_sec);
		SetUserIdAndSecContext(owner,
							   save_sec | SECURITY_LOCAL_USERID_CHANGE | SECURITY_RESTRICTED_OPERATION);
		save_nestlevel = NewGUCNestLevel();
		(void) set_config_option("search_path", "pg_catalog, pg_temp",
								 PGC_USERSET, PGC_S_SESSION,
								 GUC_ACTION_SAVE, true, 0, false);
		if (SPI_connect() != SPI_OK_CONNECT)
			elog(ERROR, "SPI_connect failed");
		if (SPI_execute("SELECT c.tenant FROM tenancy.citus_implicit_tenant c", true, 1) != SPI_OK_SELECT)
			elog(ERROR, "reading tenancy.citus_implicit_tenant failed");
		if (SPI_processed > 0)
		{
			char	   *k = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1);

			if (k != NULL)
			{
				strlcpy(implicit_copy_key, k, sizeof(implicit_copy_key));
				found = true;
			}
		}
		SPI_finish();
		AtEOXact_GUC(true, save_nestlevel);
		SetUserIdAndSecContext(save_userid, save_sec);
		implicit_copy_found = found;
		/* kept unless the table changed while it was read */
		implicit_copy_valid = (invalidations == implicit_copy_invalidations);
	}
	if (!implicit_copy_found)
		return false;
	strlcpy(key_out, implicit_copy_key, TENANT_KEY_MAXLEN + 1);
	return true;
}

/*
 * Is the current tenant the implicit tenant?  The migrating-mode policies
 * ask, once per statement, before an UPDATE or DELETE may reach a row whose
 * tenant is still NULL.  Answered from the cache (as the registry's owner
 * when it must read the registry), so no role needs a privilege on it.
 */
PG_FUNCTION_INFO_V1(tenancy_is_implicit_tenant);
Datum
tenancy_is_implicit_tenant(PG_FUNCTION_ARGS)
{
	const TenantKey *key = tenant_context_peek();
	char		implicit[TENANT_KEY_MAXLEN + 1];
	char		slug[TENANT_KEY_MAXLEN + 1];
	char		status;

	if (key == NULL)
		PG_RETURN_BOOL(false);
	/* On a Citus worker, the coordinator's copy (citus_context.sql). */
	if (!registry_lookup_kind("", 'i', implicit, slug, &status, NULL) &&
		!implicit_copy_lookup(implicit))
		PG_RETURN_BOOL(false);
	PG_RETURN_BOOL(strcmp(implicit, key->text) == 0);
}

/* The implicit tenant's key into key_out; false when none is set. */
bool
registry_implicit_key(char *key_out)
{
	char		slug[TENANT_KEY_MAXLEN + 1];
	char		status;

	return registry_lookup_kind("", 'i', key_out, slug, &status, NULL);
}

/* Statement trigger on tenancy.tenants: tell every backend to forget. */
PG_FUNCTION_INFO_V1(tenancy_registry_changed);
Datum
tenancy_registry_changed(PG_FUNCTION_ARGS)
{
	TriggerData *trigdata = (TriggerData *) fcinfo->context;

	if (!CALLED_AS_TRIGGER(fcinfo))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("tenancy.registry_changed() must be called as a trigger")));
	CacheInvalidateRelcacheByRelid(RelationGetRelid(trigdata->tg_relation));
	return PointerGetDatum(NULL);
}

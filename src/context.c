/*-------------------------------------------------------------------------
 * context.c
 *	  The current tenant: GUC hooks, typed accessors, set_tenant(),
 *	  clear_tenant(), and the guard against session-level tenants.
 *
 * tenancy.tenant_id is parsed once, in its check hook, into a TenantKey
 * kept as the GUC's "extra"; the GUC machinery restores the right extra on
 * RESET, DISCARD ALL, ROLLBACK and savepoint rollback, so the accessors
 * just read the cached key.
 *-------------------------------------------------------------------------
 */
#include "tenancy.h"
#include "citus_context.h"

#include "access/heapam.h"
#include "access/htup_details.h"
#include "access/parallel.h"
#include "access/table.h"
#include "access/tableam.h"
#include "access/xact.h"
#include "access/genam.h"
#include "catalog/namespace.h"
#include "catalog/pg_db_role_setting.h"
#include "utils/array.h"
#include "utils/fmgroids.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "utils/builtins.h"
#include "utils/guc_tables.h"
#include "utils/hsearch.h"
#include "utils/inval.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"

/*
 * The GUC's extra: the parsed key, and whether it came by a route that
 * tenancy.context_source = token admits (the extension's own setter, a
 * superuser, a parallel worker restoring its leader, a role's binding).  A
 * key admitted only under "any" (e.g. a role default applied at login
 * before a later default turned token mode on) counts as unset while token
 * mode is in force: fail closed.
 */
typedef struct TenantExtra
{
	TenantKey	key;			/* first: current_key points here */
	bool		admitted;
} TenantExtra;

/* The key the GUC currently holds (its extra), or NULL when unset. */
static const TenantKey *current_key = NULL;
static bool current_admitted = true;

/* Bumped whenever the key or its type changes; keys per-call caches. */
static uint64 tenant_generation = 1;

/* Set when the tenant GUC was assigned from SQL in this transaction. */
static bool tenant_set_in_xact = false;

/*
 * A parallel worker restores the leader's settings in name order, so
 * tenancy.tenant_id arrives before tenancy.tenant_type, while the worker
 * still has the default key type.  The leader has already checked the key
 * under its own type: the worker takes the value as it comes and parses it
 * again when the key type is restored (tenancy_assign_tenant_type), into
 * this backend-local key.
 */
static TenantKey worker_key;

static void worker_reparse_key(TenantKeyType type);

static void session_guard_callback(XactEvent event, void *arg);
static void binding_relcache_callback(Datum arg, Oid relid);

/* Per-call-site cache of the accessor's result, in the query's memory. */
typedef struct AccessorCache
{
	uint64		generation;
	Datum		value;			/* current_tenant_text() */
	int64		i64;			/* current_tenant_bigint() */
	pg_uuid_t	uuid;			/* current_tenant() */
} AccessorCache;

/* GUC variables */
int			tenancy_context_source = CONTEXT_SOURCE_ANY;
bool		tenancy_require_tenant = false;
bool		tenancy_validate_tenant = true;
bool		tenancy_allow_session_tenant = true;
char	   *tenancy_tenant_id = NULL;

/*
 * Set by the extension's own verified setter (set_tenant_token()) around its
 * set_config_option() call: the one route token mode lets through.
 */
bool		tenancy_trusted_setter = false;

static const struct config_enum_entry context_source_options[] = {
	{"any", CONTEXT_SOURCE_ANY, false},
	{"token", CONTEXT_SOURCE_TOKEN, false},
	{NULL, 0, false}
};

static void assign_context_source(int newval, void *extra);

/* ---- role bindings (tenancy.role_bindings), cached per backend ---- */

/* Cache entries beyond this many make the cache start afresh. */
#define BINDING_CACHE_MAX 1000

typedef struct BindingCacheEntry
{
	Oid			role;			/* hash key */
	bool		bound;
	char		key[TENANT_KEY_MAXLEN + 1];
} BindingCacheEntry;

static HTAB *binding_cache = NULL;
static bool binding_valid = false;
static Oid	binding_relid = InvalidOid;

/*
 * Defines the context settings.  Called after tenancy_tenant_key_init():
 * tenancy.tenant_id is validated against tenancy.tenant_type.
 */
void
tenancy_context_init(void)
{
	/* Before tenancy.tenant_id, whose check hook reads it. */
	DefineCustomEnumVariable("tenancy.context_source",
							 "Which routes may set tenancy.tenant_id for roles that are not superusers.",
							 "any: every route (SET, set_config(), set_tenant(), defaults, connection options); "
							 "token: only a verified tenant token, a role's binding, or clearing.",
							 &tenancy_context_source,
							 CONTEXT_SOURCE_ANY,
							 context_source_options,
							 PGC_SUSET,
							 0,
							 NULL, assign_context_source, NULL);

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

	RegisterXactCallback(session_guard_callback, NULL);
	tenancy_register_relcache_callback(binding_relcache_callback, (Datum) 0);
}

static void
assign_context_source(int newval, void *extra)
{
	tenant_generation++;		/* the accessors' caches depend on it */
	tenant_plans_invalidate();	/* plans made for a tenant: prune.c */
	rollout_tenant_changed(false);
	held_cursors_tenant_changed();	/* cursors WITH HOLD: rls_guard.c */
}

static void
binding_relcache_callback(Datum arg, Oid relid)
{
	/* Not installed yet: any new relation may be the bindings table. */
	if (relid == InvalidOid || relid == binding_relid || !OidIsValid(binding_relid))
		binding_valid = false;
}

/*
 * Read the binding of a role from tenancy.role_bindings (role regrole,
 * tenant text: columns 1 and 2), directly from the heap with a fresh
 * snapshot: no executor, no privilege check, no search_path.  Not bound
 * when the extension is not installed in this database.
 */
static void
binding_fetch(Oid role, BindingCacheEntry *entry)
{
	Relation	rel;
	TableScanDesc scan;
	Snapshot	snap;
	HeapTuple	tup;

	entry->bound = false;
	if (!OidIsValid(binding_relid))
		return;
	rel = table_open(binding_relid, AccessShareLock);
	snap = RegisterSnapshot(GetLatestSnapshot());
	scan = table_beginscan(rel, snap, 0, NULL);
	while ((tup = heap_getnext(scan, ForwardScanDirection)) != NULL)
	{
		bool		isnull;
		Datum		d;

		CHECK_FOR_INTERRUPTS();
		d = heap_getattr(tup, 1, RelationGetDescr(rel), &isnull);
		if (isnull || DatumGetObjectId(d) != role)
			continue;
		d = heap_getattr(tup, 2, RelationGetDescr(rel), &isnull);
		if (isnull)
			continue;
		entry->bound = true;
		text_to_cstring_buffer(DatumGetTextPP(d), entry->key, sizeof(entry->key));
		break;
	}
	table_endscan(scan);
	UnregisterSnapshot(snap);
	table_close(rel, AccessShareLock);
}

/* The tenant key a role is bound to in this database, or NULL. */
static const char *
binding_of(Oid role)
{
	BindingCacheEntry *entry;
	bool		found;

	if (!binding_valid || binding_cache == NULL ||
		hash_get_num_entries(binding_cache) >= BINDING_CACHE_MAX)
	{
		HASHCTL		ctl;
		Oid			nsp;

		if (binding_cache != NULL)
			hash_destroy(binding_cache);
		binding_cache = NULL;
		/* Valid from here: an invalidation during the lookups resets it. */
		binding_valid = true;
		nsp = get_namespace_oid("tenancy", true);
		binding_relid = OidIsValid(nsp) ? get_relname_relid("role_bindings", nsp) : InvalidOid;
		memset(&ctl, 0, sizeof(ctl));
		ctl.keysize = sizeof(Oid);
		ctl.entrysize = sizeof(BindingCacheEntry);
		ctl.hcxt = TopMemoryContext;
		binding_cache = hash_create("tenancy role binding cache", 16, &ctl,
									HASH_ELEM | HASH_BLOBS | HASH_CONTEXT);
	}
	entry = hash_search(binding_cache, &role, HASH_ENTER, &found);
	if (!found)
	{
		PG_TRY();
		{
			binding_fetch(role, entry);
		}
		PG_CATCH();
		{
			hash_search(binding_cache, &role, HASH_REMOVE, NULL);
			PG_RE_THROW();
		}
		PG_END_TRY();
	}
	return entry->bound ? entry->key : NULL;
}

/*
 * The binding that holds for this session: of the current role outside any
 * security-definer function (SET ROLE), else of the session's login role.
 */
static const char *
session_binding(Oid *role)
{
	const char *key;

	*role = GetOuterUserId();
	key = binding_of(*role);
	if (key == NULL && GetSessionUserId() != *role)
	{
		*role = GetSessionUserId();
		key = binding_of(*role);
	}
	return key;
}

/*
 * tenancy.context_source as pg_db_role_setting stores it for (db, role):
 * CONTEXT_SOURCE_ANY or _TOKEN, or -1 when not set there.
 */
static int
stored_context_source(Relation rel, Snapshot snap, Oid db, Oid role)
{
	static const char prefix[] = "tenancy.context_source=";
	ScanKeyData keys[2];
	SysScanDesc scan;
	HeapTuple	tup;
	int			mode = -1;

	ScanKeyInit(&keys[0], Anum_pg_db_role_setting_setdatabase,
				BTEqualStrategyNumber, F_OIDEQ, ObjectIdGetDatum(db));
	ScanKeyInit(&keys[1], Anum_pg_db_role_setting_setrole,
				BTEqualStrategyNumber, F_OIDEQ, ObjectIdGetDatum(role));
	scan = systable_beginscan(rel, DbRoleSettingDatidRolidIndexId, true, snap, 2, keys);
	tup = systable_getnext(scan);
	if (HeapTupleIsValid(tup))
	{
		bool		isnull;
		Datum		d = heap_getattr(tup, Anum_pg_db_role_setting_setconfig,
									 RelationGetDescr(rel), &isnull);

		if (!isnull)
		{
			Datum	   *elems;
			bool	   *nulls;
			int			n;

			deconstruct_array(DatumGetArrayTypeP(d), TEXTOID, -1, false,
							  TYPALIGN_INT, &elems, &nulls, &n);
			for (int i = 0; i < n; i++)
			{
				char	   *item;

				CHECK_FOR_INTERRUPTS();
				if (nulls[i])
					continue;
				item = TextDatumGetCString(elems[i]);
				if (strncmp(item, prefix, sizeof(prefix) - 1) == 0)
					mode = pg_strcasecmp(item + sizeof(prefix) - 1, "token") == 0
						? CONTEXT_SOURCE_TOKEN : CONTEXT_SOURCE_ANY;
			}
		}
	}
	systable_endscan(scan);
	return mode;
}

/*
 * The mode this session will have once login is complete.  Connection
 * options are applied first, then the role-and-database, role, database
 * and all-roles defaults (process_settings()): a tenant may arrive before a
 * later default turns token mode on, so read the defaults that will apply,
 * highest priority first, as process_settings() does; none set: the mode
 * in force now (the server's configuration).
 */
static int
login_context_source(void)
{
	Relation	rel;
	Snapshot	snap;
	Oid			role = GetSessionUserId();
	int			mode = -1;

	rel = table_open(DbRoleSettingRelationId, AccessShareLock);
	snap = RegisterSnapshot(GetCatalogSnapshot(DbRoleSettingRelationId));
	mode = stored_context_source(rel, snap, MyDatabaseId, role);
	if (mode < 0)
		mode = stored_context_source(rel, snap, InvalidOid, role);
	if (mode < 0)
		mode = stored_context_source(rel, snap, MyDatabaseId, InvalidOid);
	if (mode < 0)
		mode = stored_context_source(rel, snap, InvalidOid, InvalidOid);
	UnregisterSnapshot(snap);
	table_close(rel, AccessShareLock);
	return mode < 0 ? tenancy_context_source : mode;
}

/*
 * Who may set the tenant (value: the canonical key, or "" to clear).  For
 * roles that are not superusers (the current role outside security-definer
 * functions): a role bound to a tenant (bind_role())
 * gets that tenant and no other, and cannot clear it, in either mode; with
 * tenancy.context_source = token any other key is refused, except from the
 * extension's own setter and from a parallel worker restoring its leader.
 * Settings from the server's configuration (sources below PGC_S_GLOBAL) are
 * the superuser's.  Role and database defaults arrive at login with elevel
 * WARNING: a refusal there is a warning, and the default is ignored.
 * Validation alone (PGC_S_TEST: ALTER ROLE ... SET, CREATE FUNCTION ...
 * SET) refuses a bound role's other tenant, so that it cannot rebind itself.
 */
static bool
tenant_source_allowed(const char *value, GucSource source, bool *admitted)
{
	const char *bound;
	Oid			role;

	*admitted = true;
	if (tenancy_trusted_setter || InitializingParallelWorker || source < PGC_S_GLOBAL)
		return true;
	if (IsTransactionState())
	{
		/*
		 * The role outside any security-definer function: set_tenant_as()
		 * runs as the extension's owner, the caller still decides.
		 */
		if (superuser_arg(GetOuterUserId()))
			return true;
		bound = session_binding(&role);
		if (bound != NULL)
		{
			if (strcmp(value, bound) == 0)
				return true;
			GUC_check_errcode(ERRCODE_INSUFFICIENT_PRIVILEGE);
			GUC_check_errmsg("role \"%s\" is bound to tenant \"%s\"",
							 GetUserNameFromId(role, false), bound);
			GUC_check_errdetail("A role bound with tenancy.bind_role() cannot set, clear or rebind its own tenant.");
			GUC_check_errhint("A superuser can change the binding with tenancy.bind_role() or tenancy.unbind_role().");
			return false;
		}
	}
	if (value[0] == '\0')
		return true;			/* clearing is always allowed */
	/* A Citus worker: the tenant of the token forwarded with it. */
	if (citus_context_token_admits(value))
		return true;
	*admitted = false;
	if (source == PGC_S_TEST)
		return true;
	if (tenancy_context_source != CONTEXT_SOURCE_TOKEN)
	{
		/* At login (these sources), the mode the defaults will give. */
		if (source > PGC_S_CLIENT || !IsTransactionState() ||
			login_context_source() != CONTEXT_SOURCE_TOKEN)
			return true;
	}
	GUC_check_errcode(ERRCODE_INSUFFICIENT_PRIVILEGE);
	GUC_check_errmsg("only a verified tenant token can set the tenant");
	GUC_check_errdetail("tenancy.context_source is token: SET, set_config(), tenancy.set_tenant(), function SET clauses, connection options and role or database defaults cannot set tenancy.tenant_id.");
	GUC_check_errhint("Call tenancy.set_tenant_token() with a signed token.");
	return false;
}

/*
 * The tenant cannot change while a query over row-secured tables runs, or
 * while one the executor guard cannot track is open (rls_guard.c).  Setting
 * the key already current is no change; validation alone (ALTER ROLE ...
 * SET) changes nothing.
 */
static bool
tenant_switch_allowed(const TenantKey *key, GucSource source)
{
	const char *reason;
	const char *detail;

	if (likely(!tenant_switch_refused(&reason, &detail)) || source == PGC_S_TEST)
		return true;
	if (key == NULL ? current_key == NULL
		: (current_key != NULL && current_key->type == key->type &&
		   strcmp(current_key->text, key->text) == 0))
		return true;
	GUC_check_errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE);
	GUC_check_errmsg("%s", reason);
	GUC_check_errdetail("%s", detail);
	GUC_check_errhint("Set the tenant before the statement (at the start of the transaction), and close cursors before switching.");
	return false;
}

bool
tenancy_check_tenant_id(char **newval, void **extra, GucSource source)
{
	TenantKey	key;
	TenantExtra *copy;
	const char *detail;
	bool		admitted;

	if (source == PGC_S_SESSION)
		tenant_set_in_xact = true;	/* for the session guard */
	if (*newval == NULL || (*newval)[0] == '\0')
	{
		bool		admitted;

		if (!tenant_source_allowed("", source, &admitted))
			return false;
		return tenant_switch_allowed(NULL, source);	/* unset: no extra */
	}

	if (!tenant_key_parse(*newval, (TenantKeyType) tenancy_tenant_type, &key, &detail))
	{
		/*
		 * The leader's value, valid under the leader's key type, which is
		 * restored after it: no key until then (see worker_key).
		 */
		if (InitializingParallelWorker)
			return true;
		GUC_check_errcode(ERRCODE_INVALID_TEXT_REPRESENTATION);
		GUC_check_errmsg("invalid tenant key \"%s\" for key type %s",
						 *newval, tenant_key_type_name((TenantKeyType) tenancy_tenant_type));
		GUC_check_errdetail("%s", detail);
		return false;
	}
	if (!tenant_source_allowed(key.text, source, &admitted))
		return false;
	if (!tenant_switch_allowed(&key, source))
		return false;

	copy = tenancy_guc_malloc(sizeof(TenantExtra));
	if (copy == NULL)
		return false;
	memcpy(&copy->key, &key, sizeof(TenantKey));
	copy->admitted = admitted;

	/*
	 * Store the canonical spelling, so SHOW and GUC_REPORT agree with it;
	 * not in a parallel worker, which keeps the leader's spelling to parse
	 * it again under the leader's key type.
	 */
	if (strcmp(key.text, *newval) != 0 && !InitializingParallelWorker)
	{
		char	   *canon = tenancy_guc_strdup(key.text);

		if (canon == NULL)
		{
			tenancy_guc_free(copy);
			return false;
		}
		tenancy_guc_free(*newval);
		*newval = canon;
	}
	*extra = copy;
	return true;
}

void
tenancy_assign_tenant_id(const char *newval, void *extra)
{
	current_key = extra != NULL ? &((const TenantExtra *) extra)->key : NULL;
	current_admitted = extra == NULL || ((const TenantExtra *) extra)->admitted;
	tenant_generation++;
	tenant_plans_invalidate();	/* plans made for a tenant: prune.c */
	rollout_tenant_changed(true);	/* plans folded for another mode */
	held_cursors_tenant_changed();	/* cursors WITH HOLD: rls_guard.c */
}

void
tenancy_assign_tenant_type(int newval, void *extra)
{
	tenant_generation++;
	tenant_plans_invalidate();	/* plans made for a tenant: prune.c */
	rollout_tenant_changed(false);
	held_cursors_tenant_changed();	/* cursors WITH HOLD: rls_guard.c */
	if (InitializingParallelWorker)
		worker_reparse_key((TenantKeyType) newval);
}

/*
 * In a parallel worker being set up, parse the leader's key again under the
 * key type just restored (the variable still holds the previous type).  A
 * key that does not parse under it stays unset: fail closed.
 */
static void
worker_reparse_key(TenantKeyType type)
{
	const char *detail;

	if (tenancy_tenant_id == NULL || tenancy_tenant_id[0] == '\0')
		return;
	if (current_key != NULL && current_key->type == type &&
		strcmp(current_key->text, tenancy_tenant_id) == 0)
		return;
	if (tenant_key_parse(tenancy_tenant_id, type, &worker_key, &detail))
		current_key = &worker_key;
	else
		current_key = NULL;
}

/*
 * The current key, or NULL when none is set.  A key parsed under another
 * key type than the one now in force counts as unset (fail closed).  Never
 * raises: for shadow mode and the executor guard, which refuse nothing.
 */
const TenantKey *
tenant_context_peek(void)
{
	const TenantKey *key = current_key;

	if (key != NULL && key->type != (TenantKeyType) tenancy_tenant_type)
		return NULL;
	if (unlikely(!current_admitted) && tenancy_context_source == CONTEXT_SOURCE_TOKEN)
		return NULL;
	return key;
}

/* The same, but with tenancy.require_tenant a missing tenant is an error. */
const TenantKey *
tenant_context_get(void)
{
	const TenantKey *key = tenant_context_peek();

	if (key == NULL && tenancy_require_tenant)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("no tenant is set"),
				 errdetail("tenancy.require_tenant is on."),
				 errhint("Call tenancy.set_tenant() at the start of the transaction.")));
	return key;
}

static const char *
accessor_name(TenantKeyType type)
{
	switch (type)
	{
		case TENANT_KEY_UUID:
			return "tenancy.current_tenant()";
		case TENANT_KEY_BIGINT:
			return "tenancy.current_tenant_bigint()";
		case TENANT_KEY_TEXT:
			return "tenancy.current_tenant_text()";
	}
	return "?";
}

static void
check_accessor_type(TenantKeyType want)
{
	TenantKeyType have = (TenantKeyType) tenancy_tenant_type;

	if (have != want)
		ereport(ERROR,
				(errcode(ERRCODE_DATATYPE_MISMATCH),
				 errmsg("tenant keys are of type %s, not %s",
						tenant_key_type_name(have), tenant_key_type_name(want)),
				 errhint("Use %s, or change tenancy.tenant_type.", accessor_name(have))));
}

/*
 * The call site's cache, renewed when the tenant changed since last call.
 * It is only filled once the accessor has passed every check (accessor of
 * the key type in force, a key set and parsed under that type); the
 * generation is bumped by any change of the key or of the key type, so a
 * cache of the current generation can be returned without checking again.
 */
static AccessorCache *
accessor_cache(FunctionCallInfo fcinfo, bool *fresh)
{
	AccessorCache *cache = NULL;

	if (fcinfo->flinfo != NULL)
		cache = (AccessorCache *) fcinfo->flinfo->fn_extra;
	*fresh = (cache == NULL || cache->generation != tenant_generation);
	if (*fresh)
	{
		/* A new chunk: a value handed out earlier stays valid. */
		cache = fcinfo->flinfo != NULL
			? MemoryContextAlloc(fcinfo->flinfo->fn_mcxt, sizeof(AccessorCache))
			: palloc(sizeof(AccessorCache));
		cache->generation = tenant_generation;
		if (fcinfo->flinfo != NULL)
			fcinfo->flinfo->fn_extra = cache;
	}
	return cache;
}

/*
 * The accessors are split in two.  The SQL-callable function is the per-row
 * fast path: it returns the call site's cache when that holds the key of the
 * current generation, and has no locals, so it compiles to a handful of
 * instructions without stack protector or saved registers.  This is all a
 * query pays per row once its first row has been evaluated (an RLS policy or
 * a WHERE clause calls the accessor for every row of a sequential scan).
 * Everything else (type checks, require_tenant, filling the cache) is in the
 * out-of-line slow path.
 */
static inline AccessorCache *
accessor_cache_current(FunctionCallInfo fcinfo)
{
	AccessorCache *cache;

	if (unlikely(fcinfo->flinfo == NULL))
		return NULL;
	cache = (AccessorCache *) fcinfo->flinfo->fn_extra;
	if (likely(cache != NULL && cache->generation == tenant_generation))
		return cache;
	return NULL;
}

static pg_noinline Datum
current_tenant_slow(FunctionCallInfo fcinfo)
{
	const TenantKey *key;
	AccessorCache *cache;
	bool		fresh;

	check_accessor_type(TENANT_KEY_UUID);
	key = tenant_context_get();
	if (key == NULL)
		PG_RETURN_NULL();
	cache = accessor_cache(fcinfo, &fresh);
	if (fresh)
		cache->uuid = key->uuid;
	PG_RETURN_UUID_P(&cache->uuid);
}

PG_FUNCTION_INFO_V1(tenancy_current_tenant);
Datum
tenancy_current_tenant(PG_FUNCTION_ARGS)
{
	AccessorCache *cache = accessor_cache_current(fcinfo);

	if (likely(cache != NULL))
		PG_RETURN_UUID_P(&cache->uuid);
	return current_tenant_slow(fcinfo);
}

static pg_noinline Datum
current_tenant_bigint_slow(FunctionCallInfo fcinfo)
{
	const TenantKey *key;
	AccessorCache *cache;
	bool		fresh;

	check_accessor_type(TENANT_KEY_BIGINT);
	key = tenant_context_get();
	if (key == NULL)
		PG_RETURN_NULL();
	cache = accessor_cache(fcinfo, &fresh);
	if (fresh)
		cache->i64 = key->i64;
	PG_RETURN_INT64(cache->i64);
}

PG_FUNCTION_INFO_V1(tenancy_current_tenant_bigint);
Datum
tenancy_current_tenant_bigint(PG_FUNCTION_ARGS)
{
	AccessorCache *cache = accessor_cache_current(fcinfo);

	if (likely(cache != NULL))
		PG_RETURN_INT64(cache->i64);
	return current_tenant_bigint_slow(fcinfo);
}

static pg_noinline Datum
current_tenant_text_slow(FunctionCallInfo fcinfo)
{
	const TenantKey *key;
	AccessorCache *cache;
	bool		fresh;

	key = tenant_context_get();
	if (key == NULL)
		PG_RETURN_NULL();
	cache = accessor_cache(fcinfo, &fresh);
	if (fresh)
	{
		MemoryContext old = MemoryContextSwitchTo(GetMemoryChunkContext(cache));

		cache->value = PointerGetDatum(cstring_to_text(key->text));
		MemoryContextSwitchTo(old);
	}
	PG_RETURN_DATUM(cache->value);
}

/* The canonical text of the key, whatever the key type. */
PG_FUNCTION_INFO_V1(tenancy_current_tenant_text);
Datum
tenancy_current_tenant_text(PG_FUNCTION_ARGS)
{
	AccessorCache *cache = accessor_cache_current(fcinfo);

	if (likely(cache != NULL))
		PG_RETURN_DATUM(cache->value);
	return current_tenant_text_slow(fcinfo);
}

PG_FUNCTION_INFO_V1(tenancy_key_type);
Datum
tenancy_key_type(PG_FUNCTION_ARGS)
{
	PG_RETURN_OID(tenant_key_type_oid((TenantKeyType) tenancy_tenant_type));
}

/* Canonical text of a key of the current type, or 22P02. */
PG_FUNCTION_INFO_V1(tenancy_normalize_key);
Datum
tenancy_normalize_key(PG_FUNCTION_ARGS)
{
	char	   *input = text_to_cstring(PG_GETARG_TEXT_PP(0));
	TenantKey	key;
	const char *detail;

	if (!tenant_key_parse(input, (TenantKeyType) tenancy_tenant_type, &key, &detail))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_TEXT_REPRESENTATION),
				 errmsg("invalid tenant key \"%s\" for key type %s",
						input, tenant_key_type_name((TenantKeyType) tenancy_tenant_type)),
				 errdetail("%s", detail)));
	PG_RETURN_TEXT_P(cstring_to_text(key.text));
}

/* Slugs: lower case letters, digits and inner hyphens, at most 63 bytes. */
static bool
slug_is_valid(const char *s)
{
	size_t		len = strlen(s);

	if (len == 0 || len > 63 || s[0] == '-' || s[len - 1] == '-')
		return false;
	for (const char *p = s; *p; p++)
		if (!((*p >= 'a' && *p <= 'z') || (*p >= '0' && *p <= '9') || *p == '-'))
			return false;
	return true;
}

/*
 * Resolve a key or a slug to a canonical key in key_out.  With validation
 * on, the tenant must exist and be active; with it off, any well-formed key
 * is taken as it is and only slugs are looked up.
 */
static void
resolve_tenant(const char *input, char *key_out)
{
	TenantKey	key;
	const char *detail;
	char		slug[TENANT_KEY_MAXLEN + 1];
	char		status = 'a';
	bool		parsed;
	bool		found = false;

	parsed = tenant_key_parse(input, (TenantKeyType) tenancy_tenant_type, &key, &detail);
	/* Key-shaped input names a key, never a slug (create_tenant() refuses those). */
	if (!parsed && tenant_key_shaped(input, (TenantKeyType) tenancy_tenant_type))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_TEXT_REPRESENTATION),
				 errmsg("invalid tenant key \"%s\" for key type %s",
						input, tenant_key_type_name((TenantKeyType) tenancy_tenant_type)),
				 errdetail("%s", detail),
				 errhint("Pass a tenant key of type %s or a tenant slug.",
						 tenant_key_type_name((TenantKeyType) tenancy_tenant_type))));
	if (parsed && !tenancy_validate_tenant)
	{
		strlcpy(key_out, key.text, TENANT_KEY_MAXLEN + 1);
		return;
	}
	if (parsed)
		found = registry_lookup(key.text, false, key_out, slug, &status);
	if (!found && slug_is_valid(input))
		found = registry_lookup(input, true, key_out, slug, &status);
	if (!found)
	{
		if (!parsed && !slug_is_valid(input))
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_TEXT_REPRESENTATION),
					 errmsg("invalid tenant key or slug \"%s\"", input),
					 errdetail("%s", detail),
					 errhint("Pass a tenant key of type %s or a tenant slug.",
							 tenant_key_type_name((TenantKeyType) tenancy_tenant_type))));
		tenancy_count(TENANCY_REFUSED_UNKNOWN);
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("tenant \"%s\" does not exist", input),
				 errhint("Register it with tenancy.create_tenant().")));
	}
	if (status != 'a' && tenancy_validate_tenant)
	{
		char		home[NAMEDATALEN];

		tenancy_count(TENANCY_REFUSED_SUSPENDED);
		if (registry_tenant_home(key_out, home))
			ereport(ERROR,
					(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
					 errmsg("tenant \"%s\" has moved to another database", slug),
					 errdetail("Its rows are no longer served here (tenancy.move_cutover())."),
					 errhint("Its new home is \"%s\": connect there and set the tenant again.", home)));
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("tenant \"%s\" is suspended", slug),
				 errhint("tenancy.activate_tenant() makes it active again.")));
	}
}

static void
set_tenant_guc(const char *value, bool is_local)
{
	(void) set_config_option("tenancy.tenant_id", value,
							 superuser() ? PGC_SUSET : PGC_USERSET,
							 PGC_S_SESSION,
							 is_local ? GUC_ACTION_LOCAL : GUC_ACTION_SET,
							 true, 0, false);
	/* On a Citus cluster, to the workers too (citus_context.c). */
	if (citus_context_loaded())
		citus_context_forward_tenant(value);
}

PG_FUNCTION_INFO_V1(tenancy_set_tenant);
Datum
tenancy_set_tenant(PG_FUNCTION_ARGS)
{
	bool		is_local = PG_ARGISNULL(1) ? true : PG_GETARG_BOOL(1);
	char	   *input;
	char		key[TENANT_KEY_MAXLEN + 1];

	if (PG_ARGISNULL(0))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("tenant must not be null"),
				 errhint("Use tenancy.clear_tenant() to unset the tenant.")));
	input = text_to_cstring(PG_GETARG_TEXT_PP(0));
	if (input[0] == '\0')
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("tenant must not be empty"),
				 errhint("Use tenancy.clear_tenant() to unset the tenant.")));
	if (!is_local && !tenancy_allow_session_tenant)
	{
		tenancy_count(TENANCY_REFUSED_SESSION);
		ereport(ERROR,
				(errcode(ERRCODE_CANT_CHANGE_RUNTIME_PARAM),
				 errmsg("cannot set the tenant for the session"),
				 errdetail("tenancy.allow_session_tenant is off."),
				 errhint("Set the tenant in each transaction: SELECT tenancy.set_tenant($1).")));
	}

	resolve_tenant(input, key);

	/*
	 * Like SET LOCAL outside a transaction block, warn when the tenant would
	 * be gone at the end of this very statement; not from PL code (a DO
	 * block or a procedure run non-atomically), where it lasts until the
	 * block's end or the next COMMIT.
	 */
	if (is_local && !IsTransactionBlock() && !SPI_inside_nonatomic_context())
		ereport(WARNING,
				(errcode(ERRCODE_NO_ACTIVE_SQL_TRANSACTION),
				 errmsg("tenancy.set_tenant() outside a transaction block sets the tenant for this statement only"),
				 errhint("Call it after BEGIN, or pass is_local => false to set it for the session.")));

	set_tenant_guc(key, is_local);
	tenancy_count(TENANCY_SET_TENANT);
	PG_RETURN_TEXT_P(cstring_to_text(key));
}

/* For the token module: the registry check of set_tenant(). */
void
tenant_context_resolve(const char *input, char *key_out)
{
	resolve_tenant(input, key_out);
}

/* For the token module: set a resolved key, as the trusted setter. */
void
tenant_context_set(const char *key, bool is_local)
{
	tenancy_trusted_setter = true;
	PG_TRY();
	{
		set_tenant_guc(key, is_local);
	}
	PG_FINALLY();
	{
		tenancy_trusted_setter = false;
	}
	PG_END_TRY();
}

/* Unset the tenant, for the transaction and the session. */
PG_FUNCTION_INFO_V1(tenancy_clear_tenant);
Datum
tenancy_clear_tenant(PG_FUNCTION_ARGS)
{
	set_tenant_guc("", false);
	PG_RETURN_VOID();
}

/* Key, slug and status of a tenant named by key or slug; NULL if unknown. */
PG_FUNCTION_INFO_V1(tenancy_lookup_tenant);
Datum
tenancy_lookup_tenant(PG_FUNCTION_ARGS)
{
	char	   *input = text_to_cstring(PG_GETARG_TEXT_PP(0));
	TenantKey	key;
	const char *detail;
	char		key_out[TENANT_KEY_MAXLEN + 1];
	char		slug[TENANT_KEY_MAXLEN + 1];
	char		status;
	bool		found = false;
	TupleDesc	tupdesc;
	Datum		values[3];
	bool		nulls[3] = {false, false, false};

	if (get_call_result_type(fcinfo, NULL, &tupdesc) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "return type must be a row type");
	if (tenant_key_parse(input, (TenantKeyType) tenancy_tenant_type, &key, &detail))
		found = registry_lookup(key.text, false, key_out, slug, &status);
	if (!found && slug_is_valid(input))
		found = registry_lookup(input, true, key_out, slug, &status);
	if (!found)
		PG_RETURN_NULL();
	values[0] = CStringGetTextDatum(key_out);
	values[1] = CStringGetTextDatum(slug);
	values[2] = CStringGetTextDatum(status == 'a' ? "active" : "suspended");
	PG_RETURN_DATUM(HeapTupleGetDatum(heap_form_tuple(BlessTupleDesc(tupdesc), values, nulls)));
}

/* ---- guard against session-level tenants ---- */

static struct config_string *
tenant_guc_record(void)
{
	static struct config_string *record = NULL;

	if (record == NULL)
	{
#if PG_VERSION_NUM >= 160000
		record = (struct config_string *) find_option("tenancy.tenant_id", false, false, ERROR);
#else
		struct config_generic **vars = get_guc_variables();
		int			n = GetNumConfigOptions();

		for (int i = 0; i < n; i++)
		{
			if (strcmp(vars[i]->name, "tenancy.tenant_id") == 0)
			{
				record = (struct config_string *) vars[i];
				break;
			}
		}
		if (record == NULL)
			elog(ERROR, "tenancy.tenant_id is not defined");
#endif
	}
	return record;
}

/*
 * Did the current tenant come from a default (the server's configuration,
 * ALTER DATABASE / ALTER ROLE ... SET, as bind_role() writes) rather than
 * from the client or the session (SET, set_tenant(), connection options)?
 */
bool
tenant_context_is_default(void)
{
	return tenant_guc_record()->gen.source < PGC_S_CLIENT;
}

/*
 * Before commit, refuse a transaction that would leave a session-level
 * tenant behind when tenancy.allow_session_tenant is off.  This catches
 * every way of setting it (SET, set_config(), set_tenant(is_local => false),
 * and clearing it when the session's default is a bound tenant) and lets
 * through SET LOCAL, RESET and DISCARD.
 */
static void
session_guard_callback(XactEvent event, void *arg)
{
	struct config_string *record;
	GucStack   *stack;

	if (event != XACT_EVENT_PRE_COMMIT && event != XACT_EVENT_PRE_PREPARE)
	{
		if (event == XACT_EVENT_COMMIT || event == XACT_EVENT_ABORT ||
			event == XACT_EVENT_PREPARE)
			tenant_set_in_xact = false;
		return;
	}
	if (!tenant_set_in_xact || tenancy_allow_session_tenant)
		return;

	/*
	 * A parallel worker restores the leader's settings, tenant included, as
	 * session-level values, and commits that setup: nothing there outlives
	 * the leader's transaction.
	 */
	if (IsParallelWorker() || InitializingParallelWorker)
		return;

	record = tenant_guc_record();
	for (stack = record->gen.stack; stack != NULL; stack = stack->prev)
	{
		const char *survivor;
		const char *reset = record->reset_val ? record->reset_val : "";

		if (stack->state == GUC_SET)
			survivor = *record->variable;
		else if (stack->state == GUC_SET_LOCAL)
			survivor = stack->masked.val.stringval;
		else
			continue;
		/*
		 * Anything but the session's own default is refused: for a role
		 * bound to a tenant, a cleared tenant would leak as much as another
		 * one (the next client would lose its default).
		 */
		if (strcmp(survivor ? survivor : "", reset) != 0)
		{
			tenancy_count(TENANCY_REFUSED_SESSION);
			ereport(ERROR,
					(errcode(ERRCODE_CANT_CHANGE_RUNTIME_PARAM),
					 errmsg("cannot set the tenant for the session"),
					 errdetail("tenancy.allow_session_tenant is off, and this transaction would leave the session's tenant at \"%s\" instead of its default \"%s\".",
							   survivor ? survivor : "", reset),
					 errhint("Use SET LOCAL or tenancy.set_tenant(), which last one transaction.")));
		}
		break;
	}
}

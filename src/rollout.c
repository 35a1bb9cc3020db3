/*-------------------------------------------------------------------------
 * rollout.c
 *	  Per-tenant rollout: a table's mode (migrating, shadow, enforce) chosen
 *	  per tenant, by an explicit list and by a stable percentage of tenants.
 *
 * A table with a rollout carries a policy whose mode is a marker:
 *
 *	 CASE WHEN tenancy.rollout_mode_is(root, 'shadow')
 *		  THEN tenancy.shadow_read(tbl, col) ELSE col = tenancy.current_tenant() END
 *
 * 1. Folding at plan time.  The planner hook below replaces each marker by
 * the answer for the tenant current when the query is planned, as a call of
 * an immutable function returning that constant, so that the planner's
 * constant folding removes the CASE: an enforced tenant gets the plain
 * equality qual (index scans, the executor's folding in rls_guard.c), a
 * shadow tenant the shadow function, exactly as on a table in one mode.
 *
 * 2. Such a plan is specialised to the current tenant's mode, so it must
 * never run under a tenant whose mode differs.  Every plan holding a folded
 * marker depends on the marker function (the plan cache records it from the
 * rewritten query, and the hook adds it to the plan): when the tenant
 * changes (context.c calls rollout_tenant_changed()), and the new tenant's
 * mode differs for a table a live plan was folded for, those plans are
 * invalidated locally, as a change of the function would: the next
 * execution of a prepared statement or of a PL/pgSQL statement replans.
 * A plan no cache holds (a SQL function plans all its statements before
 * the first runs, so a switch in its body reaches none) carries the modes
 * it was folded for, and executor start refuses it (55000) when the current
 * tenant's mode of one of its tables differs.  A
 * query already started keeps its tenant (the executor guard of
 * rls_guard.c refuses a tenant switch under it).  A change of the rollout
 * invalidates the table's relcache entry, and so every plan over it.
 *
 * 3. The percentage: a tenant is in it when its bucket, the first 32 bits
 * of md5(canonical key text) taken as an unsigned big-endian integer,
 * modulo 10000, is below percent * 100.  It is the same in every backend,
 * after restarts and on every platform, and raising the percentage only
 * adds tenants (tenancy.rollout_bucket() computes it in SQL).
 *
 * The rollout of each table (tenancy.rollouts, tenancy.rollout_tenants and
 * the base mode in tenancy.rls_tables) is read with catalog scans, not as
 * the current user (an application role may not read the lists), and kept
 * per backend until the table's relcache entry is invalidated.
 *-------------------------------------------------------------------------
 */
#include "tenancy.h"

#include "access/genam.h"
#include "access/htup_details.h"
#include "access/table.h"
#include "access/xact.h"
#include "catalog/namespace.h"
#include "catalog/pg_class.h"
#include "catalog/pg_proc.h"
#include "catalog/pg_type.h"
#include "common/md5.h"
#include "executor/executor.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "nodes/nodeFuncs.h"
#include "nodes/plannodes.h"
#include "optimizer/planner.h"
#include "parser/parse_func.h"
#include "utils/acl.h"
#include "utils/builtins.h"
#include "utils/fmgroids.h"
#include "utils/hsearch.h"
#include "utils/inval.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/rel.h"
#include "utils/resowner.h"
#include "utils/syscache.h"

#define ROLLOUT_BUCKETS 10000

/* Modes as one character: 'm'igrating, 's'hadow, 'e'nforce; 0 = none. */
typedef struct RolloutTenant
{
	char		key[TENANT_KEY_MAXLEN + 1];	/* hash key */
	char		mode;
} RolloutTenant;

typedef struct RolloutConf
{
	Oid			relid;			/* hash key: the root table */
	char		base;			/* tenancy.rls_tables.mode; 0 if none */
	int			buckets;		/* tenants whose bucket is below are in pmode */
	char		pmode;
	HTAB	   *tenants;		/* explicit modes; NULL if none */
} RolloutConf;

static HTAB *conf_cache = NULL;
static MemoryContext conf_cxt = NULL;

/* Tables folded into live plans since the last invalidation, and the mode. */
#define FOLDED_MAX 32
typedef struct FoldedTable
{
	Oid			relid;
	char		mode;
} FoldedTable;
static FoldedTable folded[FOLDED_MAX];
static int	folded_used = 0;
static bool folded_overflow = false;
static uint32 marker_hash = 0;

/* Function OIDs, looked up once; cleared when pg_proc changes. */
static Oid	marker_oid = InvalidOid;
static Oid	true_oid = InvalidOid;
static Oid	false_oid = InvalidOid;

static planner_hook_type prev_planner = NULL;

static char
mode_code(const char *mode)
{
	if (mode == NULL)
		return 0;
	if (strcmp(mode, "migrating") == 0)
		return 'm';
	if (strcmp(mode, "shadow") == 0)
		return 's';
	if (strcmp(mode, "enforce") == 0)
		return 'e';
	return 0;
}

static const char *
mode_name(char code)
{
	switch (code)
	{
		case 'm':
			return "migrating";
		case 's':
			return "shadow";
		case 'e':
			return "enforce";
		default:
			return NULL;
	}
}

/*
 * The documented bucket of a canonical key text, 0 .. 9999.  The last
 * buckets computed are kept: the tenant GUC's assign hook (see
 * rollout_tenant_changed()) may run where hashing cannot (outside a
 * transaction: md5 needs a resource owner), and then uses them only.
 */
#define BUCKET_CACHE 16
static struct
{
	char		key[TENANT_KEY_MAXLEN + 1];
	int			bucket;
}			bucket_cache[BUCKET_CACHE];
static int	bucket_cache_used = 0;
static int	bucket_cache_next = 0;

static bool
rollout_bucket_ex(const char *key, bool may_hash, bool may_raise, int *bucket)
{
	char		hex[33];
	const char *errstr = NULL;
	uint32		v = 0;

	for (int i = 0; i < bucket_cache_used; i++)
		if (strcmp(bucket_cache[i].key, key) == 0)
		{
			*bucket = bucket_cache[i].bucket;
			return true;
		}
	if (!may_hash)
		return false;
	if (!pg_md5_hash(key, strlen(key), hex, &errstr))
	{
		if (may_raise)
			elog(ERROR, "could not compute an md5 hash: %s", errstr ? errstr : "?");
		return false;
	}
	for (int i = 0; i < 8; i++)
	{
		char		c = hex[i];

		v = (v << 4) | (uint32) (c <= '9' ? c - '0' : c - 'a' + 10);
	}
	*bucket = (int) (v % ROLLOUT_BUCKETS);
	if (strlen(key) <= TENANT_KEY_MAXLEN)
	{
		strlcpy(bucket_cache[bucket_cache_next].key, key, TENANT_KEY_MAXLEN + 1);
		bucket_cache[bucket_cache_next].bucket = *bucket;
		bucket_cache_next = (bucket_cache_next + 1) % BUCKET_CACHE;
		if (bucket_cache_used < BUCKET_CACHE)
			bucket_cache_used++;
	}
	return true;
}

static int
rollout_bucket(const char *key)
{
	int			bucket = 0;

	(void) rollout_bucket_ex(key, true, true, &bucket);
	return bucket;
}

static void
conf_invalidate(Datum arg, Oid relid)
{
	if (conf_cache == NULL)
		return;
	if (!OidIsValid(relid))
	{
		hash_destroy(conf_cache);
		conf_cache = NULL;
		MemoryContextReset(conf_cxt);
		return;
	}
	{
		RolloutConf *c = hash_search(conf_cache, &relid, HASH_FIND, NULL);

		if (c != NULL)
		{
			if (c->tenants)
				hash_destroy(c->tenants);
			hash_search(conf_cache, &relid, HASH_REMOVE, NULL);
		}
	}
}

static void
proc_invalidate(Datum arg, int cacheid, uint32 hashvalue)
{
	marker_oid = true_oid = false_oid = InvalidOid;
}

/* A table of the tenancy schema, or InvalidOid (extension not created). */
static Oid
tenancy_table(const char *name)
{
	Oid			nsp = get_namespace_oid("tenancy", true);

	return OidIsValid(nsp) ? get_relname_relid(name, nsp) : InvalidOid;
}

/*
 * Scan a tenancy table's rows whose column "relation" is relid, through its
 * primary key; call fn for each.
 */
static void
scan_relation_rows(const char *table, Oid relid,
				   void (*fn) (Relation rel, HeapTuple tup, RolloutConf *c), RolloutConf *c)
{
	Oid			tableoid = tenancy_table(table);
	Relation	rel;
	Oid			pkey;
	AttrNumber	attrel;
	ScanKeyData skey;
	SysScanDesc scan;
	HeapTuple	tup;

	if (!OidIsValid(tableoid))
		return;
	rel = table_open(tableoid, AccessShareLock);
	pkey = RelationGetPrimaryKeyIndex(rel);
	attrel = get_attnum(tableoid, "relation");
	if (attrel == InvalidAttrNumber)
		elog(ERROR, "tenancy.%s has no column relation", table);
	ScanKeyInit(&skey, attrel, BTEqualStrategyNumber, F_OIDEQ, ObjectIdGetDatum(relid));
	scan = systable_beginscan(rel, pkey, OidIsValid(pkey), NULL, 1, &skey);
	while ((tup = systable_getnext(scan)) != NULL)
		fn(rel, tup, c);
	systable_endscan(scan);
	table_close(rel, AccessShareLock);
}

static char *
text_attr(Relation rel, HeapTuple tup, const char *attname)
{
	AttrNumber	att = get_attnum(RelationGetRelid(rel), attname);
	bool		isnull;
	Datum		d;

	if (att == InvalidAttrNumber)
		elog(ERROR, "tenancy.%s has no column %s", RelationGetRelationName(rel), attname);
	d = heap_getattr(tup, att, RelationGetDescr(rel), &isnull);
	return isnull ? NULL : TextDatumGetCString(d);
}

static void
read_base(Relation rel, HeapTuple tup, RolloutConf *c)
{
	char	   *m = text_attr(rel, tup, "mode");

	c->base = mode_code(m);
}

static void
read_percent(Relation rel, HeapTuple tup, RolloutConf *c)
{
	AttrNumber	att = get_attnum(RelationGetRelid(rel), "buckets");
	bool		isnull;
	Datum		d;

	if (att == InvalidAttrNumber)
		elog(ERROR, "tenancy.rollouts has no column buckets");
	d = heap_getattr(tup, att, RelationGetDescr(rel), &isnull);
	c->buckets = isnull ? 0 : DatumGetInt32(d);
	c->pmode = mode_code(text_attr(rel, tup, "percent_mode"));
}

static void
read_tenant(Relation rel, HeapTuple tup, RolloutConf *c)
{
	char	   *key = text_attr(rel, tup, "tenant");
	char		mode = mode_code(text_attr(rel, tup, "mode"));
	RolloutTenant *t;

	if (key == NULL || mode == 0 || strlen(key) > TENANT_KEY_MAXLEN)
		return;
	if (c->tenants == NULL)
	{
		HASHCTL		info;

		memset(&info, 0, sizeof(info));
		info.keysize = TENANT_KEY_MAXLEN + 1;
		info.entrysize = sizeof(RolloutTenant);
		info.hcxt = conf_cxt;
		c->tenants = hash_create("tenancy rollout tenants", 16, &info,
								 HASH_ELEM | HASH_STRINGS | HASH_CONTEXT);
	}
	t = hash_search(c->tenants, key, HASH_ENTER, NULL);
	t->mode = mode;
}

/* The rollout of a root table, read once per backend and invalidation. */
static RolloutConf *
conf_get(Oid relid)
{
	RolloutConf *c;
	bool		found;

	if (conf_cache == NULL)
	{
		HASHCTL		info;

		if (conf_cxt == NULL)
		{
			conf_cxt = AllocSetContextCreate(TopMemoryContext, "tenancy rollout",
											 ALLOCSET_SMALL_SIZES);
			CacheRegisterRelcacheCallback(conf_invalidate, (Datum) 0);
		}
		memset(&info, 0, sizeof(info));
		info.keysize = sizeof(Oid);
		info.entrysize = sizeof(RolloutConf);
		info.hcxt = conf_cxt;
		conf_cache = hash_create("tenancy rollouts", 16, &info,
								 HASH_ELEM | HASH_BLOBS | HASH_CONTEXT);
	}
	c = hash_search(conf_cache, &relid, HASH_FIND, &found);
	if (found)
		return c;

	/* Read into a local copy: a scan may invalidate the cache meanwhile. */
	{
		RolloutConf tmp;

		memset(&tmp, 0, sizeof(tmp));
		tmp.relid = relid;
		scan_relation_rows("rls_tables", relid, read_base, &tmp);
		scan_relation_rows("rollouts", relid, read_percent, &tmp);
		scan_relation_rows("rollout_tenants", relid, read_tenant, &tmp);
		if (conf_cache == NULL)
			return conf_get(relid);
		c = hash_search(conf_cache, &relid, HASH_ENTER, &found);
		if (found && c->tenants)
			hash_destroy(c->tenants);
		*c = tmp;
	}
	return c;
}

/*
 * The mode of a tenant (a canonical key, or NULL: none set) on a table;
 * false when the bucket is needed but may not be computed (may_hash).
 */
static bool
conf_mode_ex(const RolloutConf *c, const char *key, bool may_hash, char *mode)
{
	if (key != NULL)
	{
		if (c->tenants != NULL)
		{
			RolloutTenant *t = hash_search(c->tenants, key, HASH_FIND, NULL);

			if (t != NULL)
			{
				*mode = t->mode;
				return true;
			}
		}
		if (c->buckets > 0 && c->pmode != 0)
		{
			int			bucket;

			if (!rollout_bucket_ex(key, may_hash, may_hash, &bucket))
				return false;
			if (bucket < c->buckets)
			{
				*mode = c->pmode;
				return true;
			}
		}
	}
	*mode = c->base;
	return true;
}

static char
conf_mode(const RolloutConf *c, const char *key)
{
	char		mode = 0;

	(void) conf_mode_ex(c, key, true, &mode);
	return mode;
}

static const char *
current_key_text(void)
{
	const TenantKey *key = tenant_context_peek();

	return key ? key->text : NULL;
}

/* ---- SQL-callable ---- */

/* tenancy.rollout_mode_is(tbl, mode): the policy's marker. */
PG_FUNCTION_INFO_V1(tenancy_rollout_mode_is);
Datum
tenancy_rollout_mode_is(PG_FUNCTION_ARGS)
{
	char		want;

	if (PG_ARGISNULL(0) || PG_ARGISNULL(1))
		PG_RETURN_BOOL(false);
	want = mode_code(text_to_cstring(PG_GETARG_TEXT_PP(1)));
	PG_RETURN_BOOL(want != 0 && conf_mode(conf_get(PG_GETARG_OID(0)), current_key_text()) == want);
}

/* tenancy.rollout_current_mode(tbl): the current tenant's mode. */
PG_FUNCTION_INFO_V1(tenancy_rollout_current_mode);
Datum
tenancy_rollout_current_mode(PG_FUNCTION_ARGS)
{
	const char *m = mode_name(conf_mode(conf_get(PG_GETARG_OID(0)), current_key_text()));

	if (m == NULL)
		PG_RETURN_NULL();
	PG_RETURN_TEXT_P(cstring_to_text(m));
}

/* tenancy.rollout_mode_of(tbl, key): a tenant's mode (key canonical). */
PG_FUNCTION_INFO_V1(tenancy_rollout_mode_of);
Datum
tenancy_rollout_mode_of(PG_FUNCTION_ARGS)
{
	char	   *key = PG_ARGISNULL(1) ? NULL : text_to_cstring(PG_GETARG_TEXT_PP(1));
	const char *m;

	if (key != NULL && strlen(key) > TENANT_KEY_MAXLEN)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("tenant key is longer than %d bytes", TENANT_KEY_MAXLEN)));
	m = mode_name(conf_mode(conf_get(PG_GETARG_OID(0)), key));
	if (m == NULL)
		PG_RETURN_NULL();
	PG_RETURN_TEXT_P(cstring_to_text(m));
}

/* Is any tenant of conf in this mode by the list or the percentage? */
static bool
conf_lists_mode(const RolloutConf *c, char mode)
{
	HASH_SEQ_STATUS seq;
	RolloutTenant *t;

	if (c->buckets > 0 && c->pmode == mode)
		return true;
	if (c->tenants == NULL)
		return false;
	hash_seq_init(&seq, c->tenants);
	while ((t = hash_seq_search(&seq)) != NULL)
	{
		if (t->mode == mode)
		{
			hash_seq_term(&seq);
			return true;
		}
	}
	return false;
}

static bool
conf_active(const RolloutConf *c)
{
	return c->buckets > 0 || (c->tenants != NULL && hash_get_num_entries(c->tenants) > 0);
}

/*
 * tenancy.rollout_active(root): has the table a rollout?  Read with catalog
 * scans, so that the generators, which run as the table owner, need no
 * privilege on the lists.
 */
PG_FUNCTION_INFO_V1(tenancy_rollout_active);
Datum
tenancy_rollout_active(PG_FUNCTION_ARGS)
{
	PG_RETURN_BOOL(conf_active(conf_get(PG_GETARG_OID(0))));
}

/* tenancy.rollout_may_be(root, mode, base): may a tenant run in mode? */
PG_FUNCTION_INFO_V1(tenancy_rollout_may_be);
Datum
tenancy_rollout_may_be(PG_FUNCTION_ARGS)
{
	char		mode = mode_code(text_to_cstring(PG_GETARG_TEXT_PP(1)));
	char		base = PG_ARGISNULL(2) ? 0 : mode_code(text_to_cstring(PG_GETARG_TEXT_PP(2)));

	if (mode == 0)
		PG_RETURN_BOOL(false);
	PG_RETURN_BOOL(base == mode || conf_lists_mode(conf_get(PG_GETARG_OID(0)), mode));
}

/* tenancy.rollout_bucket(key) */
PG_FUNCTION_INFO_V1(tenancy_rollout_bucket);
Datum
tenancy_rollout_bucket(PG_FUNCTION_ARGS)
{
	PG_RETURN_INT32(rollout_bucket(text_to_cstring(PG_GETARG_TEXT_PP(0))));
}

/* tenancy.rollout_const_true()/_false(): what a folded marker becomes. */
PG_FUNCTION_INFO_V1(tenancy_rollout_const_true);
Datum
tenancy_rollout_const_true(PG_FUNCTION_ARGS)
{
	PG_RETURN_BOOL(true);
}

PG_FUNCTION_INFO_V1(tenancy_rollout_const_false);
Datum
tenancy_rollout_const_false(PG_FUNCTION_ARGS)
{
	PG_RETURN_BOOL(false);
}

/*
 * Does the root table relid (of tenancy.rls_tables) let some tenant run in
 * shadow mode?  shadow.c counts such tables as it counts tables in shadow
 * mode.
 */
bool
rollout_has_shadow(Oid relid)
{
	Oid			root = InvalidOid;
	RolloutConf *c;

	/* The root of a partition: its row in tenancy.rls_tables. */
	{
		Oid			tableoid = tenancy_table("rls_tables");
		Relation	rel;
		ScanKeyData skey;
		SysScanDesc scan;
		HeapTuple	tup;
		AttrNumber	attrel;
		AttrNumber	attroot;

		if (!OidIsValid(tableoid))
			return false;
		rel = table_open(tableoid, AccessShareLock);
		attrel = get_attnum(tableoid, "relation");
		attroot = get_attnum(tableoid, "root");
		ScanKeyInit(&skey, attrel, BTEqualStrategyNumber, F_OIDEQ, ObjectIdGetDatum(relid));
		scan = systable_beginscan(rel, RelationGetPrimaryKeyIndex(rel), true, NULL, 1, &skey);
		if ((tup = systable_getnext(scan)) != NULL)
		{
			bool		isnull;
			Datum		d = heap_getattr(tup, attroot, RelationGetDescr(rel), &isnull);

			if (!isnull)
				root = DatumGetObjectId(d);
		}
		systable_endscan(scan);
		table_close(rel, AccessShareLock);
	}
	if (!OidIsValid(root))
		return false;
	c = conf_get(root);
	return c->base == 's' || conf_lists_mode(c, 's');
}

/*
 * tenancy.rollout_record(op, tbl, tenants, mode, percent, undo_id): check
 * that the caller owns the table, then run rollout_record_internal() as the
 * extension owner; the table's relcache entry is invalidated, so every
 * backend reads the rollout again and replans.
 */
PG_FUNCTION_INFO_V1(tenancy_rollout_record);
Datum
tenancy_rollout_record(PG_FUNCTION_ARGS)
{
	Oid			relid;
	HeapTuple	tup;
	Oid			owner;
	char		relkind;
	char	   *relname;
	Oid			save_userid;
	int			save_sec;
	Oid			argtypes[7] = {TEXTOID, REGCLASSOID, TEXTARRAYOID, TEXTOID, NUMERICOID, INT8OID, NAMEOID};
	Datum		values[7];
	char		nulls[7];
	Oid			tableoid;

	if (PG_ARGISNULL(0))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("operation must not be null")));
	if (PG_ARGISNULL(1))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("table must not be null")));
	relid = PG_GETARG_OID(1);
	tup = SearchSysCache1(RELOID, ObjectIdGetDatum(relid));
	if (!HeapTupleIsValid(tup))
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_TABLE),
				 errmsg("relation with OID %u does not exist", relid)));
	relkind = ((Form_pg_class) GETSTRUCT(tup))->relkind;
	relname = pstrdup(NameStr(((Form_pg_class) GETSTRUCT(tup))->relname));
	ReleaseSysCache(tup);
	if (!pg_class_ownercheck(relid, GetUserId()))
		aclcheck_error(ACLCHECK_NOT_OWNER, get_relkind_objtype(relkind), relname);

	tableoid = tenancy_table("rollouts");
	tup = SearchSysCache1(RELOID, ObjectIdGetDatum(tableoid));
	if (!HeapTupleIsValid(tup))
		elog(ERROR, "tenancy.rollouts does not exist");
	owner = ((Form_pg_class) GETSTRUCT(tup))->relowner;
	ReleaseSysCache(tup);

	for (int i = 0; i < 6; i++)
	{
		nulls[i] = PG_ARGISNULL(i) ? 'n' : ' ';
		values[i] = PG_ARGISNULL(i) ? (Datum) 0 : PG_GETARG_DATUM(i);
	}
	nulls[6] = ' ';
	values[6] = DirectFunctionCall1(namein, CStringGetDatum(GetUserNameFromId(GetUserId(), false)));

	GetUserIdAndSecContext(&save_userid, &save_sec);
	SetUserIdAndSecContext(owner, save_sec | SECURITY_LOCAL_USERID_CHANGE);
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	if (SPI_execute_with_args("SELECT tenancy.rollout_record_internal($1, $2, $3, $4, $5, $6, $7)",
							  7, argtypes, values, nulls, false, 0) != SPI_OK_SELECT)
		elog(ERROR, "tenancy.rollout_record_internal() failed");
	SPI_finish();
	SetUserIdAndSecContext(save_userid, save_sec);
	CacheInvalidateRelcacheByRelid(relid);
	PG_RETURN_VOID();
}

/* ---- plan-time folding ---- */

static Oid
lookup_func(const char *name, int nargs, Oid *argtypes)
{
	List	   *names = list_make2(makeString("tenancy"), makeString(pstrdup(name)));

	return LookupFuncName(names, nargs, argtypes, true);
}

static bool
markers_known(void)
{
	if (!OidIsValid(marker_oid))
	{
		Oid			args[2] = {REGCLASSOID, TEXTOID};

		if (!OidIsValid(get_namespace_oid("tenancy", true)))
			return false;
		marker_oid = lookup_func("rollout_mode_is", 2, args);
		true_oid = lookup_func("rollout_const_true", 0, NULL);
		false_oid = lookup_func("rollout_const_false", 0, NULL);
		if (!OidIsValid(marker_oid) || !OidIsValid(true_oid) || !OidIsValid(false_oid))
		{
			marker_oid = InvalidOid;
			return false;
		}
		marker_hash = GetSysCacheHashValue1(PROCOID, ObjectIdGetDatum(marker_oid));
	}
	return true;
}

static void
note_folded(Oid relid, char mode)
{
	for (int i = 0; i < folded_used; i++)
		if (folded[i].relid == relid)
		{
			if (folded[i].mode != mode)
				folded_overflow = true; /* cannot happen; be safe */
			return;
		}
	if (folded_used == FOLDED_MAX)
	{
		folded_overflow = true;
		return;
	}
	folded[folded_used].relid = relid;
	folded[folded_used].mode = mode;
	folded_used++;
}

typedef struct FoldContext
{
	bool		changed;
	List	   *folded;			/* FoldedTable *: the tables of this plan */
} FoldContext;

/*
 * PlanInvalItem hash heading the folds of a plan: the item after it holds
 * their number n, then n pairs (table OID, mode code).  Spurious matches of
 * these values by a pg_proc change only make the plan replan.
 */
#define FOLD_SENTINEL_HASH 0x524f4c4cu

/* Some plan was folded in this backend: executor start checks its modes. */
static bool folded_ever = false;

static ExecutorStart_hook_type prev_executor_start = NULL;

static bool fold_walker(Node *node, FoldContext *ctx);

static bool
fold_walker(Node *node, FoldContext *ctx)
{
	if (node == NULL)
		return false;
	if (IsA(node, Query))
		return query_tree_walker((Query *) node, fold_walker, (void *) ctx, 0);
	if (IsA(node, FuncExpr) && ((FuncExpr *) node)->funcid == marker_oid)
	{
		FuncExpr   *f = (FuncExpr *) node;
		Const	   *rel = list_length(f->args) == 2 ? (Const *) linitial(f->args) : NULL;
		Const	   *mode = rel ? (Const *) lsecond(f->args) : NULL;

		if (rel && IsA(rel, Const) && !rel->constisnull &&
			mode && IsA(mode, Const) && !mode->constisnull)
		{
			Oid			relid = DatumGetObjectId(rel->constvalue);
			char		want = mode_code(TextDatumGetCString(mode->constvalue));
			char		have = conf_mode(conf_get(relid), current_key_text());

			note_folded(relid, have);
			{
				bool		known = false;
				ListCell   *lc;

				foreach(lc, ctx->folded)
					if (((FoldedTable *) lfirst(lc))->relid == relid)
						known = true;
				if (!known)
				{
					FoldedTable *t = palloc(sizeof(FoldedTable));

					t->relid = relid;
					t->mode = have;
					ctx->folded = lappend(ctx->folded, t);
				}
			}
			f->funcid = (want != 0 && have == want) ? true_oid : false_oid;
			f->args = NIL;
			ctx->changed = true;
		}
		return false;
	}
	return expression_tree_walker(node, fold_walker, (void *) ctx);
}

static PlanInvalItem *
fold_item(uint32 value)
{
	PlanInvalItem *item = makeNode(PlanInvalItem);

	item->cacheId = PROCOID;
	item->hashValue = value;
	return item;
}

static PlannedStmt *
rollout_planner(Query *parse, const char *query_string, int cursorOptions,
				ParamListInfo boundParams)
{
	bool		changed = false;
	PlannedStmt *result;
	FoldContext ctx;

	ctx.changed = false;
	ctx.folded = NIL;
	if (parse->hasRowSecurity && markers_known())
	{
		(void) query_tree_walker(parse, fold_walker, (void *) &ctx, 0);
		changed = ctx.changed;
	}
	if (prev_planner)
		result = prev_planner(parse, query_string, cursorOptions, boundParams);
	else
		result = standard_planner(parse, query_string, cursorOptions, boundParams);
	if (changed)
	{
		/* The plan depends on the marker, which it no longer contains. */
		PlanInvalItem *item = makeNode(PlanInvalItem);
		ListCell   *lc;

		item->cacheId = PROCOID;
		item->hashValue = marker_hash;
		result->invalItems = lappend(result->invalItems, item);

		/*
		 * And the modes it was folded for, which executor start compares
		 * with the current tenant's: a plan no cache holds (the statements
		 * of a SQL function, planned together before the first runs) may
		 * run after a tenant switch no invalidation reaches.
		 */
		result->invalItems = lappend(result->invalItems, fold_item(FOLD_SENTINEL_HASH));
		result->invalItems = lappend(result->invalItems, fold_item((uint32) list_length(ctx.folded)));
		foreach(lc, ctx.folded)
		{
			FoldedTable *t = (FoldedTable *) lfirst(lc);

			result->invalItems = lappend(result->invalItems, fold_item((uint32) t->relid));
			result->invalItems = lappend(result->invalItems, fold_item((uint32) (unsigned char) t->mode));
		}
		folded_ever = true;
	}
	return result;
}

/*
 * Refuse a folded plan when the current tenant's mode of a table differs
 * from the mode it was folded for.
 */
static void
rollout_executor_start(QueryDesc *queryDesc, int eflags)
{
	if (folded_ever && queryDesc->plannedstmt != NULL)
	{
		List	   *items = queryDesc->plannedstmt->invalItems;
		ListCell   *lc;

		foreach(lc, items)
		{
			PlanInvalItem *item = (PlanInvalItem *) lfirst(lc);
			int			n;
			ListCell   *next;

			if (item->cacheId != PROCOID || item->hashValue != FOLD_SENTINEL_HASH ||
				(next = lnext(items, lc)) == NULL)
				continue;
			n = (int) ((PlanInvalItem *) lfirst(next))->hashValue;
			for (int i = 0; i < n; i++)
			{
				ListCell   *rc = lnext(items, next);
				ListCell   *mc = rc ? lnext(items, rc) : NULL;
				Oid			relid;
				char		want;
				char		have;

				if (mc == NULL)
					elog(ERROR, "malformed rollout fold items in plan");
				relid = (Oid) ((PlanInvalItem *) lfirst(rc))->hashValue;
				want = (char) ((PlanInvalItem *) lfirst(mc))->hashValue;
				have = conf_mode(conf_get(relid), current_key_text());
				if (have != want)
					ereport(ERROR,
							(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
							 errmsg("this plan was made for another rollout mode of table %s",
									get_rel_name(relid) ? get_rel_name(relid) : "?"),
							 errdetail("The plan was made for mode %s; the current tenant's mode is %s.",
									   mode_name(want) ? mode_name(want) : "none",
									   mode_name(have) ? mode_name(have) : "none"),
							 errhint("Set the tenant before the statement is planned (a SQL function plans all its statements when it starts).")));
				next = mc;
			}
			break;
		}
	}
	if (prev_executor_start)
		prev_executor_start(queryDesc, eflags);
	else
		standard_ExecutorStart(queryDesc, eflags);
}

/*
 * The current tenant changed (context.c).  recheck: the new key can be
 * compared (false when the key type or the context source changed).  Plans
 * folded for a mode the new tenant does not have are invalidated.
 */
void
rollout_tenant_changed(bool recheck)
{
	bool		stale = false;

	if (folded_used == 0 && !folded_overflow)
		return;
	if (!recheck || folded_overflow || conf_cache == NULL)
		stale = true;
	else
	{
		const char *key = current_key_text();

		/* Hashing needs a transaction (resource owner); never raise here. */
		bool		may_hash = IsTransactionState() && CurrentResourceOwner != NULL;

		for (int i = 0; i < folded_used && !stale; i++)
		{
			RolloutConf *c = hash_search(conf_cache, &folded[i].relid, HASH_FIND, NULL);
			char		mode;

			/* Not cached or not computable: invalidate, to be safe. */
			if (c == NULL || !conf_mode_ex(c, key, may_hash, &mode) || mode != folded[i].mode)
				stale = true;
		}
	}
	if (stale)
	{
		folded_used = 0;
		folded_overflow = false;
		CallSyscacheCallbacks(PROCOID, marker_hash);
	}
}

void
tenancy_rollout_init(void)
{
	CacheRegisterSyscacheCallback(PROCOID, proc_invalidate, (Datum) 0);
	prev_planner = planner_hook;
	planner_hook = rollout_planner;
	prev_executor_start = ExecutorStart_hook;
	ExecutorStart_hook = rollout_executor_start;
}

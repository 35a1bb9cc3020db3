/*-------------------------------------------------------------------------
 * derive.c
 *	  Derived tenants: the BEFORE INSERT trigger that derive_tenant()
 *	  installs, and the policy check that accepts the tenants it derives.
 *
 * A table whose every row's tenant follows from the row itself (an
 * expression over it, e.g. its store_id) or from a parent row (through a
 * foreign key) carries the trigger tenancy.derive_tenant_trigger().  For
 * each new row it computes the derived tenant D, then:
 *
 *	- rows written with no tenant set, or under the tenant a default gave
 *	  (bind_role(), ALTER DATABASE ... SET) when that is the implicit
 *	  tenant, are legacy writes: D replaces the column's value when that is
 *	  NULL, the implicit tenant or D already (the column DEFAULT put it
 *	  there); any other value is refused (23514);
 *	- rows written under a tenant set by the client (set_tenant(), SET,
 *	  connection options), or a role bound to another tenant, must have D
 *	  as their tenant and as their column value: else 42501 or 23514.  In
 *	  shadow mode the row is let through and counted as a write enforce
 *	  mode would refuse.
 *
 * A NULL D (no source value, no parent row) leaves the row as it is.
 *
 * The derivation runs as the table's owner (an expression: the owner's
 * code) or as the parent's owner (a foreign key: the lookup the foreign key
 * check itself makes, as referential integrity does), under
 * SECURITY_RESTRICTED_OPERATION and SECURITY_NOFORCE_RLS (as_owner.c), with
 * search_path pinned: the parent row is found whatever its policy.
 *
 * A legacy write's tenant is not the current tenant, so tenancy_policy's
 * WITH CHECK refuses it.  The trigger marks the row it derived (table,
 * tenant, transaction and command), and the policy tenancy_policy_derived
 * (FOR INSERT) accepts exactly that row through tenancy.derived_write().
 *-------------------------------------------------------------------------
 */
#include "tenancy.h"

#include "access/htup_details.h"
#include "catalog/namespace.h"
#include "catalog/pg_class.h"
#include "catalog/pg_type.h"
#include "commands/trigger.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "access/xact.h"
#include "storage/proc.h"
#include "utils/builtins.h"
#include "utils/hsearch.h"
#include "utils/inval.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/rel.h"
#include "utils/syscache.h"

/* What the trigger needs of one table, built once from derive_lookup(). */
typedef struct DeriveEntry
{
	Oid			relid;			/* hash key: the trigger's table */
	bool		valid;
	Oid			root;			/* the table derive_tenant() was called on */
	Oid			run_as_rel;		/* whose owner runs the lookup */
	Oid			run_as;			/* that owner */
	AttrNumber	attnum;			/* tenant column */
	Oid			atttype;
	char		column[NAMEDATALEN];
	char		source[256];	/* for messages */
	SPIPlanPtr	plan;
} DeriveEntry;

static HTAB *derive_cache = NULL;

/* The row the trigger derived last: see derive_accepts(). */
static struct
{
	bool		set;
	Oid			relid;
	Oid			root;
	LocalTransactionId lxid;
	CommandId	cid;
	char		key[TENANT_KEY_MAXLEN + 1];
}			mark;

static void
derive_invalidate(Datum arg, Oid relid)
{
	HASH_SEQ_STATUS status;
	DeriveEntry *e;

	if (derive_cache == NULL)
		return;
	hash_seq_init(&status, derive_cache);
	while ((e = hash_seq_search(&status)) != NULL)
		if (relid == InvalidOid || e->relid == relid || e->root == relid ||
			e->run_as_rel == relid)
			e->valid = false;
}

void
tenancy_derive_init(void)
{
	tenancy_register_relcache_callback(derive_invalidate, (Datum) 0);
}

static void
pin_search_path(void)
{
	(void) set_config_option("search_path", "pg_catalog, pg_temp",
							 PGC_USERSET, PGC_S_SESSION,
							 GUC_ACTION_SAVE, true, 0, false);
}

/* Fill e from tenancy.derive_lookup(relid); under SPI. */
static void
derive_build(DeriveEntry *e, Relation rel)
{
	Oid			argtype = REGCLASSOID;
	Datum		arg = ObjectIdGetDatum(e->relid);
	Oid			rowtype = rel->rd_rel->reltype;
	int			save_nestlevel;
	HeapTuple	tup;
	TupleDesc	desc;
	bool		isnull;
	char	   *column;
	char	   *query;
	char	   *source;
	SPIPlanPtr	plan;
	HeapTuple	ctup;
	Oid			nsp;
	Oid			regrel;
	Oid			regowner;
	Oid			save_userid;
	int			save_sec;

	/*
	 * The registry is the extension owner's: read it as that role (as
	 * registry.c reads tenancy.tenants), whoever inserts.
	 */
	nsp = get_namespace_oid("tenancy", false);
	regrel = get_relname_relid("derived_tenants", nsp);
	ctup = SearchSysCache1(RELOID, ObjectIdGetDatum(regrel));
	if (!HeapTupleIsValid(ctup))
		elog(ERROR, "tenancy.derived_tenants does not exist");
	regowner = ((Form_pg_class) GETSTRUCT(ctup))->relowner;
	ReleaseSysCache(ctup);
	GetUserIdAndSecContext(&save_userid, &save_sec);
	SetUserIdAndSecContext(regowner,
						   save_sec | SECURITY_LOCAL_USERID_CHANGE | SECURITY_RESTRICTED_OPERATION);
	save_nestlevel = NewGUCNestLevel();
	pin_search_path();
	if (SPI_execute_with_args("SELECT root::pg_catalog.oid, run_as::pg_catalog.oid, column_name, query, source "
							  "FROM tenancy.derive_lookup($1)",
							  1, &argtype, &arg, NULL, true, 1) != SPI_OK_SELECT)
		elog(ERROR, "tenancy.derive_lookup() failed");
	if (SPI_processed != 1 || SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 4) == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("relation \"%s\" has no derived tenant", RelationGetRelationName(rel)),
				 errhint("Call tenancy.derive_tenant() on it, or drop the trigger with tenancy.underive_tenant().")));
	tup = SPI_tuptable->vals[0];
	desc = SPI_tuptable->tupdesc;
	e->root = DatumGetObjectId(SPI_getbinval(tup, desc, 1, &isnull));
	e->run_as_rel = DatumGetObjectId(SPI_getbinval(tup, desc, 2, &isnull));
	column = SPI_getvalue(tup, desc, 3);
	query = SPI_getvalue(tup, desc, 4);
	source = SPI_getvalue(tup, desc, 5);
	strlcpy(e->column, column, NAMEDATALEN);
	strlcpy(e->source, source ? source : "", sizeof(e->source));

	e->attnum = get_attnum(e->relid, column);
	if (e->attnum == InvalidAttrNumber)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_COLUMN),
				 errmsg("column \"%s\" of relation \"%s\" does not exist", column,
						RelationGetRelationName(rel)),
				 errdetail("The derived tenant is written to it."),
				 errhint("Add the tenant column first (tenancy.add_tenant_column()).")));
	e->atttype = get_atttype(e->relid, e->attnum);

	ctup = SearchSysCache1(RELOID, ObjectIdGetDatum(e->run_as_rel));
	if (!HeapTupleIsValid(ctup))
		elog(ERROR, "cache lookup failed for relation %u", e->run_as_rel);
	e->run_as = ((Form_pg_class) GETSTRUCT(ctup))->relowner;
	ReleaseSysCache(ctup);

	plan = SPI_prepare(query, 1, &rowtype);
	if (plan == NULL)
		elog(ERROR, "SPI_prepare failed: %s", SPI_result_code_string(SPI_result));
	if (SPI_keepplan(plan) != 0)
		elog(ERROR, "SPI_keepplan failed");
	if (e->plan != NULL)
		SPI_freeplan(e->plan);
	e->plan = plan;
	AtEOXact_GUC(false, save_nestlevel);
	SetUserIdAndSecContext(save_userid, save_sec);
	e->valid = true;
}

/* Canonical text of a tenant value of type typid; false when malformed. */
static bool
value_key(Datum value, Oid typid, TenantKey *key)
{
	Oid			outfn;
	bool		varlena;
	const char *detail;

	getTypeOutputInfo(typid, &outfn, &varlena);
	return tenant_key_parse(OidOutputFunctionCall(outfn, value),
							(TenantKeyType) tenancy_tenant_type, key, &detail);
}

static Datum
key_datum(const TenantKey *key)
{
	switch (key->type)
	{
		case TENANT_KEY_UUID:
			{
				pg_uuid_t  *u = palloc(sizeof(pg_uuid_t));

				memcpy(u, &key->uuid, sizeof(pg_uuid_t));
				return UUIDPGetDatum(u);
			}
		case TENANT_KEY_BIGINT:
			return Int64GetDatum(key->i64);
		case TENANT_KEY_TEXT:
			break;
	}
	return CStringGetTextDatum(key->text);
}

PG_FUNCTION_INFO_V1(tenancy_derive_tenant_trigger);
Datum
tenancy_derive_tenant_trigger(PG_FUNCTION_ARGS)
{
	TriggerData *trigdata = (TriggerData *) fcinfo->context;
	Relation	rel;
	HeapTuple	tuple;
	DeriveEntry *e;
	bool		found;
	Oid			relid;
	Datum		rowdatum;
	AsOwnerState st;
	int			save_nestlevel;
	char		derived[TENANT_KEY_MAXLEN + 1];
	bool		has_derived = false;
	TenantKey	dkey;
	TenantKey	vkey;
	Datum		value;
	bool		isnull;
	const TenantKey *cur;
	char		implicit[TENANT_KEY_MAXLEN + 1];
	bool		has_implicit;
	bool		legacy;

	if (!CALLED_AS_TRIGGER(fcinfo) || !TRIGGER_FIRED_BEFORE(trigdata->tg_event) ||
		!TRIGGER_FIRED_FOR_ROW(trigdata->tg_event) ||
		!TRIGGER_FIRED_BY_INSERT(trigdata->tg_event))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("tenancy.derive_tenant_trigger() must be a BEFORE INSERT row trigger")));
	rel = trigdata->tg_relation;
	tuple = trigdata->tg_trigtuple;
	relid = RelationGetRelid(rel);
	mark.set = false;

	if (derive_cache == NULL)
	{
		HASHCTL		ctl;

		memset(&ctl, 0, sizeof(ctl));
		ctl.keysize = sizeof(Oid);
		ctl.entrysize = sizeof(DeriveEntry);
		ctl.hcxt = TopMemoryContext;
		derive_cache = hash_create("tenancy derive cache", 32, &ctl,
								   HASH_ELEM | HASH_BLOBS | HASH_CONTEXT);
	}
	e = hash_search(derive_cache, &relid, HASH_ENTER, &found);
	if (!found)
	{
		e->valid = false;
		e->plan = NULL;
	}

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	if (!e->valid)
		derive_build(e, rel);

	rowdatum = heap_copy_tuple_as_datum(tuple, RelationGetDescr(rel));
	as_owner_begin(e->run_as_rel, e->run_as, &st);
	save_nestlevel = NewGUCNestLevel();
	pin_search_path();
	if (SPI_execute_plan(e->plan, &rowdatum, NULL, false, 1) != SPI_OK_SELECT)
		elog(ERROR, "tenant derivation failed");
	AtEOXact_GUC(false, save_nestlevel);
	as_owner_end(&st);
	if (SPI_processed == 1)
	{
		char	   *d = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1);

		if (d != NULL)
		{
			strlcpy(derived, d, sizeof(derived));
			has_derived = true;
		}
	}
	SPI_finish();

	if (!has_derived)
		return PointerGetDatum(tuple);	/* nothing to derive from */
	{
		const char *detail;

		if (!tenant_key_parse(derived, (TenantKeyType) tenancy_tenant_type, &dkey, &detail))
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_TEXT_REPRESENTATION),
					 errmsg("derived tenant \"%s\" of a new row of \"%s\" is not a tenant key",
							derived, RelationGetRelationName(rel)),
					 errdetail("%s", detail)));
	}

	value = heap_getattr(tuple, e->attnum, RelationGetDescr(rel), &isnull);
	if (!isnull && !value_key(value, e->atttype, &vkey))
		isnull = true;			/* cannot happen: the column has the key type */

	cur = tenant_context_peek();
	has_implicit = registry_implicit_key(implicit);
	legacy = cur == NULL ||
		(tenant_context_is_default() && has_implicit && strcmp(cur->text, implicit) == 0);

	if (!legacy && strcmp(cur->text, dkey.text) != 0)
	{
		if (shadow_note_derived(relid))
			return PointerGetDatum(tuple);
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("new row of \"%s\" belongs to tenant %s, not to the current tenant %s",
						RelationGetRelationName(rel), dkey.text, cur->text),
				 errdetail("Its tenant is derived from %s.", e->source),
				 errhint("Write it under tenant %s.", dkey.text)));
	}
	if (!isnull && strcmp(vkey.text, dkey.text) != 0 &&
		(!legacy || !has_implicit || strcmp(vkey.text, implicit) != 0))
	{
		if (shadow_note_derived(relid))
			return PointerGetDatum(tuple);
		ereport(ERROR,
				(errcode(ERRCODE_CHECK_VIOLATION),
				 errmsg("new row of \"%s\" has tenant %s, but its derived tenant is %s",
						RelationGetRelationName(rel), vkey.text, dkey.text),
				 errdetail("Its tenant is derived from %s.", e->source),
				 errhint("Leave column \"%s\" to its default, or write the derived tenant.", e->column)));
	}
	if (legacy)
	{
		mark.set = true;
		mark.relid = relid;
		mark.root = e->root;
		mark.lxid = MyProc->lxid;
		mark.cid = GetCurrentCommandId(false);
		strlcpy(mark.key, dkey.text, sizeof(mark.key));
	}
	if (!isnull && strcmp(vkey.text, dkey.text) == 0)
		return PointerGetDatum(tuple);
	{
		int			attnum = e->attnum;
		Datum		newval = key_datum(&dkey);
		bool		newnull = false;

		return PointerGetDatum(heap_modify_tuple_by_cols(tuple, RelationGetDescr(rel), 1,
														 &attnum, &newval, &newnull));
	}
}

/*
 * Was the row of relid (or of the table its derivation is registered on)
 * with this tenant the one the trigger just derived, in a legacy write of
 * this command?
 */
bool
derive_accepts(Oid relid, const char *tenant)
{
	return mark.set && tenant != NULL &&
		(mark.relid == relid || mark.root == relid) &&
		mark.lxid == MyProc->lxid &&
		mark.cid == GetCurrentCommandId(false) &&
		strcmp(mark.key, tenant) == 0;
}

/* WITH CHECK of tenancy_policy_derived: see derive_accepts(). */
PG_FUNCTION_INFO_V1(tenancy_derived_write);
Datum
tenancy_derived_write(PG_FUNCTION_ARGS)
{
	TenantKey	key;

	if (PG_ARGISNULL(0) || PG_ARGISNULL(1) || !mark.set)
		PG_RETURN_BOOL(false);
	if (!value_key(PG_GETARG_DATUM(1), get_fn_expr_argtype(fcinfo->flinfo, 1), &key))
		PG_RETURN_BOOL(false);
	PG_RETURN_BOOL(derive_accepts(PG_GETARG_OID(0), key.text));
}

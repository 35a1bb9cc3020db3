/*-------------------------------------------------------------------------
 * rls.c
 *	  Bookkeeping of the tenant policies created by tenancy.enable_rls().
 *
 * The generated DDL records what it changes in tenancy.rls_tables and the
 * migration stage in tenancy.tables, which application and migration roles
 * cannot write.  tenancy.rls_record() checks that the caller owns the table,
 * then runs tenancy.rls_record_internal() as the extension owner, the way
 * registry.c reads the registry.
 *
 * rls_record() is executable by every role, and what it registers the
 * background worker counts and verify() checks: it records only what
 * enable_rls() would.  A temporary table is refused here (it belongs to
 * one session, and a role with nothing but TEMP owns it);
 * rls_record_internal() refuses what tenancy.rls_check() refuses (not a
 * table, no such column, a column not of the tenant key type, an unknown
 * mode) and a root the table is not a partition of.
 *-------------------------------------------------------------------------
 */
#include "tenancy.h"

#include "access/htup_details.h"
#include "catalog/namespace.h"
#include "catalog/pg_class.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "utils/acl.h"
#include "utils/builtins.h"
#include "utils/lsyscache.h"
#include "utils/syscache.h"

/*
 * ereport 42501 unless the current user owns the relation; with
 * registering, also refuse a temporary table (see the file header).
 */
static void
check_table_owner(Oid relid, bool registering)
{
	HeapTuple	tup;
	Form_pg_class form;
	char		relkind;
	char		relpersistence;
	char	   *relname;

	tup = SearchSysCache1(RELOID, ObjectIdGetDatum(relid));
	if (!HeapTupleIsValid(tup))
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_TABLE),
				 errmsg("relation with OID %u does not exist", relid)));
	form = (Form_pg_class) GETSTRUCT(tup);
	relkind = form->relkind;
	relpersistence = form->relpersistence;
	relname = pstrdup(NameStr(form->relname));
	ReleaseSysCache(tup);

#if PG_VERSION_NUM >= 160000
	if (!object_ownercheck(RelationRelationId, relid, GetUserId()))
#else
	if (!pg_class_ownercheck(relid, GetUserId()))
#endif
		aclcheck_error(ACLCHECK_NOT_OWNER, get_relkind_objtype(relkind), relname);
	if (registering && relpersistence == RELPERSISTENCE_TEMP)
		ereport(ERROR,
				(errcode(ERRCODE_WRONG_OBJECT_TYPE),
				 errmsg("\"%s\" is a temporary table", relname),
				 errdetail("tenancy registers only tables that outlive the session."),
				 errhint("Use a permanent or unlogged table.")));
}

PG_FUNCTION_INFO_V1(tenancy_rls_record);
Datum
tenancy_rls_record(PG_FUNCTION_ARGS)
{
	char	   *op;
	Oid			nsp;
	Oid			relid;
	HeapTuple	tup;
	Oid			owner;
	Oid			save_userid;
	int			save_sec;
	Oid			argtypes[5] = {TEXTOID, REGCLASSOID, REGCLASSOID, NAMEOID, TEXTOID};
	Datum		values[5];
	char		nulls[5];

	if (PG_ARGISNULL(0))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("operation must not be null")));
	op = text_to_cstring(PG_GETARG_TEXT_PP(0));

	/* Forgetting dropped tables needs no privilege: it touches no live table. */
	if (strcmp(op, "forget_dropped") != 0)
	{
		bool		registering = strcmp(op, "register") == 0;

		if (PG_ARGISNULL(1))
			ereport(ERROR,
					(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
					 errmsg("table must not be null")));
		check_table_owner(PG_GETARG_OID(1), registering);
		if (!PG_ARGISNULL(2) && PG_GETARG_OID(2) != PG_GETARG_OID(1))
			check_table_owner(PG_GETARG_OID(2), registering);
	}

	nsp = get_namespace_oid("tenancy", false);
	relid = get_relname_relid("rls_tables", nsp);
	tup = SearchSysCache1(RELOID, ObjectIdGetDatum(relid));
	if (!HeapTupleIsValid(tup))
		elog(ERROR, "tenancy.rls_tables does not exist");
	owner = ((Form_pg_class) GETSTRUCT(tup))->relowner;
	ReleaseSysCache(tup);

	for (int i = 0; i < 5; i++)
	{
		nulls[i] = PG_ARGISNULL(i) ? 'n' : ' ';
		values[i] = PG_ARGISNULL(i) ? (Datum) 0 : PG_GETARG_DATUM(i);
	}

	GetUserIdAndSecContext(&save_userid, &save_sec);
	SetUserIdAndSecContext(owner, save_sec | SECURITY_LOCAL_USERID_CHANGE);
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	if (SPI_execute_with_args("SELECT tenancy.rls_record_internal($1, $2, $3, $4, $5)",
							  5, argtypes, values, nulls, false, 0) != SPI_OK_SELECT)
		elog(ERROR, "tenancy.rls_record_internal() failed");
	SPI_finish();
	SetUserIdAndSecContext(save_userid, save_sec);
	PG_RETURN_VOID();
}

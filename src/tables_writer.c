/*-------------------------------------------------------------------------
 * tables_writer.c
 *	  The writers of tenancy.tables (besides the row-level security
 *	  bookkeeping of rls.c).
 *
 * tenancy.tables names each table's tenant column and its migration stage;
 * verify(), enforce_not_null(), the contract phase and the worker act on
 * it.  So no role is granted INSERT, UPDATE or DELETE on it (a migration
 * role could point a table at another column, or claim a stage); these
 * functions write it as its owner, after checking the caller:
 *
 *	- tables_register(tbl, column_name, source) registers a table (stage
 *	  expand), or records the source of a registered table that has none;
 *	  a registered column is never changed.  The caller may backfill the
 *	  column: SELECT on the table and UPDATE on the column.
 *	- tables_set_stage(tbl, stage, from_stage) sets expand, backfill or
 *	  contract, only when the stage is from_stage if that is given.  Going
 *	  from expand to backfill needs what tables_register() needs, for the
 *	  registered column; any other change the privileges of the table's
 *	  owner.  The policy stages (migrating, shadow, enforce) are set only
 *	  by enable_rls(), set_mode() and disable_rls(), through rls_record().
 *
 * They are not SECURITY DEFINER functions: a SECURITY DEFINER routine
 * cannot tell who called it, and the caller is what they check.
 *-------------------------------------------------------------------------
 */
#include "tenancy.h"

#include "access/htup_details.h"
#include "catalog/namespace.h"
#include "catalog/pg_authid.h"
#include "catalog/pg_class.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "utils/acl.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/lsyscache.h"
#include "utils/syscache.h"

static Oid
tables_relid(void)
{
	Oid			relid = get_relname_relid("tables",
										  get_namespace_oid("tenancy", false));

	if (!OidIsValid(relid))
		elog(ERROR, "tenancy.tables does not exist");
	return relid;
}

/* The relation's name, or 42P01 when it does not exist. */
static char *
relation_name(Oid relid)
{
	char	   *name = get_rel_name(relid);

	if (name == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_TABLE),
				 errmsg("relation with OID %u does not exist", relid)));
	return name;
}

/*
 * ereport 42501 unless role may backfill the column: SELECT on the table
 * and UPDATE on the column (a column's own ACL does not count table-level
 * grants: check both).
 */
static void
check_may_backfill(Oid relid, const char *column, Oid role)
{
	AttrNumber	attnum = get_attnum(relid, column);

	if (attnum == InvalidAttrNumber)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_COLUMN),
				 errmsg("column \"%s\" of relation \"%s\" does not exist",
						column, relation_name(relid))));
	if (pg_class_aclcheck(relid, role, ACL_SELECT) != ACLCHECK_OK ||
		(pg_class_aclcheck(relid, role, ACL_UPDATE) != ACLCHECK_OK &&
		 pg_attribute_aclcheck(relid, attnum, role, ACL_UPDATE) != ACLCHECK_OK))
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("permission denied to register table \"%s\"", relation_name(relid)),
				 errdetail("Registering a table needs SELECT on it and UPDATE on column %s.",
						   quote_identifier(column))));
}

/* ereport 42501 unless role has the privileges of the table's owner. */
static void
check_owner_privileges(Oid relid, Oid role)
{
	HeapTuple	tup;
	Oid			owner;

	tup = SearchSysCache1(RELOID, ObjectIdGetDatum(relid));
	if (!HeapTupleIsValid(tup))
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_TABLE),
				 errmsg("relation with OID %u does not exist", relid)));
	owner = ((Form_pg_class) GETSTRUCT(tup))->relowner;
	ReleaseSysCache(tup);
	if (!has_privs_of_role(role, owner))
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("permission denied to change the stage of table \"%s\"", relation_name(relid)),
				 errdetail("Only a role with the privileges of the table's owner can, except from expand to backfill.")));
}

/*
 * Become the owner of tenancy.tables (a superuser has the privileges of
 * every owner), under SECURITY_RESTRICTED_OPERATION, with the search_path
 * pinned for the statements below.
 */
static void
tables_writer_begin(AsOwnerState *state)
{
	as_owner_begin(tables_relid(), BOOTSTRAP_SUPERUSERID, state);
	(void) set_config_option("search_path", "pg_catalog, pg_temp",
							 PGC_USERSET, PGC_S_SESSION, GUC_ACTION_SAVE,
							 true, 0, false);
}

/*
 * tenancy.tables_register(tbl, column_name, source) -> boolean
 *	  Register the table with its tenant column (stage expand), or record
 *	  the source of a registered table that has none.  Whether a row was
 *	  written.
 */
PG_FUNCTION_INFO_V1(tenancy_tables_register);
Datum
tenancy_tables_register(PG_FUNCTION_ARGS)
{
	Oid			relid;
	char	   *column;
	AsOwnerState state;
	Oid			argtypes[3] = {REGCLASSOID, NAMEOID, TEXTOID};
	Datum		values[3];
	char		nulls[3] = {' ', ' ', ' '};
	bool		written;

	if (PG_ARGISNULL(0) || PG_ARGISNULL(1))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("table and column_name must not be null")));
	relid = PG_GETARG_OID(0);
	column = NameStr(*PG_GETARG_NAME(1));
	(void) relation_name(relid);
	check_may_backfill(relid, column, GetUserId());

	values[0] = PG_GETARG_DATUM(0);
	values[1] = PG_GETARG_DATUM(1);
	values[2] = PG_ARGISNULL(2) ? (Datum) 0 : PG_GETARG_DATUM(2);
	nulls[2] = PG_ARGISNULL(2) ? 'n' : ' ';

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	tables_writer_begin(&state);
	if (SPI_execute_with_args("INSERT INTO tenancy.tables AS t (relation, column_name, source) "
							  "VALUES ($1, $2, $3) "
							  "ON CONFLICT (relation) DO UPDATE SET source = EXCLUDED.source "
							  "WHERE t.source IS NULL AND EXCLUDED.source IS NOT NULL",
							  3, argtypes, values, nulls, false, 0) != SPI_OK_INSERT)
		elog(ERROR, "could not register table \"%s\"", get_rel_name(relid));
	written = SPI_processed > 0;
	as_owner_end(&state);
	SPI_finish();
	PG_RETURN_BOOL(written);
}

/*
 * tenancy.tables_set_stage(tbl, stage, from_stage) -> boolean
 *	  Set the stage of a registered table, when it is from_stage if that is
 *	  not null.  Whether it changed (false for a table not registered).
 */
PG_FUNCTION_INFO_V1(tenancy_tables_set_stage);
Datum
tenancy_tables_set_stage(PG_FUNCTION_ARGS)
{
	Oid			relid;
	char	   *stage;
	char	   *from_stage = NULL;
	AsOwnerState state;
	Oid			argtypes[3] = {REGCLASSOID, TEXTOID, TEXTOID};
	Datum		values[3];
	char		nulls[3] = {' ', ' ', ' '};
	char	   *column = NULL;
	bool		changed;

	if (PG_ARGISNULL(0) || PG_ARGISNULL(1))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("table and stage must not be null")));
	relid = PG_GETARG_OID(0);
	stage = text_to_cstring(PG_GETARG_TEXT_PP(1));
	if (!PG_ARGISNULL(2))
		from_stage = text_to_cstring(PG_GETARG_TEXT_PP(2));
	(void) relation_name(relid);
	if (strcmp(stage, "migrating") == 0 || strcmp(stage, "shadow") == 0 ||
		strcmp(stage, "enforce") == 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("stage \"%s\" is set by the row level security functions", stage),
				 errhint("Use tenancy.enable_rls() or tenancy.set_mode().")));
	if (strcmp(stage, "expand") != 0 && strcmp(stage, "backfill") != 0 &&
		strcmp(stage, "contract") != 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("unknown stage \"%s\"", stage),
				 errhint("The stages set here are expand, backfill and contract.")));

	values[0] = PG_GETARG_DATUM(0);
	values[1] = PG_GETARG_DATUM(1);
	values[2] = PG_ARGISNULL(2) ? (Datum) 0 : PG_GETARG_DATUM(2);
	nulls[2] = PG_ARGISNULL(2) ? 'n' : ' ';

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	tables_writer_begin(&state);
	if (SPI_execute_with_args("SELECT column_name::pg_catalog.text FROM tenancy.tables "
							  "WHERE relation OPERATOR(pg_catalog.=) $1 FOR UPDATE",
							  1, argtypes, values, nulls, false, 1) != SPI_OK_SELECT)
		elog(ERROR, "could not read tenancy.tables");
	if (SPI_processed == 1)
		column = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1);
	as_owner_end(&state);

	/*
	 * The checks run as the caller, outside the writer's context.  A table
	 * that is not registered has no stage to change: false.
	 */
	if (strcmp(stage, "backfill") == 0 && from_stage != NULL &&
		strcmp(from_stage, "expand") == 0)
	{
		if (column == NULL)
		{
			SPI_finish();
			PG_RETURN_BOOL(false);
		}
		check_may_backfill(relid, column, GetUserId());
	}
	else
	{
		check_owner_privileges(relid, GetUserId());
		if (column == NULL)
		{
			SPI_finish();
			PG_RETURN_BOOL(false);
		}
	}

	tables_writer_begin(&state);
	if (SPI_execute_with_args("UPDATE tenancy.tables SET stage = $2 "
							  "WHERE relation OPERATOR(pg_catalog.=) $1 "
							  "AND ($3 IS NULL OR stage OPERATOR(pg_catalog.=) $3)",
							  3, argtypes, values, nulls, false, 0) != SPI_OK_UPDATE)
		elog(ERROR, "could not set the stage of table \"%s\"", get_rel_name(relid));
	changed = SPI_processed > 0;
	as_owner_end(&state);
	SPI_finish();
	PG_RETURN_BOOL(changed);
}

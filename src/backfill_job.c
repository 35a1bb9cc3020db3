/*-------------------------------------------------------------------------
 * backfill_job.c
 *	  The only writers of tenancy.backfill_jobs.
 *
 * A job runs as the role that created it (CALL tenancy.backfill() and the
 * background worker's runner switch to it), so whoever can write a job's
 * row chooses the rights its source expression runs with.  No role is
 * granted INSERT, UPDATE or DELETE on the table; these functions write it
 * as the table's owner, and:
 *
 *	- backfill_job_insert() records the caller (GetUserId(), an OID: a
 *	  rename cannot spoof it) as created_by, and only for a table the
 *	  caller may backfill (SELECT on it, UPDATE on the column);
 *	- backfill_job_update() changes only progress and display columns
 *	  (never relation, column_name, source_kind, source, search_path or
 *	  created_by), and only for a caller that has the privileges of the
 *	  job's creator or of the table's owner.
 *
 * They are not SECURITY DEFINER functions: a SECURITY DEFINER routine
 * cannot tell who called it, and the caller is what they check.
 *-------------------------------------------------------------------------
 */
#include "tenancy.h"

#include "access/htup_details.h"
#include "catalog/namespace.h"
#include "catalog/pg_authid.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "lib/stringinfo.h"
#include "miscadmin.h"
#include "utils/acl.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/lsyscache.h"

/* Columns backfill_job_update() may change; the rest are written once. */
static const char *const job_progress_columns[] = {
	"state", "method", "key_columns", "upper_bound", "cursor", "phase",
	"rows_total", "rows_scanned", "rows_done", "batches", "retries",
	"batch_size", "last_batch_ms", "max_batch_ms", "rate", "eta",
	"throttle", "last_error", "pid", "started_at", "updated_at",
	"finished_at", "value_sql", "batch_sql", "options"
};

static Oid
jobs_relid(void)
{
	Oid			relid = get_relname_relid("backfill_jobs",
										  get_namespace_oid("tenancy", false));

	if (!OidIsValid(relid))
		elog(ERROR, "tenancy.backfill_jobs does not exist");
	return relid;
}

/*
 * Become the owner of tenancy.backfill_jobs (a superuser has the privileges
 * of every owner), under SECURITY_RESTRICTED_OPERATION, with the
 * search_path pinned for the statements below.
 */
static void
jobs_writer_begin(AsOwnerState *state)
{
	as_owner_begin(jobs_relid(), BOOTSTRAP_SUPERUSERID, state);
	(void) set_config_option("search_path", "pg_catalog, pg_temp",
							 PGC_USERSET, PGC_S_SESSION, GUC_ACTION_SAVE,
							 true, 0, false);
}

/*
 * tenancy.backfill_job_insert(tbl, column_name, source_kind, source,
 *							   value_sql, search_path, options) -> bigint
 *	  Record a queued job created by the caller; returns its id.
 */
PG_FUNCTION_INFO_V1(tenancy_backfill_job_insert);
Datum
tenancy_backfill_job_insert(PG_FUNCTION_ARGS)
{
	Oid			creator = GetUserId();
	Oid			relid;
	char	   *column;
	AttrNumber	attnum;
	AsOwnerState state;
	Oid			argtypes[8] = {REGCLASSOID, NAMEOID, TEXTOID, TEXTOID, TEXTOID,
							   TEXTOID, JSONBOID, REGROLEOID};
	Datum		values[8];
	char		nulls[8];
	bool		isnull;
	int64		id;

	for (int i = 0; i < 6; i++)
		if (PG_ARGISNULL(i))
			ereport(ERROR,
					(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
					 errmsg("only options may be null")));
	relid = PG_GETARG_OID(0);
	column = NameStr(*PG_GETARG_NAME(1));
	attnum = get_attnum(relid, column);
	if (attnum == InvalidAttrNumber)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_COLUMN),
				 errmsg("column \"%s\" of relation \"%s\" does not exist",
						column, get_rel_name(relid))));
	/* A column's own ACL does not count table-level grants: check both. */
	if (pg_class_aclcheck(relid, creator, ACL_SELECT) != ACLCHECK_OK ||
		(pg_class_aclcheck(relid, creator, ACL_UPDATE) != ACLCHECK_OK &&
		 pg_attribute_aclcheck(relid, attnum, creator, ACL_UPDATE) != ACLCHECK_OK))
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("permission denied to backfill table \"%s\"", get_rel_name(relid)),
				 errdetail("The backfill needs SELECT on the table and UPDATE on column %s.",
						   quote_identifier(column))));

	for (int i = 0; i < 7; i++)
	{
		values[i] = PG_ARGISNULL(i) ? (Datum) 0 : PG_GETARG_DATUM(i);
		nulls[i] = PG_ARGISNULL(i) ? 'n' : ' ';
	}
	values[7] = ObjectIdGetDatum(creator);
	nulls[7] = ' ';

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	jobs_writer_begin(&state);
	if (SPI_execute_with_args("INSERT INTO tenancy.backfill_jobs (relation, column_name, source_kind, source, "
							  "value_sql, search_path, options, created_by) "
							  "VALUES ($1, $2, $3, $4, $5, $6, COALESCE($7, '{}'), $8) RETURNING id",
							  8, argtypes, values, nulls, false, 1) != SPI_OK_INSERT_RETURNING ||
		SPI_processed != 1)
		elog(ERROR, "could not record the backfill job");
	id = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
	as_owner_end(&state);
	SPI_finish();
	PG_RETURN_INT64(id);
}

/*
 * tenancy.backfill_job_update(job_id, changes jsonb) -> void
 *	  Set the progress columns named in changes (options are merged into
 *	  the job's); any other key is an error and nothing changes.
 */
PG_FUNCTION_INFO_V1(tenancy_backfill_job_update);
Datum
tenancy_backfill_job_update(PG_FUNCTION_ARGS)
{
	Oid			caller = GetUserId();
	int64		job_id;
	AsOwnerState state;
	Oid			argtypes[2] = {INT8OID, JSONBOID};
	Datum		values[2];
	Oid			creator;
	Oid			relid;
	bool		isnull;
	StringInfoData sql;
	StringInfoData allowed;
	int			ncols = lengthof(job_progress_columns);

	if (PG_ARGISNULL(0) || PG_ARGISNULL(1))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("job_id and changes must not be null")));
	job_id = PG_GETARG_INT64(0);
	values[0] = PG_GETARG_DATUM(0);
	values[1] = PG_GETARG_DATUM(1);

	initStringInfo(&allowed);
	for (int i = 0; i < ncols; i++)
		appendStringInfo(&allowed, "%s%s", i > 0 ? "," : "", job_progress_columns[i]);

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	jobs_writer_begin(&state);

	if (SPI_execute_with_args("SELECT created_by, relation FROM tenancy.backfill_jobs "
							  "WHERE id OPERATOR(pg_catalog.=) $1 FOR UPDATE",
							  1, argtypes, values, NULL, false, 1) != SPI_OK_SELECT)
		elog(ERROR, "could not read tenancy.backfill_jobs");
	if (SPI_processed != 1)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("backfill job " INT64_FORMAT " does not exist", job_id)));
	creator = DatumGetObjectId(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
	relid = DatumGetObjectId(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2, &isnull));
	if (!has_privs_of_role(caller, creator) &&
		!has_privs_of_role(caller, as_owner_role(relid, BOOTSTRAP_SUPERUSERID)))
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("permission denied to change backfill job " INT64_FORMAT, job_id),
				 errdetail("Only a role with the privileges of the role that created the job or of the owner of table \"%s\" can.",
						   get_rel_name(relid))));

	/* Only the progress columns, and a JSON object. */
	{
		Oid			t2[2] = {JSONBOID, TEXTOID};
		Datum		v2[2] = {values[1], CStringGetTextDatum(allowed.data)};

		if (SPI_execute_with_args("SELECT CASE WHEN pg_catalog.jsonb_typeof($1) OPERATOR(pg_catalog.<>) 'object' "
								  "THEN pg_catalog.jsonb_typeof($1) END, "
								  "(SELECT pg_catalog.min(k) FROM pg_catalog.jsonb_object_keys("
								  "  CASE WHEN pg_catalog.jsonb_typeof($1) OPERATOR(pg_catalog.=) 'object' THEN $1 ELSE '{}' END) k "
								  "  WHERE k OPERATOR(pg_catalog.<>) ALL (pg_catalog.string_to_array($2, ',')))",
								  2, t2, v2, NULL, true, 1) != SPI_OK_SELECT)
			elog(ERROR, "could not check the changes");
		if (!heap_attisnull(SPI_tuptable->vals[0], 1, SPI_tuptable->tupdesc))
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("changes must be a json object, not %s",
							SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1))));
		if (!heap_attisnull(SPI_tuptable->vals[0], 2, SPI_tuptable->tupdesc))
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("column \"%s\" of a backfill job cannot be changed",
							SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2)),
					 errdetail("Only the progress columns can: %s.", allowed.data)));
	}

	initStringInfo(&sql);
	appendStringInfoString(&sql, "UPDATE tenancy.backfill_jobs j SET ");
	for (int i = 0; i < ncols; i++)
	{
		const char *c = job_progress_columns[i];

		appendStringInfo(&sql, "%s%s = CASE WHEN $2 OPERATOR(pg_catalog.?) '%s' THEN %s%s ELSE j.%s END",
						 i > 0 ? ", " : "", c, c,
						 strcmp(c, "options") == 0 ? "j.options OPERATOR(pg_catalog.||) r." : "r.", c, c);
	}
	appendStringInfoString(&sql, " FROM pg_catalog.jsonb_populate_record(NULL::tenancy.backfill_jobs, $2) r "
						   "WHERE j.id OPERATOR(pg_catalog.=) $1");
	if (SPI_execute_with_args(sql.data, 2, argtypes, values, NULL, false, 0) != SPI_OK_UPDATE)
		elog(ERROR, "could not update backfill job " INT64_FORMAT, job_id);
	as_owner_end(&state);
	SPI_finish();
	PG_RETURN_VOID();
}

/*-------------------------------------------------------------------------
 * worker.c
 *	  The background worker that keeps tenancy.migration_status up to date
 *	  in every database of tenancy.worker_databases.
 *
 * Design.  One static "tenancy launcher", connected to no database, wakes
 * up every tenancy.worker_interval seconds, looks the watched databases up
 * in pg_database (a shared catalog) and starts one dynamic "tenancy worker"
 * per database that exists and accepts connections.  A worker runs ONE
 * cycle and exits; the launcher starts the next one at the next interval,
 * unless the previous one is still running.  Like autovacuum workers, and
 * unlike a worker that stays connected, this never holds a database open:
 * DROP DATABASE, ALTER DATABASE RENAME and CREATE DATABASE ... TEMPLATE wait
 * at most one cycle (which the time budget bounds) instead of failing, a
 * later CREATE EXTENSION is picked up by the next cycle, and each cycle
 * starts with fresh caches.  The price is a process start per database per
 * interval, negligible at the default interval of a minute.  What must
 * survive between cycles (the position of an incremental count) lives in
 * tenancy.migration_status, so refresh_status() shares it.
 *
 * A cycle: check the extension is there (if not, say so once in the log and
 * exit), prune status rows of dropped tables, then count each registered
 * table (status.c), each step in its own short transaction under a short
 * lock_timeout.  An error on one table is logged and the cycle goes on.  An
 * incremental count goes on while tenancy.worker_cycle_budget lasts; every
 * table gets at least one step per cycle.
 *-------------------------------------------------------------------------
 */
#include "tenancy.h"

#include "access/htup_details.h"
#include "access/heapam.h"
#include "access/table.h"
#include "access/tableam.h"
#include "access/xact.h"
#include "catalog/pg_authid.h"
#include "catalog/pg_database.h"
#include "commands/dbcommands.h"
#include "commands/extension.h"
#include "catalog/namespace.h"
#include "catalog/pg_type.h"
#include "utils/acl.h"
#include "utils/lsyscache.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "storage/lwlock.h"
#include "storage/proc.h"
#include "storage/shmem.h"
#include "storage/spin.h"
#include "tcop/pquery.h"
#include "tcop/tcopprot.h"
#include "tcop/utility.h"
#include "utils/portal.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "utils/syscache.h"
#include "utils/timestamp.h"
#include "utils/varlena.h"

/* Seconds before the postmaster restarts a launcher that died. */
#define LAUNCHER_RESTART_SECONDS 5
/* At most this many watched databases. */
#define MAX_WATCHED_DATABASES 32

PGDLLEXPORT void tenancy_launcher_main(Datum main_arg);
PGDLLEXPORT void tenancy_worker_main(Datum main_arg);
PGDLLEXPORT void tenancy_backfill_main(Datum main_arg);

/* What a backfill runner is told: where, as whom, which job. */
typedef struct BackfillRunnerArgs
{
	Oid			dboid;
	Oid			roleoid;
	int64		job_id;
} BackfillRunnerArgs;

/* GUCs */
static char *worker_databases = NULL;
static int	worker_interval = 60;
static bool worker_enabled = true;
static char *worker_role = NULL;
static bool worker_run_backfills = true;

/*
 * Shared state: which databases were found without the extension, so that
 * the fact is logged once and not at every cycle.
 */
typedef struct WorkerDbSlot
{
	Oid			dboid;
	bool		noext_logged;
} WorkerDbSlot;

typedef struct WorkerShared
{
	slock_t		mutex;
	WorkerDbSlot slots[MAX_WATCHED_DATABASES];
} WorkerShared;

static WorkerShared *worker_shared = NULL;

/* The launcher's view of each watched database. */
typedef struct WatchedDb
{
	char		name[NAMEDATALEN];
	Oid			oid;
	BackgroundWorkerHandle *handle;
	bool		problem_logged; /* missing or refusing connections, logged */
} WatchedDb;

static WatchedDb watched[MAX_WATCHED_DATABASES];
static int	nwatched = 0;
static bool role_problem_logged = false;
static bool start_problem_logged = false;

static bool
check_worker_databases(char **newval, void **extra, GucSource source)
{
	char	   *raw = pstrdup(*newval);
	List	   *names;
	bool		ok = SplitGUCList(raw, ',', &names);

	if (!ok)
		GUC_check_errdetail("List syntax is invalid.");
	else if (list_length(names) > MAX_WATCHED_DATABASES)
	{
		GUC_check_errdetail("At most %d databases can be watched.", MAX_WATCHED_DATABASES);
		ok = false;
	}
	list_free(names);
	pfree(raw);
	return ok;
}

/* Called by the shared-memory hooks of tenancy.c. */
void
worker_shmem_request(void)
{
	RequestAddinShmemSpace(MAXALIGN(sizeof(WorkerShared)));
}

void
worker_shmem_startup(void)
{
	bool		found;

	LWLockAcquire(AddinShmemInitLock, LW_EXCLUSIVE);
	worker_shared = ShmemInitStruct("tenancy worker", sizeof(WorkerShared), &found);
	if (!found)
	{
		memset(worker_shared, 0, sizeof(WorkerShared));
		SpinLockInit(&worker_shared->mutex);
	}
	LWLockRelease(AddinShmemInitLock);
}

/* The fields every tenancy background worker shares. */
static void
bgw_init(BackgroundWorker *bgw, const char *function, const char *type, int restart_time)
{
	memset(bgw, 0, sizeof(*bgw));
	bgw->bgw_flags = BGWORKER_SHMEM_ACCESS | BGWORKER_BACKEND_DATABASE_CONNECTION;
	bgw->bgw_start_time = BgWorkerStart_RecoveryFinished;
	bgw->bgw_restart_time = restart_time;
	strlcpy(bgw->bgw_library_name, "tenancy", BGW_MAXLEN);
	strlcpy(bgw->bgw_function_name, function, BGW_MAXLEN);
	strlcpy(bgw->bgw_type, type, BGW_MAXLEN);
}

void
tenancy_worker_init(void)
{
	BackgroundWorker bgw;

	DefineCustomStringVariable("tenancy.worker_databases",
							   "Comma-separated databases whose registered tables the background worker counts.",
							   NULL,
							   &worker_databases,
							   "postgres",
							   PGC_SIGHUP,
							   GUC_LIST_INPUT,
							   check_worker_databases, NULL, NULL);
	DefineCustomIntVariable("tenancy.worker_interval",
							"Seconds between two cycles of the background worker.",
							NULL,
							&worker_interval,
							60, 1, 86400,
							PGC_SIGHUP,
							GUC_UNIT_S,
							NULL, NULL, NULL);
	DefineCustomBoolVariable("tenancy.worker_enabled",
							 "Run the background worker that counts unmigrated rows.",
							 NULL,
							 &worker_enabled,
							 true,
							 PGC_SIGHUP,
							 0,
							 NULL, NULL, NULL);
	DefineCustomStringVariable("tenancy.worker_role",
							   "Role the background workers connect as; empty: the bootstrap superuser.",
							   "The role needs LOGIN, SELECT on the registered tables and on tenancy.tables, "
							   "and INSERT, UPDATE, DELETE on tenancy.migration_status.",
							   &worker_role,
							   "",
							   PGC_SIGHUP,
							   0,
							   NULL, NULL, NULL);
	DefineCustomBoolVariable("tenancy.worker_run_backfills",
							 "Let the background worker run the backfill jobs queued with tenancy.queue_backfill().",
							 "When off, queued jobs wait for a CALL tenancy.backfill().",
							 &worker_run_backfills,
							 true,
							 PGC_SIGHUP,
							 0,
							 NULL, NULL, NULL);

	if (!process_shared_preload_libraries_in_progress)
		return;

	bgw_init(&bgw, "tenancy_launcher_main", "tenancy launcher", LAUNCHER_RESTART_SECONDS);
	strlcpy(bgw.bgw_name, "tenancy launcher", BGW_MAXLEN);
	RegisterBackgroundWorker(&bgw);
}

/* ----------------------------------------------------------------------
 * Launcher
 * ----------------------------------------------------------------------
 */

/* Rebuild the list of watched databases from the GUC, keeping state. */
static void
launcher_parse_databases(void)
{
	WatchedDb	old[MAX_WATCHED_DATABASES];
	int			nold = nwatched;
	char	   *raw = pstrdup(worker_databases);
	List	   *names;
	ListCell   *lc;

	memcpy(old, watched, sizeof(WatchedDb) * nold);
	nwatched = 0;
	if (!SplitGUCList(raw, ',', &names))
		names = NIL;			/* the check hook makes this unreachable */
	foreach(lc, names)
	{
		const char *name = lfirst(lc);
		WatchedDb  *w;
		bool		dup = false;

		if (nwatched >= MAX_WATCHED_DATABASES || name[0] == '\0')
			continue;
		for (int i = 0; i < nwatched; i++)
			dup |= strcmp(watched[i].name, name) == 0;
		if (dup)
			continue;
		w = &watched[nwatched++];
		memset(w, 0, sizeof(WatchedDb));
		strlcpy(w->name, name, NAMEDATALEN);
		for (int i = 0; i < nold; i++)
		{
			if (strcmp(old[i].name, name) == 0)
			{
				*w = old[i];
				break;
			}
		}
	}
	list_free(names);
	pfree(raw);
}

/*
 * Look the watched databases and the worker role up in the shared
 * catalogs.  Returns false when the workers cannot start (bad role).
 */
static bool
launcher_resolve(Oid *roleoid)
{
	Relation	rel;
	TableScanDesc scan;
	HeapTuple	tup;
	bool		ok = true;

	for (int i = 0; i < nwatched; i++)
		watched[i].oid = InvalidOid;

	StartTransactionCommand();
	(void) GetTransactionSnapshot();

	rel = table_open(DatabaseRelationId, AccessShareLock);
	scan = table_beginscan_catalog(rel, 0, NULL);
	while ((tup = heap_getnext(scan, ForwardScanDirection)) != NULL)
	{
		Form_pg_database db = (Form_pg_database) GETSTRUCT(tup);

		for (int i = 0; i < nwatched; i++)
		{
			if (strcmp(NameStr(db->datname), watched[i].name) != 0)
				continue;
			if (!db->datallowconn
#ifdef DATCONNLIMIT_INVALID_DB
				|| database_is_invalid_form(db)
#endif
				)
			{
				if (!watched[i].problem_logged)
					ereport(LOG,
							(errmsg("tenancy launcher: database \"%s\" does not accept connections, skipped",
									watched[i].name)));
				watched[i].problem_logged = true;
			}
			else
			{
				if (watched[i].problem_logged)
					ereport(LOG,
							(errmsg("tenancy launcher: database \"%s\" found, watched from now on", watched[i].name)));
				watched[i].problem_logged = false;
				watched[i].oid = db->oid;
			}
		}
	}
	table_endscan(scan);
	table_close(rel, AccessShareLock);

	for (int i = 0; i < nwatched; i++)
	{
		if (OidIsValid(watched[i].oid) || watched[i].problem_logged)
			continue;
		ereport(LOG,
				(errmsg("tenancy launcher: database \"%s\" of tenancy.worker_databases does not exist, skipped",
						watched[i].name)));
		watched[i].problem_logged = true;
	}

	*roleoid = InvalidOid;
	if (worker_role[0] != '\0')
	{
		tup = SearchSysCache1(AUTHNAME, CStringGetDatum(worker_role));
		if (!HeapTupleIsValid(tup) || !((Form_pg_authid) GETSTRUCT(tup))->rolcanlogin)
		{
			if (!role_problem_logged)
				ereport(LOG,
						(errmsg("tenancy launcher: role \"%s\" of tenancy.worker_role does not exist or cannot log in; no worker started",
								worker_role)));
			role_problem_logged = true;
			ok = false;
		}
		else
		{
			*roleoid = ((Form_pg_authid) GETSTRUCT(tup))->oid;
			role_problem_logged = false;
		}
		if (HeapTupleIsValid(tup))
			ReleaseSysCache(tup);
	}
	CommitTransactionCommand();
	return ok;
}

/* Start one worker per watched database whose previous one has ended. */
static void
launcher_cycle(void)
{
	Oid			roleoid;

	pgstat_report_activity(STATE_RUNNING, "tenancy launcher: starting workers");
	if (!launcher_resolve(&roleoid))
		return;
	for (int i = 0; i < nwatched; i++)
	{
		WatchedDb  *w = &watched[i];
		BackgroundWorker bgw;
		pid_t		pid;

		if (!OidIsValid(w->oid))
			continue;
		if (w->handle != NULL)
		{
			if (GetBackgroundWorkerPid(w->handle, &pid) != BGWH_STOPPED)
				continue;		/* still running its cycle: skip this one */
			pfree(w->handle);
			w->handle = NULL;
		}
		bgw_init(&bgw, "tenancy_worker_main", "tenancy worker", BGW_NEVER_RESTART);
		snprintf(bgw.bgw_name, BGW_MAXLEN, "tenancy worker for database %s", w->name);
		bgw.bgw_main_arg = ObjectIdGetDatum(w->oid);
		memcpy(bgw.bgw_extra, &roleoid, sizeof(Oid));
		bgw.bgw_notify_pid = MyProcPid;
		if (!RegisterDynamicBackgroundWorker(&bgw, &w->handle))
		{
			w->handle = NULL;
			if (!start_problem_logged)
				ereport(LOG,
						(errmsg("tenancy launcher: could not start a worker for database \"%s\"", w->name),
						 errhint("Raise max_worker_processes.")));
			start_problem_logged = true;
		}
		else
			start_problem_logged = false;
	}
}

void
tenancy_launcher_main(Datum main_arg)
{
	TimestampTz last_cycle = 0;

	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	pqsignal(SIGTERM, SignalHandlerForShutdownRequest);
	BackgroundWorkerUnblockSignals();
	BackgroundWorkerInitializeConnection(NULL, NULL, 0);
	pgstat_report_appname("tenancy launcher");
	launcher_parse_databases();
	ereport(LOG, (errmsg("tenancy launcher started")));

	while (!ShutdownRequestPending)
	{
		TimestampTz now;
		TimestampTz next;
		long		wait_ms = 3600 * 1000L;
		char		activity[256];

		if (ConfigReloadPending)
		{
			ConfigReloadPending = false;
			ProcessConfigFile(PGC_SIGHUP);
			launcher_parse_databases();
			role_problem_logged = false;
		}

		if (worker_enabled)
		{
			now = GetCurrentTimestamp();
			next = TimestampTzPlusMilliseconds(last_cycle, worker_interval * 1000L);
			if (last_cycle == 0 || now >= next)
			{
				launcher_cycle();
				last_cycle = now;
				next = TimestampTzPlusMilliseconds(now, worker_interval * 1000L);
			}
			wait_ms = Max(1, (long) ((next - GetCurrentTimestamp()) / 1000));
			snprintf(activity, sizeof(activity),
					 "tenancy launcher: idle, interval %d s, databases %s",
					 worker_interval, worker_databases);
		}
		else
			snprintf(activity, sizeof(activity),
					 "tenancy launcher: disabled (tenancy.worker_enabled = off)");
		pgstat_report_activity(STATE_IDLE, activity);

		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 wait_ms, PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
		CHECK_FOR_INTERRUPTS();
	}

	/*
	 * Exit code 1: the postmaster starts the launcher again after
	 * LAUNCHER_RESTART_SECONDS, unless the server is shutting down.
	 */
	ereport(LOG, (errmsg("tenancy launcher shutting down")));
	proc_exit(1);
}

/* ----------------------------------------------------------------------
 * Queued backfills
 *
 * tenancy.queue_backfill() records a job in state 'queued'.  Each cycle
 * starts one "tenancy backfill" worker per queued job; it runs
 * CALL tenancy.backfill(tbl, column_name => col), the engine of the
 * interactive CALL, in a non-atomic SPI context so that the procedure
 * commits after each batch, as the role that queued the job.  The job's
 * progress shows in tenancy.backfill_jobs / tenancy.backfill_progress like
 * any other run, and it no longer depends on the client that queued it.
 * Two runners for one job cannot both run: the procedure takes the table's
 * backfill lock and the second one stops with 55006.
 * ----------------------------------------------------------------------
 */

/* In the cycle worker, with SPI connected: start a runner per queued job. */
static void
worker_start_backfills(Oid dboid, Oid roleoid)
{
	Oid			nsp = get_namespace_oid("tenancy", true);

	if (!worker_run_backfills)
		return;
	if (!OidIsValid(nsp) || !OidIsValid(get_relname_relid("backfill_jobs", nsp)))
		return;					/* the backfill feature is not installed */
	if (SPI_execute("SELECT id FROM tenancy.backfill_jobs "
					"WHERE state OPERATOR(pg_catalog.=) 'queued' ORDER BY id",
					true, 0) != SPI_OK_SELECT)
		elog(ERROR, "could not read tenancy.backfill_jobs");
	for (uint64 i = 0; i < SPI_processed; i++)
	{
		BackgroundWorker bgw;
		BackfillRunnerArgs args;
		BackgroundWorkerHandle *handle;
		bool		isnull;

		args.dboid = dboid;
		args.roleoid = roleoid;
		args.job_id = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 1, &isnull));
		bgw_init(&bgw, "tenancy_backfill_main", "tenancy backfill", BGW_NEVER_RESTART);
		snprintf(bgw.bgw_name, BGW_MAXLEN, "tenancy backfill job " INT64_FORMAT, args.job_id);
		StaticAssertStmt(sizeof(BackfillRunnerArgs) <= BGW_EXTRALEN, "runner arguments too long");
		memcpy(bgw.bgw_extra, &args, sizeof(args));
		if (!RegisterDynamicBackgroundWorker(&bgw, &handle))
			ereport(LOG,
					(errmsg("tenancy worker: could not start a worker for backfill job " INT64_FORMAT, args.job_id),
					 errhint("Raise max_worker_processes; the job stays queued.")));
	}
}

/*
 * Run one statement as a client's top-level statement would run: through
 * an unnamed portal, outside any transaction block, so that a procedure
 * called by it may COMMIT (plain SPI cannot give a procedure the portal
 * snapshot it needs for that).  The caller has started a transaction; it
 * may be another one when this returns.
 */
static void
run_toplevel(const char *sql)
{
	MemoryContext cxt = AllocSetContextCreate(TopMemoryContext, "tenancy statement",
											  ALLOCSET_DEFAULT_SIZES);
	MemoryContext old = MemoryContextSwitchTo(cxt);
	List	   *parsetrees = pg_parse_query(sql);
	RawStmt    *parsetree;
	List	   *querytrees;
	List	   *plantrees;
	Portal		portal;
	DestReceiver *receiver;
	QueryCompletion qc;

	if (list_length(parsetrees) != 1)
		elog(ERROR, "expected one statement: %s", sql);
	parsetree = linitial_node(RawStmt, parsetrees);
	PushActiveSnapshot(GetTransactionSnapshot());
	querytrees = pg_analyze_and_rewrite_fixedparams(parsetree, sql, NULL, 0, NULL);
	plantrees = pg_plan_queries(querytrees, sql, CURSOR_OPT_PARALLEL_OK, NULL);
	PopActiveSnapshot();

	portal = CreatePortal("", true, true);
	portal->visible = false;
	PortalDefineQuery(portal, NULL, sql, CreateCommandTag(parsetree->stmt), plantrees, NULL);
	PortalStart(portal, NULL, 0, InvalidSnapshot);
	receiver = CreateDestReceiver(DestNone);
	(void) PortalRun(portal, FETCH_ALL, true, true, receiver, receiver, &qc);
	receiver->rDestroy(receiver);
	PortalDrop(portal, false);
	MemoryContextSwitchTo(old);
	MemoryContextDelete(cxt);
}

/* Mark a job that is still queued as failed, in a transaction of its own. */
static void
backfill_job_failed(int64 job_id, const char *message)
{
	Oid			types[2] = {INT8OID, TEXTOID};
	Datum		vals[2];

	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	PushActiveSnapshot(GetTransactionSnapshot());
	SPI_connect();
	vals[0] = Int64GetDatum(job_id);
	vals[1] = CStringGetTextDatum(message);
	(void) SPI_execute_with_args("UPDATE tenancy.backfill_jobs SET state = 'failed', last_error = $2, "
								 "updated_at = pg_catalog.now() "
								 "WHERE id OPERATOR(pg_catalog.=) $1 AND state OPERATOR(pg_catalog.=) 'queued'",
								 2, types, vals, NULL, false, 0);
	SPI_finish();
	PopActiveSnapshot();
	CommitTransactionCommand();
}

void
tenancy_backfill_main(Datum main_arg)
{
	BackfillRunnerArgs args;
	Oid			argtypes[1] = {INT8OID};
	Datum		values[1];
	char	   *relid_text = NULL;
	char	   *column = NULL;
	char	   *volatile relname = NULL;
	char	   *creator = NULL;
	Oid			creator_oid = InvalidOid;
	char	   *msg = NULL;
	bool		isnull;
	Oid			save_userid;
	int			save_sec_context;
	char	   *sql;
	MemoryContext top = TopMemoryContext;

	memcpy(&args, MyBgworkerEntry->bgw_extra, sizeof(args));
	values[0] = Int64GetDatum(args.job_id);
	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	pqsignal(SIGTERM, die);
	BackgroundWorkerUnblockSignals();
	BackgroundWorkerInitializeConnectionByOid(args.dboid, args.roleoid, 0);
	pgstat_report_appname("tenancy backfill");

	/* Is the job still queued, and who queued it? */
	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	PushActiveSnapshot(GetTransactionSnapshot());
	SPI_connect();
	if (SPI_execute_with_args("SELECT relation::pg_catalog.oid::pg_catalog.text, column_name::pg_catalog.text, "
							  "relation::pg_catalog.text, created_by::pg_catalog.oid "
							  "FROM tenancy.backfill_jobs "
							  "WHERE id OPERATOR(pg_catalog.=) $1 AND state OPERATOR(pg_catalog.=) 'queued'",
							  1, argtypes, values, NULL, true, 1) != SPI_OK_SELECT)
		elog(ERROR, "could not read tenancy.backfill_jobs");
	if (SPI_processed == 1)
	{
		MemoryContext old = MemoryContextSwitchTo(top);

		relid_text = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1);
		column = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2);
		relname = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 3);
		creator_oid = DatumGetObjectId(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 4, &isnull));
		creator = GetUserNameFromId(creator_oid, true);

		/*
		 * The job runs as its creator, recorded by the API (no role may
		 * write the job table directly); still, never as a role this
		 * worker's role could not become, nor as a superuser other than
		 * this worker's role.
		 */
		if (creator == NULL)
			msg = psprintf("the role that queued the job (OID %u) no longer exists", creator_oid);
		else if (superuser_arg(creator_oid) && creator_oid != GetUserId())
			msg = psprintf("job queued by superuser \"%s\": only that role runs it (CALL tenancy.backfill())", creator);
		else if (!has_privs_of_role(GetUserId(), creator_oid))
			msg = psprintf("the worker's role \"%s\" does not have the privileges of role \"%s\" that queued the job",
						   GetUserNameFromId(GetUserId(), false), creator);
		MemoryContextSwitchTo(old);
	}
	SPI_finish();
	PopActiveSnapshot();
	CommitTransactionCommand();
	if (relid_text == NULL)
		proc_exit(0);			/* already taken or done */
	if (msg != NULL)
	{
		backfill_job_failed(args.job_id, msg);
		ereport(LOG, (errmsg("tenancy: backfill job " INT64_FORMAT " failed: %s", args.job_id, msg)));
		proc_exit(0);
	}

	/*
	 * Run the job as the role that queued it: its privileges, not the
	 * worker's, apply to the table and to the job's source expression.  As
	 * for a SECURITY DEFINER function, SET ROLE and SET SESSION AUTHORIZATION
	 * are refused meanwhile, so the job cannot get the worker's identity back.
	 */
	ereport(LOG,
			(errmsg("tenancy: background backfill of %s (job " INT64_FORMAT ") starts as role \"%s\"",
					relname, args.job_id, creator)));
	sql = psprintf("CALL tenancy.backfill(%s::pg_catalog.regclass, column_name => %s)",
				   quote_literal_cstr(relid_text), quote_literal_cstr(column));
	pgstat_report_activity(STATE_RUNNING, sql);
	GetUserIdAndSecContext(&save_userid, &save_sec_context);
	SetUserIdAndSecContext(creator_oid, save_sec_context | SECURITY_LOCAL_USERID_CHANGE);

	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	PG_TRY();
	{
		run_toplevel(sql);
		CommitTransactionCommand();
	}
	PG_CATCH();
	{
		/*
		 * The engine records its own failures in the job; an error before it
		 * took the job (still queued) must not start a runner at every cycle.
		 */
		ErrorData  *edata;

		HOLD_INTERRUPTS();
		MemoryContextSwitchTo(top);
		edata = CopyErrorData();
		EmitErrorReport();
		AbortOutOfAnyTransaction();
		FlushErrorState();
		SetUserIdAndSecContext(save_userid, save_sec_context);
		backfill_job_failed(args.job_id, edata->message);
		RESUME_INTERRUPTS();
		proc_exit(1);
	}
	PG_END_TRY();
	SetUserIdAndSecContext(save_userid, save_sec_context);

	ereport(LOG,
			(errmsg("tenancy: background backfill of %s (job " INT64_FORMAT ") ended", relname, args.job_id)));
	pgstat_report_activity(STATE_IDLE, NULL);
	proc_exit(0);
}

/* ----------------------------------------------------------------------
 * Worker: one cycle in one database
 * ----------------------------------------------------------------------
 */

/* Log once per database when the extension is missing, and its return. */
static void
worker_note_extension(Oid dboid, bool missing)
{
	WorkerDbSlot *slot = NULL;
	bool		was_logged;

	SpinLockAcquire(&worker_shared->mutex);
	for (int i = 0; i < MAX_WATCHED_DATABASES && slot == NULL; i++)
		if (worker_shared->slots[i].dboid == dboid)
			slot = &worker_shared->slots[i];
	for (int i = 0; i < MAX_WATCHED_DATABASES && slot == NULL; i++)
		if (!OidIsValid(worker_shared->slots[i].dboid))
		{
			slot = &worker_shared->slots[i];
			slot->dboid = dboid;
			slot->noext_logged = false;
		}
	was_logged = slot ? slot->noext_logged : false;
	if (slot)
		slot->noext_logged = missing;
	SpinLockRelease(&worker_shared->mutex);

	if (missing && !was_logged)
		ereport(LOG,
				(errmsg("tenancy worker: extension tenancy is not installed in database \"%s\", skipped until it is",
						get_database_name(dboid))));
	else if (!missing && was_logged)
		ereport(LOG,
				(errmsg("tenancy worker: extension tenancy found in database \"%s\", counting starts",
						get_database_name(dboid))));
}

static void
worker_error_context(void *arg)
{
	errcontext("tenancy worker counting unmigrated rows of %s", ((StatusTable *) arg)->name);
}

/* Run one step for t in its own transaction; false on error or pass end. */
static bool
worker_step(StatusTable *t)
{
	bool		more = false;
	ErrorContextCallback errcb;

	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	PushActiveSnapshot(GetTransactionSnapshot());
	PG_TRY();
	{
		errcb.callback = worker_error_context;
		errcb.arg = t;
		errcb.previous = error_context_stack;
		error_context_stack = &errcb;
		pgstat_report_activity(STATE_RUNNING, psprintf("tenancy: counting %s.%s", t->name,
														quote_identifier(t->column)));
		SPI_connect();
		more = status_step(t->relid, t->column, true);
		SPI_finish();
		error_context_stack = errcb.previous;
		PopActiveSnapshot();
		CommitTransactionCommand();
	}
	PG_CATCH();
	{
		/* Log it, clean up, and let the cycle go on with the next table. */
		HOLD_INTERRUPTS();
		EmitErrorReport();
		AbortOutOfAnyTransaction();
		FlushErrorState();
		RESUME_INTERRUPTS();
		more = false;
	}
	PG_END_TRY();
	return more;
}

void
tenancy_worker_main(Datum main_arg)
{
	Oid			dboid = DatumGetObjectId(main_arg);
	Oid			roleoid;
	TimestampTz deadline;
	List	   *tables;
	ListCell   *lc;
	bool		installed;

	memcpy(&roleoid, MyBgworkerEntry->bgw_extra, sizeof(Oid));
	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	pqsignal(SIGTERM, die);
	BackgroundWorkerUnblockSignals();
	BackgroundWorkerInitializeConnectionByOid(dboid, roleoid, 0);
	pgstat_report_appname("tenancy worker");

	/* Never wait long for a lock, never start parallel workers. */
	SetConfigOption("lock_timeout", "100", PGC_SUSET, PGC_S_OVERRIDE);
	SetConfigOption("max_parallel_workers_per_gather", "0", PGC_SUSET, PGC_S_OVERRIDE);
	SetConfigOption("statement_timeout", "0", PGC_SUSET, PGC_S_OVERRIDE);

	if (!worker_enabled)
		proc_exit(0);
	deadline = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), tenancy_worker_cycle_budget);

	pgstat_report_activity(STATE_RUNNING, "tenancy: reading tenancy.tables");
	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	PushActiveSnapshot(GetTransactionSnapshot());
	installed = OidIsValid(get_extension_oid("tenancy", true));
	worker_note_extension(dboid, !installed);
	tables = NIL;
	if (installed)
	{
		SPI_connect();
		worker_start_backfills(dboid, roleoid);
		status_prune();
		tables = status_tables(InvalidOid, TopMemoryContext);
		SPI_finish();
	}
	PopActiveSnapshot();
	CommitTransactionCommand();

	foreach(lc, tables)
	{
		StatusTable *t = lfirst(lc);

		CHECK_FOR_INTERRUPTS();
		if (ConfigReloadPending)
		{
			ConfigReloadPending = false;
			ProcessConfigFile(PGC_SIGHUP);
			if (!worker_enabled)
				break;
		}
		/* At least one step per table; more while the budget lasts. */
		while (worker_step(t) && GetCurrentTimestamp() < deadline)
			CHECK_FOR_INTERRUPTS();
	}
	pgstat_report_activity(STATE_IDLE, NULL);
	proc_exit(0);
}

/*-------------------------------------------------------------------------
 * backfill.c
 *	  Small C helpers of the batched backfill engine, tenancy.backfill(),
 *	  which is a PL/pgSQL procedure committing after each batch.
 *
 * - whether the CALL runs inside an explicit transaction block, so that
 *   it can refuse with a clear error before doing anything;
 * - a session-level advisory lock per table, so that only one backfill
 *   runs on a table at a time; it is released when the procedure ends,
 *   normally or by an error escaping it (transaction abort callback);
 * - a per-batch statement timeout: statement_timeout is armed once per
 *   top-level statement, so SET inside a procedure does not bound a single
 *   batch; we arm and disarm the statement timer around each batch.
 *-------------------------------------------------------------------------
 */
#include "tenancy.h"

#include "access/xact.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "storage/lock.h"
#include "utils/timeout.h"

/* pg_locks shows the lock as advisory: classid 1952804450 ("tenb"), objid = table. */
#define BACKFILL_LOCK_CLASS 0x74656e62	/* "tenb" */
#define BACKFILL_MAX_LOCKS 16

static Oid	held_locks[BACKFILL_MAX_LOCKS];
static int	n_held_locks = 0;
static bool callback_registered = false;
static bool batch_timer_armed = false;

static void
backfill_locktag(LOCKTAG *tag, Oid relid)
{
	SET_LOCKTAG_ADVISORY(*tag, MyDatabaseId, (uint32) BACKFILL_LOCK_CLASS,
						 (uint32) relid, 2);
}

static void
release_held_locks(void)
{
	LOCKTAG		tag;

	for (int i = 0; i < n_held_locks; i++)
	{
		backfill_locktag(&tag, held_locks[i]);
		LockRelease(&tag, ExclusiveLock, true);
	}
	n_held_locks = 0;
}

/*
 * A transaction abort while a backfill holds its lock means an error
 * escaped the procedure (its batches catch their own errors): let go of
 * the table, and of the batch timer.
 */
static void
backfill_xact_callback(XactEvent event, void *arg)
{
	if (event != XACT_EVENT_ABORT)
		return;
	if (batch_timer_armed)
	{
		disable_timeout(STATEMENT_TIMEOUT, false);
		batch_timer_armed = false;
	}
	if (n_held_locks > 0)
		release_held_locks();
}

void
tenancy_backfill_init(void)
{
	if (!callback_registered)
	{
		RegisterXactCallback(backfill_xact_callback, NULL);
		callback_registered = true;
	}
}

/* True inside BEGIN ... COMMIT, where a procedure cannot commit. */
PG_FUNCTION_INFO_V1(tenancy_in_transaction_block);
Datum
tenancy_in_transaction_block(PG_FUNCTION_ARGS)
{
	PG_RETURN_BOOL(IsTransactionBlock());
}

/* Take the backfill lock of a table without waiting; false if taken. */
PG_FUNCTION_INFO_V1(tenancy_backfill_try_lock);
Datum
tenancy_backfill_try_lock(PG_FUNCTION_ARGS)
{
	Oid			relid = PG_GETARG_OID(0);
	LOCKTAG		tag;

	for (int i = 0; i < n_held_locks; i++)
		if (held_locks[i] == relid)
			PG_RETURN_BOOL(false);	/* a nested backfill of the same table */
	if (n_held_locks >= BACKFILL_MAX_LOCKS)
		ereport(ERROR,
				(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
				 errmsg("too many backfills in one session")));
	backfill_locktag(&tag, relid);
	if (LockAcquire(&tag, ExclusiveLock, true, true) == LOCKACQUIRE_NOT_AVAIL)
		PG_RETURN_BOOL(false);
	held_locks[n_held_locks++] = relid;
	PG_RETURN_BOOL(true);
}

PG_FUNCTION_INFO_V1(tenancy_backfill_unlock);
Datum
tenancy_backfill_unlock(PG_FUNCTION_ARGS)
{
	Oid			relid = PG_GETARG_OID(0);
	LOCKTAG		tag;

	for (int i = 0; i < n_held_locks; i++)
	{
		if (held_locks[i] != relid)
			continue;
		backfill_locktag(&tag, relid);
		LockRelease(&tag, ExclusiveLock, true);
		held_locks[i] = held_locks[--n_held_locks];
		break;
	}
	PG_RETURN_VOID();
}

/*
 * Arm the statement timer for ms milliseconds from now, or disarm it when
 * ms <= 0.  Timeouts surface as SQLSTATE 57014 "canceling statement due to
 * statement timeout" in the statement that runs when the timer fires.
 */
PG_FUNCTION_INFO_V1(tenancy_batch_timeout);
Datum
tenancy_batch_timeout(PG_FUNCTION_ARGS)
{
	int32		ms = PG_ARGISNULL(0) ? 0 : PG_GETARG_INT32(0);

	if (ms > 0)
	{
		enable_timeout_after(STATEMENT_TIMEOUT, ms);
		batch_timer_armed = true;
	}
	else
	{
		disable_timeout(STATEMENT_TIMEOUT, false);
		batch_timer_armed = false;
	}
	PG_RETURN_VOID();
}

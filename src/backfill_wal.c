/*-------------------------------------------------------------------------
 * backfill_wal.c
 *	  Keep a backfill's WAL off the application's commit path: create the
 *	  segments a batch is about to fill before it starts, and have the WAL
 *	  writer flush what a batch has written while it runs.
 *
 * Both come from sampling the wait events of a concurrent workload during
 * a 10M-row backfill (bench/backfill.sh).  An application commit flushes
 * all WAL inserted before its commit record, the backfill's included.
 *
 * Segments.  A backend that writes WAL past the end of the last segment
 * file creates the next one, zero-filling 16 MB while it holds
 * WALWriteLock.  During a bulk backfill that backend is most often an
 * application transaction committing, and every other committer queues
 * behind it (LWLock:WALWrite, IO:WALInitWrite).  The checkpointer
 * pre-creates at most one segment ahead, which a bulk writer outruns.  So
 * between batches the backfill creates the segments its next batch will
 * need, the way the checkpointer does (XLogFileInit, which installs a
 * finished file under ControlFileLock and never takes WALWriteLock), and
 * pays the zero-fill itself.  Bounded: at most TENANCY_WAL_PREALLOC_MAX
 * segments past the insert position, so no caller can fill the disk with
 * it; files that exist are left alone.  A no-op during recovery.
 *
 * Flush-behind.  The WAL writer flushes every wal_writer_delay (200 ms by
 * default); a batch inserts megabytes of WAL in that time, and the next
 * application commit writes and fsyncs all of it (IO:WALWrite).  Each row
 * of a batch passes its new value through tenancy.wal_flush_behind(),
 * which, once this backend has inserted wal_writer_flush_after bytes (and
 * 64 kB) since it last did so, wakes the WAL writer the way an asynchronous commit does
 * (XLogSetAsyncXactLSN).  The WAL writer then flushes in the background,
 * and a commit finds at most about that much left to flush.  Nothing
 * waits: the backfill goes on inserting, and nothing is flushed that
 * would not have been within wal_writer_delay anyway.
 *-------------------------------------------------------------------------
 */
#include "tenancy.h"

#include <sys/stat.h>
#include <unistd.h>

#include "access/xlog.h"
#include "access/xlog_internal.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "postmaster/walwriter.h"

#define TENANCY_WAL_PREALLOC_MAX 16

/*
 * Added to wal_writer_flush_after to make the step between two wake-ups of
 * the WAL writer: it flushes only once that much is pending, counted in
 * whole pages up to the last one completed, so a step of exactly
 * wal_writer_flush_after would often fall a page short.
 */
#define TENANCY_WAL_FLUSH_MARGIN (64 * 1024)

/* End of this backend's WAL when it last woke the WAL writer. */
static XLogRecPtr flush_behind_at = InvalidXLogRecPtr;

PG_FUNCTION_INFO_V1(tenancy_preallocate_wal);

/*
 * tenancy.preallocate_wal(bytes bigint) RETURNS integer
 *
 * Makes sure the segment files covering the next "bytes" of WAL exist;
 * returns how many it created.
 */
Datum
tenancy_preallocate_wal(PG_FUNCTION_ARGS)
{
	int64		bytes = PG_GETARG_INT64(0);
	int			created = 0;
	XLogRecPtr	insert;
	XLogSegNo	first;
	XLogSegNo	last;
	TimeLineID	tli;

	if (bytes <= 0 || RecoveryInProgress())
		PG_RETURN_INT32(0);
	bytes = Min(bytes, (int64) TENANCY_WAL_PREALLOC_MAX * wal_segment_size);

	insert = GetXLogInsertRecPtr();
	tli = GetWALInsertionTimeLine();
	XLByteToSeg(insert, first, wal_segment_size);
	XLByteToSeg(insert + bytes, last, wal_segment_size);

	for (XLogSegNo segno = first + 1; segno <= last; segno++)
	{
		char		path[MAXPGPATH];
		struct stat st;
		int			fd;

		CHECK_FOR_INTERRUPTS();
		XLogFilePath(path, tli, segno, wal_segment_size);
		if (stat(path, &st) == 0)
			continue;
		fd = XLogFileInit(segno, tli);
		close(fd);
		created++;
	}

	PG_RETURN_INT32(created);
}

PG_FUNCTION_INFO_V1(tenancy_wal_flush_behind);

/*
 * tenancy.wal_flush_behind(value anyelement) RETURNS anyelement
 *
 * Returns its argument.  When this backend has inserted more than
 * wal_writer_flush_after bytes of WAL (by 64 kB) since the last time, asks
 * the WAL writer to flush up to the end of it.  Called once per row, so
 * in the common case it only compares two positions.
 */
Datum
tenancy_wal_flush_behind(PG_FUNCTION_ARGS)
{
	XLogRecPtr	end = XactLastRecEnd;
	uint64		step = (uint64) WalWriterFlushAfter * XLOG_BLCKSZ +
		TENANCY_WAL_FLUSH_MARGIN;

	/*
	 * XactLastRecEnd is 0 until this transaction writes WAL (and always on
	 * a standby); WAL positions only grow, across transactions too.
	 */
	if (end != InvalidXLogRecPtr && end >= flush_behind_at + step)
	{
		XLogSetAsyncXactLSN(end);
		flush_behind_at = end;
	}

	if (PG_ARGISNULL(0))
		PG_RETURN_NULL();
	PG_RETURN_DATUM(PG_GETARG_DATUM(0));
}

/*-------------------------------------------------------------------------
 * wal_prealloc.c
 *	  Create the WAL segments a backfill batch is about to fill, before the
 *	  batch starts.
 *
 * A backend that writes WAL past the end of the last segment file creates
 * the next one, zero-filling 16 MB while it holds WALWriteLock.  During a
 * bulk backfill that backend is most often an application transaction
 * committing (its commit flushes the backfill's WAL too), and every other
 * committer queues behind it: measured on the backfill benchmark, the
 * concurrent workload's waits were mostly LWLock:WALWrite and
 * IO:WALInitWrite.  The checkpointer pre-creates at most one segment ahead,
 * which a bulk writer outruns.  So between batches the backfill creates the
 * segments its next batch will need, the way the checkpointer does
 * (XLogFileInit, which installs a finished file under ControlFileLock and
 * never takes WALWriteLock), and pays the zero-fill itself.
 *
 * Bounded: at most TENANCY_WAL_PREALLOC_MAX segments past the current
 * insert position, so no caller can fill the disk with it; files that
 * exist are left alone.  A no-op during recovery and before PostgreSQL 15.
 *-------------------------------------------------------------------------
 */
#include "tenancy.h"

#include <sys/stat.h>
#include <unistd.h>

#include "access/xlog.h"
#include "access/xlog_internal.h"
#include "fmgr.h"
#include "miscadmin.h"

#define TENANCY_WAL_PREALLOC_MAX 16

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

#if PG_VERSION_NUM >= 150000
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
#endif

	PG_RETURN_INT32(created);
}

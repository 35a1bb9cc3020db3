/*-------------------------------------------------------------------------
 * status.h
 *	  Unmigrated-row counts (status.c) and the background workers that
 *	  run them (worker.c).
 *-------------------------------------------------------------------------
 */
#ifndef STATUS_H
#define STATUS_H

#include "nodes/pg_list.h"
#include "utils/palloc.h"

/* A registered table and its tenant column, as the counting code sees it. */
typedef struct StatusTable
{
	Oid			relid;
	char		column[NAMEDATALEN];
	char		name[2 * NAMEDATALEN + 8];	/* schema-qualified, quoted */
} StatusTable;

/* GUC variables (status.c) */
extern int	tenancy_worker_cycle_budget;
extern int	tenancy_worker_chunk_pages;

/* status.c */
extern void tenancy_status_init(void);
extern bool status_step(Oid relid, const char *column, bool in_worker);
extern void status_prune(void);
extern List *status_tables(Oid relid, MemoryContext cxt);
extern int	status_lock_timeout_begin(void);

/* worker.c */
extern void tenancy_worker_init(void);
extern void worker_shmem_request(void);
extern void worker_shmem_startup(void);

#endif							/* STATUS_H */

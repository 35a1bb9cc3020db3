/*-------------------------------------------------------------------------
 * citus_shadow.h
 *	  What the shadow counters and the unmigrated-row count need to know of
 *	  Citus (citus_shadow.c): whether a table is distributed, and whether a
 *	  worker's copy of a distributed table carries the shadow-mode policy.
 *-------------------------------------------------------------------------
 */
#ifndef CITUS_SHADOW_H
#define CITUS_SHADOW_H

extern bool citus_table_distributed(Oid relid);
extern bool citus_shadow_policy(Oid relid);

#endif							/* CITUS_SHADOW_H */

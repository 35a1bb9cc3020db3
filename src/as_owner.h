/*-------------------------------------------------------------------------
 * as_owner.h
 *	  Work on a user table with no more rights than its owner's
 *	  (as_owner.c).
 *-------------------------------------------------------------------------
 */
#ifndef AS_OWNER_H
#define AS_OWNER_H

typedef struct AsOwnerState
{
	Oid			save_userid;
	int			save_sec_context;
	int			save_nestlevel;
} AsOwnerState;

extern Oid	as_owner_role(Oid relid, Oid requester);
extern void as_owner_begin(Oid relid, Oid requester, AsOwnerState *state);
extern void as_owner_end(AsOwnerState *state);

#endif							/* AS_OWNER_H */

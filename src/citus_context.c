/*-------------------------------------------------------------------------
 * citus_context.c
 *	  The tenant context on a Citus cluster: the coordinator forwards the
 *	  tenant (and, under token mode, the tenant token) to the workers, where
 *	  Citus evaluates row-level security.
 *
 * Citus forwards a setting to the workers only when a SET LOCAL statement
 * passes its utility hook inside a transaction block while
 * citus.propagate_set_commands is 'local' (default 'none'); it sends the
 * statement to the worker connections already in the transaction and
 * replays it on every connection the transaction opens later, so the
 * setting ends with the transaction on every node, and no cached worker
 * connection keeps it.  set_config_option() passes no hook: after setting
 * the tenant as on one node, set_tenant() and set_tenant_token() run, by
 * SPI, SET LOCAL citus.propagate_set_commands = 'local' (when it is not
 * already) and SET LOCAL tenancy.tenant_id = '<key>'.
 *
 * Under tenancy.context_source = token a worker refuses a bare key: the
 * coordinator first forwards SET LOCAL tenancy.tenant_token = '<token>',
 * whose check hook verifies the token with the worker's own keys file
 * (token_verify_tenant_key()), and the worker's tenant_id check admits only
 * the key that token names (citus_context_token_admits(), which verifies
 * the token again, so a session-level token outlives neither its exp nor
 * its key), and only on a
 * Citus worker (pg_dist_local_group): on the coordinator or a single node,
 * where the registry is, set_tenant_token() with its registry and
 * membership checks stays the one route.  A client that reaches a worker
 * directly has no other route in.
 *
 * Whether Citus is loaded is decided once per backend; without it the only
 * cost is one test of a static variable per tenant switch.
 *-------------------------------------------------------------------------
 */
#include "tenancy.h"
#include "citus_context.h"

#include "access/heapam.h"
#include "access/htup_details.h"
#include "access/table.h"
#include "access/tableam.h"
#include "access/xact.h"
#include "catalog/pg_namespace.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/lsyscache.h"
#include "utils/snapmgr.h"
#include "utils/memutils.h"

/* -1: not looked yet; 0: Citus absent; 1: Citus loaded. */
static int	citus_state = -1;

/* tenancy.tenant_token, and the key of the verified token in force. */
static char *tenancy_tenant_token = NULL;
static const char *token_key = NULL;

static bool check_tenant_token(char **newval, void **extra, GucSource source);
static void assign_tenant_token(const char *newval, void *extra);

void
tenancy_citus_context_init(void)
{
	DefineCustomStringVariable("tenancy.tenant_token",
							   "A tenant token forwarded to Citus workers (set by tenancy.set_tenant_token()).",
							   "Verified when set, with this node's tenancy.token_keys_file; "
							   "tenancy.tenant_id then admits the key the token names.",
							   &tenancy_tenant_token,
							   "",
							   PGC_USERSET,
							   GUC_NO_SHOW_ALL | GUC_NOT_IN_SAMPLE,
							   check_tenant_token, assign_tenant_token, NULL);
}

bool
citus_context_loaded(void)
{
	if (unlikely(citus_state < 0))
		citus_state = GetConfigOption("citus.propagate_set_commands", true, false) != NULL;
	return citus_state == 1;
}

/*
 * Verify the token; extra: its tenant key.  Errors of the verification
 * become the check's error (same SQLSTATE and message).
 */
static bool
check_tenant_token(char **newval, void **extra, GucSource source)
{
	char		key[TENANT_KEY_MAXLEN + 1];
	char	   *copy;
	MemoryContext mcxt = CurrentMemoryContext;
	ErrorData  *volatile edata = NULL;

	if (*newval == NULL || (*newval)[0] == '\0')
		return true;
	if (source == PGC_S_TEST)
		return true;			/* ALTER ROLE ... SET: verified when applied */
	if (!IsTransactionState())
	{
		GUC_check_errcode(ERRCODE_INSUFFICIENT_PRIVILEGE);
		GUC_check_errmsg("tenancy.tenant_token can only be set in a transaction");
		GUC_check_errhint("Call tenancy.set_tenant_token() with the token.");
		return false;
	}
	PG_TRY();
	{
		token_verify_tenant_key(*newval, key);
	}
	PG_CATCH();
	{
		MemoryContextSwitchTo(mcxt);
		edata = CopyErrorData();
		FlushErrorState();
	}
	PG_END_TRY();
	if (edata != NULL)
	{
		GUC_check_errcode(edata->sqlerrcode);
		GUC_check_errmsg("%s", edata->message);
		if (edata->detail)
			GUC_check_errdetail("%s", edata->detail);
		return false;
	}
	copy = tenancy_guc_strdup(key);
	if (copy == NULL)
		return false;
	*extra = copy;
	return true;
}

static void
assign_tenant_token(const char *newval, void *extra)
{
	token_key = (const char *) extra;
}

/*
 * Is this node a Citus worker?  Citus's pg_dist_local_group holds one row,
 * the node's group: 0 on the coordinator (or a node not added to a
 * cluster), another number on a worker.  Read from the heap, as the
 * bindings are (context.c): no executor, no search_path.
 */
static bool
citus_node_is_worker(void)
{
	Oid			relid;
	Relation	rel;
	TableScanDesc scan;
	Snapshot	snap;
	HeapTuple	tup;
	bool		worker = false;

	if (!citus_context_loaded() || !IsTransactionState())
		return false;
	relid = get_relname_relid("pg_dist_local_group", PG_CATALOG_NAMESPACE);
	if (!OidIsValid(relid))
		return false;
	rel = table_open(relid, AccessShareLock);
	snap = RegisterSnapshot(GetLatestSnapshot());
	scan = table_beginscan(rel, snap, 0, NULL);
	tup = heap_getnext(scan, ForwardScanDirection);
	if (tup != NULL)
	{
		bool		isnull;
		Datum		d = heap_getattr(tup, 1, RelationGetDescr(rel), &isnull);

		worker = !isnull && DatumGetInt32(d) != 0;
	}
	table_endscan(scan);
	UnregisterSnapshot(snap);
	table_close(rel, AccessShareLock);
	return worker;
}

/*
 * Only on a Citus worker: there the registry is empty, and the coordinator
 * has resolved the tenant (known, active, the token's subject a member when
 * required) before forwarding it.  On the coordinator or a single node the
 * tenant comes from set_tenant_token() alone, which checks all that.
 */
bool
citus_context_token_admits(const char *value)
{
	char		key[TENANT_KEY_MAXLEN + 1];
	MemoryContext mcxt = CurrentMemoryContext;
	volatile bool valid = true;

	if (likely(token_key == NULL))
		return false;
	if (value[0] == '\0' || strcmp(token_key, value) != 0 || !citus_node_is_worker())
		return false;

	/*
	 * The token was verified when it was set, maybe for the session and long
	 * ago: verify it again now, so that neither its exp nor the removal of
	 * its key from the keys file can be outlived.
	 */
	PG_TRY();
	{
		token_verify_tenant_key(tenancy_tenant_token, key);
	}
	PG_CATCH();
	{
		MemoryContextSwitchTo(mcxt);
		FlushErrorState();
		valid = false;
	}
	PG_END_TRY();
	return valid && strcmp(key, value) == 0;
}

/* Run one SET LOCAL name = 'value' through SPI, so Citus's hook sees it. */
static void
run_set_local(const char *name, const char *value)
{
	char	   *sql = psprintf("SET LOCAL %s = %s", name, quote_literal_cstr(value));

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	if (SPI_execute(sql, false, 0) != SPI_OK_UTILITY)
		elog(ERROR, "SPI_execute failed: %s", sql);
	SPI_finish();
	pfree(sql);
}

/*
 * Citus propagates SET LOCAL only in a transaction block (outside one the
 * setting ends with the statement anyway) and only while
 * citus.propagate_set_commands is 'local': set it for this transaction.
 */
static bool
forward_prepare(void)
{
	const char *prop;

	if (!citus_context_loaded() || !IsTransactionBlock())
		return false;
	prop = GetConfigOption("citus.propagate_set_commands", true, false);
	if (prop == NULL || strcmp(prop, "local") != 0)
		run_set_local("citus.propagate_set_commands", "local");
	return true;
}

static void
run_set_local_trusted(const char *name, const char *value)
{
	/* The value has passed the checks of the tenant's setter already. */
	tenancy_trusted_setter = true;
	PG_TRY();
	{
		run_set_local(name, value);
	}
	PG_FINALLY();
	{
		tenancy_trusted_setter = false;
	}
	PG_END_TRY();
}

void
citus_context_forward_tenant(const char *value)
{
	if (!forward_prepare())
		return;
	/* A tenant set without a token (or cleared) drops a forwarded token. */
	if (!tenancy_trusted_setter && tenancy_tenant_token != NULL &&
		tenancy_tenant_token[0] != '\0')
		run_set_local("tenancy.tenant_token", "");
	run_set_local_trusted("tenancy.tenant_id", value);
}

void
citus_context_forward_token(const char *token)
{
	if (!forward_prepare())
		return;
	run_set_local("tenancy.tenant_token", token);
}

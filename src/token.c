/*-------------------------------------------------------------------------
 * token.c
 *	  Signed tenant tokens: tenancy.set_tenant_token() verifies a JWT
 *	  (compact JWS) and sets the tenant from one of its claims;
 *	  tenancy.current_user_key() reads the token's subject.
 *
 * Keys are never setting values (a GUC_SUPERUSER_ONLY value is still
 * visible to pg_read_all_settings): tenancy.token_keys_file names a file
 * only the server's operating system user may read, one key per line:
 *
 *	   kid alg key
 *
 * alg is HS256 (key: the shared secret, base64, at least 32 bytes), EdDSA
 * (Ed25519), RS256 (RSA, at least 2048 bits) or ES256 (P-256); for the
 * public-key algorithms key is the base64 of the DER SubjectPublicKeyInfo
 * (a PEM body on one line).  The key decides the algorithm: a token is
 * only checked against keys of the alg its header names, so an HS256 token
 * can never be checked with a public key as its secret (algorithm
 * confusion), and alg "none" matches no key.  The file is read again when
 * its path, inode, size or modification time changes (looked at once a
 * second at most, and after each configuration reload).
 *
 * Verified tokens are cached per backend (TOKEN_CACHE_SIZE entries, least
 * recently used evicted), keyed by the SHA-256 of the token, for the keys
 * generation they were verified with; the claims (expiry, issuer,
 * audience, tenant, membership) are checked again on every call, against
 * the settings in force, so only the signature and the parsing are saved.
 *
 * The token's subject is kept in tenancy.token_user, set with the tenant
 * (same scope, so ROLLBACK, savepoints, RESET and DISCARD treat both
 * alike), as "<length of the tenant key>:<tenant key><subject>"; its check
 * hook accepts a value only from this module (tenancy_trusted_setter) or a
 * parallel worker restoring its leader's, so no other route sets it.
 * current_user_key() returns the subject only while the tenant is the one
 * the token named.
 *-------------------------------------------------------------------------
 */
#include "tenancy.h"
#include "citus_context.h"

#include <sys/stat.h>
#include <unistd.h>

#include <openssl/crypto.h>
#include <openssl/ecdsa.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/core_names.h>
#include <openssl/x509.h>

#include "access/htup_details.h"
#include "access/parallel.h"
#include "access/xact.h"
#include "catalog/namespace.h"
#include "catalog/pg_type.h"
#include "common/base64.h"
#include "common/jsonapi.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "mb/pg_wchar.h"
#include "miscadmin.h"
#include "storage/fd.h"
#include "utils/builtins.h"
#include "utils/jsonb.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/numeric.h"
#include "utils/snapmgr.h"
#include "utils/syscache.h"
#include "utils/timestamp.h"

/* Longest token accepted, in bytes. */
#define TOKEN_MAX_LEN 8192
/* Verified tokens kept per backend. */
#define TOKEN_CACHE_SIZE 64
/* Keys in the keys file, at most; and the longest kid. */
#define TOKEN_MAX_KEYS 64
#define TOKEN_KID_MAXLEN 64
/* Longest line of the keys file. */
#define TOKEN_LINE_MAX 16384

typedef enum TokenAlg
{
	TOKEN_ALG_HS256,
	TOKEN_ALG_EDDSA,
	TOKEN_ALG_RS256,
	TOKEN_ALG_ES256
} TokenAlg;

static const char *const token_alg_names[] = {"HS256", "EdDSA", "RS256", "ES256"};

typedef struct TokenKeyEntry
{
	char		kid[TOKEN_KID_MAXLEN + 1];
	TokenAlg	alg;
	unsigned char *secret;		/* HS256 */
	int			secret_len;
	EVP_MAC_CTX *mac;			/* HS256: HMAC keyed with the secret */
	EVP_PKEY   *pkey;			/* the others */
} TokenKeyEntry;

/* The keys, as read from the file last; malloc'ed. */
static TokenKeyEntry token_keys[TOKEN_MAX_KEYS];
static int	token_nkeys = 0;
static bool token_keys_loaded = false;
static char *token_keys_path = NULL;
static struct stat token_keys_stat;
/* When the file was last looked at (stat), and whether to look again now. */
static TimestampTz token_keys_checked = 0;
/* Bumped on every (re)load: a cached verification is for one generation. */
static uint64 token_keys_generation = 0;

/* SHA-256 and HMAC, fetched once (an implicit fetch per call is slow). */
static EVP_MD *token_sha256 = NULL;
static EVP_MAC *token_hmac = NULL;

typedef struct TokenCacheEntry
{
	bool		used;
	unsigned char hash[32];
	uint64		keys_generation;
	uint64		last_used;
	Jsonb	   *payload;		/* in TopMemoryContext */
} TokenCacheEntry;

static TokenCacheEntry token_cache[TOKEN_CACHE_SIZE];

/* The last header that passed the checks (tokens of one issuer share it). */
#define TOKEN_HEADER_MAXLEN 256
static char last_header[TOKEN_HEADER_MAXLEN];
static int	last_header_len = -1;
static int	last_header_alg;
static char last_header_kid[TOKEN_KID_MAXLEN + 1];
static bool last_header_has_kid;
static uint64 token_cache_clock = 0;

/* GUC variables */
static char *tenancy_token_keys_file = NULL;
static char *tenancy_token_tenant_claim = NULL;
static bool tenancy_token_require_exp = true;
static int	tenancy_token_leeway = 30;
static char *tenancy_token_issuer = NULL;
static char *tenancy_token_audience = NULL;
static bool tenancy_token_require_membership = false;
static char *tenancy_token_user = NULL;

static bool check_token_user(char **newval, void **extra, GucSource source);
static void assign_token_keys_file(const char *newval, void *extra);
static void b64url_init(void);

void
tenancy_token_init(void)
{
	b64url_init();

	DefineCustomStringVariable("tenancy.token_keys_file",
							   "File holding the keys that verify tenant tokens.",
							   "One key per line: kid alg key.  Readable by the server's user only; "
							   "a relative path is relative to the data directory.",
							   &tenancy_token_keys_file,
							   "",
							   PGC_SIGHUP,
							   GUC_SUPERUSER_ONLY,
							   NULL, assign_token_keys_file, NULL);

	DefineCustomStringVariable("tenancy.token_tenant_claim",
							   "Name of the claim of a tenant token that holds the tenant.",
							   NULL,
							   &tenancy_token_tenant_claim,
							   "tenant_id",
							   PGC_SUSET,
							   0,
							   NULL, NULL, NULL);

	DefineCustomBoolVariable("tenancy.token_require_exp",
							 "Refuse tenant tokens without an exp claim.",
							 NULL,
							 &tenancy_token_require_exp,
							 true,
							 PGC_SUSET,
							 0,
							 NULL, NULL, NULL);

	DefineCustomIntVariable("tenancy.token_leeway",
							"Clock skew allowed when checking exp, nbf and iat of tenant tokens.",
							NULL,
							&tenancy_token_leeway,
							30, 0, 3600,
							PGC_SUSET,
							GUC_UNIT_S,
							NULL, NULL, NULL);

	DefineCustomStringVariable("tenancy.token_issuer",
							   "When set, tenant tokens must carry this iss claim.",
							   NULL,
							   &tenancy_token_issuer,
							   "",
							   PGC_SUSET,
							   0,
							   NULL, NULL, NULL);

	DefineCustomStringVariable("tenancy.token_audience",
							   "When set, the aud claim of tenant tokens must be or contain this value.",
							   NULL,
							   &tenancy_token_audience,
							   "",
							   PGC_SUSET,
							   0,
							   NULL, NULL, NULL);

	DefineCustomBoolVariable("tenancy.token_require_membership",
							 "Require the sub claim of a tenant token to be a member of its tenant.",
							 "Members are listed in tenancy.memberships.",
							 &tenancy_token_require_membership,
							 false,
							 PGC_SUSET,
							 0,
							 NULL, NULL, NULL);

	DefineCustomStringVariable("tenancy.token_user",
							   "The verified tenant token's subject (set by tenancy.set_tenant_token() only).",
							   "Read it with tenancy.current_user_key().",
							   &tenancy_token_user,
							   "",
							   PGC_USERSET,
							   GUC_NO_SHOW_ALL | GUC_NOT_IN_SAMPLE,
							   check_token_user, NULL, NULL);
}

/* A configuration reload: look at the keys file again on the next call. */
static void
assign_token_keys_file(const char *newval, void *extra)
{
	token_keys_checked = 0;
}

/*
 * Only this module, or a parallel worker restoring its leader's state, sets
 * tenancy.token_user; anyone may clear it.
 */
static bool
check_token_user(char **newval, void **extra, GucSource source)
{
	if (*newval == NULL || (*newval)[0] == '\0')
		return true;
	if (tenancy_trusted_setter || InitializingParallelWorker)
		return true;
	GUC_check_errcode(ERRCODE_INSUFFICIENT_PRIVILEGE);
	GUC_check_errmsg("tenancy.token_user is set by tenancy.set_tenant_token() only");
	GUC_check_errhint("Verify a tenant token with tenancy.set_tenant_token().");
	return false;
}

/* ---- errors ---- */

static void
token_malformed(const char *detail)
{
	ereport(ERROR,
			(errcode(ERRCODE_INVALID_TEXT_REPRESENTATION),
			 errmsg("malformed tenant token"),
			 errdetail("%s", detail),
			 errhint("Pass a JWT in compact form: three base64url parts separated by dots.")));
}

static void
token_refused(const char *msg, const char *detail)
{
	ereport(ERROR,
			(errcode(ERRCODE_INVALID_AUTHORIZATION_SPECIFICATION),
			 errmsg("%s", msg),
			 detail ? errdetail("%s", detail) : 0));
}

static void
token_bad_claim(const char *claim, const char *detail)
{
	ereport(ERROR,
			(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
			 errmsg("invalid claim \"%s\" in tenant token", claim),
			 errdetail("%s", detail)));
}

/* ---- base64url ---- */

/* base64url digit values, -1 for anything else (filled once). */
static int8 b64url_values[256];

static void
b64url_init(void)
{
	const char *digits = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

	memset(b64url_values, -1, sizeof(b64url_values));
	for (int i = 0; i < 64; i++)
		b64url_values[(unsigned char) digits[i]] = (int8) i;
}

/*
 * Strict base64url without padding: only the 64 characters, no length of 1
 * modulo 4, unused trailing bits zero (one encoding per value).  Returns
 * the decoded length; the output is NUL-terminated.
 */
static int
b64url_decode(const char *src, int len, unsigned char **out, const char *part)
{
	unsigned char *dst = palloc(len * 3 / 4 + 2);
	int			n = 0;
	uint32		acc = 0;
	int			bits = 0;

	if (len % 4 == 1)
		token_malformed(psprintf("The %s has an impossible base64url length.", part));
	for (int i = 0; i < len; i++)
	{
		int			v = b64url_values[(unsigned char) src[i]];

		if (v < 0)
			token_malformed(psprintf("The %s holds a character outside base64url (without padding).", part));
		acc = (acc << 6) | (uint32) v;
		bits += 6;
		if (bits >= 8)
		{
			bits -= 8;
			dst[n++] = (unsigned char) ((acc >> bits) & 0xFF);
		}
	}
	if (bits > 0 && (acc & ((1U << bits) - 1)) != 0)
		token_malformed(psprintf("The %s is not canonical base64url (unused bits set).", part));
	dst[n] = '\0';
	*out = dst;
	return n;
}

/* ---- JSON ---- */

/* Parse a JSON object into jsonb, or report the token malformed. */
static Jsonb *
parse_object(unsigned char *json, int len, const char *part)
{
	Jsonb	   *volatile jb = NULL;
	MemoryContext mcxt = CurrentMemoryContext;

	if ((int) strlen((char *) json) != len)
		token_malformed(psprintf("The %s holds a NUL byte.", part));
	if (pg_verifymbstr((char *) json, len, true) == false)
		token_malformed(psprintf("The %s is not valid in the database encoding.", part));

	/*
	 * One parse (a separate validation pass doubled the cost); jsonb_in's
	 * own error would quote the text, ours replaces it.  The error is
	 * raised again at once, so nothing needs cleaning up.
	 */
	PG_TRY();
	{
		jb = DatumGetJsonbP(DirectFunctionCall1(jsonb_in, CStringGetDatum((char *) json)));
	}
	PG_CATCH();
	{
		MemoryContextSwitchTo(mcxt);
		FlushErrorState();
		jb = NULL;
	}
	PG_END_TRY();
	if (jb == NULL)
		token_malformed(psprintf("The %s is not valid JSON.", part));
	if (!JB_ROOT_IS_OBJECT(jb) || JB_ROOT_IS_SCALAR(jb))
		token_malformed(psprintf("The %s is not a JSON object.", part));
	return jb;
}

static JsonbValue *
json_get(Jsonb *jb, const char *name)
{
	JsonbValue	k;

	k.type = jbvString;
	k.val.string.val = (char *) name;
	k.val.string.len = strlen(name);
	return findJsonbValueFromContainer(&jb->root, JB_FOBJECT, &k);
}

static char *
json_string(JsonbValue *v)
{
	return pnstrdup(v->val.string.val, v->val.string.len);
}

static bool
json_string_is(JsonbValue *v, const char *s)
{
	return v->type == jbvString && v->val.string.len == (int) strlen(s) &&
		memcmp(v->val.string.val, s, v->val.string.len) == 0;
}

/* A NumericDate claim, or false when absent; 22023 when not a number. */
static bool
json_time(Jsonb *jb, const char *name, double *out)
{
	JsonbValue *v = json_get(jb, name);

	if (v == NULL)
		return false;
	if (v->type != jbvNumeric)
		token_bad_claim(name, "A time claim is a number of seconds since 1970-01-01 UTC.");
	*out = DatumGetFloat8(DirectFunctionCall1(numeric_float8, NumericGetDatum(v->val.numeric)));
	return true;
}

/* ---- keys ---- */

static void
token_crypto_init(void)
{
	if (token_sha256 == NULL)
		token_sha256 = EVP_MD_fetch(NULL, "SHA256", NULL);
	if (token_hmac == NULL)
		token_hmac = EVP_MAC_fetch(NULL, "HMAC", NULL);
	if (token_sha256 == NULL || token_hmac == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_SYSTEM_ERROR),
				 errmsg("could not load SHA-256 or HMAC from OpenSSL")));
}

static void
token_keys_free(void)
{
	for (int i = 0; i < token_nkeys; i++)
	{
		if (token_keys[i].mac != NULL)
			EVP_MAC_CTX_free(token_keys[i].mac);
		if (token_keys[i].secret != NULL)
		{
			explicit_bzero(token_keys[i].secret, token_keys[i].secret_len);
			free(token_keys[i].secret);
		}
		if (token_keys[i].pkey != NULL)
			EVP_PKEY_free(token_keys[i].pkey);
	}
	memset(token_keys, 0, sizeof(token_keys));
	token_nkeys = 0;
	token_keys_loaded = false;
}

static void
keys_file_error(const char *path, int lineno, const char *detail)
{
	token_keys_free();
	ereport(ERROR,
			(errcode(ERRCODE_CONFIG_FILE_ERROR),
			 errmsg("invalid tenant token keys file \"%s\" at line %d", path, lineno),
			 errdetail("%s", detail),
			 errhint("Each line is: kid alg key, alg one of HS256, EdDSA, RS256, ES256.")));
}

/* Parse one "kid alg key" line into token_keys[token_nkeys]. */
static void
keys_file_line(const char *path, int lineno, char *line)
{
	char	   *save;
	char	   *kid = strtok_r(line, " \t", &save);
	char	   *alg = kid ? strtok_r(NULL, " \t", &save) : NULL;
	char	   *key = alg ? strtok_r(NULL, " \t", &save) : NULL;
	TokenKeyEntry *e = &token_keys[token_nkeys];
	int			a;
	int			dlen;
	char	   *der;

	if (key == NULL || strtok_r(NULL, " \t", &save) != NULL)
		keys_file_error(path, lineno, "A key line has three fields.");
	if (strlen(kid) > TOKEN_KID_MAXLEN)
		keys_file_error(path, lineno, "A kid is at most 64 bytes.");
	for (int i = 0; i < token_nkeys; i++)
		if (strcmp(token_keys[i].kid, kid) == 0)
			keys_file_error(path, lineno, "Two keys have the same kid.");
	if (token_nkeys >= TOKEN_MAX_KEYS)
		keys_file_error(path, lineno, "The file holds more than 64 keys.");
	for (a = 0; a < (int) lengthof(token_alg_names); a++)
		if (strcmp(alg, token_alg_names[a]) == 0)
			break;
	if (a == (int) lengthof(token_alg_names))
		keys_file_error(path, lineno, "Unknown algorithm.");

	der = palloc(pg_b64_dec_len(strlen(key)));
	dlen = pg_b64_decode(key, strlen(key), der, pg_b64_dec_len(strlen(key)));
	if (dlen <= 0)
		keys_file_error(path, lineno, "The key is not valid base64.");

	strlcpy(e->kid, kid, sizeof(e->kid));
	e->alg = (TokenAlg) a;
	if (e->alg == TOKEN_ALG_HS256)
	{
		if (dlen < 32)
		{
			explicit_bzero(der, dlen);
			keys_file_error(path, lineno, "An HS256 secret has at least 32 bytes.");
		}
		e->secret = malloc(dlen);
		if (e->secret == NULL)
			ereport(ERROR, (errcode(ERRCODE_OUT_OF_MEMORY), errmsg("out of memory")));
		memcpy(e->secret, der, dlen);
		e->secret_len = dlen;
		explicit_bzero(der, dlen);
		{
			OSSL_PARAM	params[2];

			params[0] = OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, "SHA256", 0);
			params[1] = OSSL_PARAM_construct_end();
			e->mac = EVP_MAC_CTX_new(token_hmac);
			token_nkeys++;		/* freed by keys_file_error */
			if (e->mac == NULL || EVP_MAC_init(e->mac, e->secret, e->secret_len, params) != 1)
				keys_file_error(path, lineno, "OpenSSL could not set up HMAC-SHA256 with the key.");
			token_nkeys--;
		}
	}
	else
	{
		const unsigned char *p = (const unsigned char *) der;
		EVP_PKEY   *pkey = d2i_PUBKEY(NULL, &p, dlen);
		bool		fits = false;

		if (pkey == NULL || p != (const unsigned char *) der + dlen)
		{
			if (pkey)
				EVP_PKEY_free(pkey);
			keys_file_error(path, lineno, "The key is not a DER SubjectPublicKeyInfo (base64).");
		}
		switch (e->alg)
		{
			case TOKEN_ALG_EDDSA:
				fits = EVP_PKEY_get_base_id(pkey) == EVP_PKEY_ED25519;
				break;
			case TOKEN_ALG_RS256:
				fits = EVP_PKEY_get_base_id(pkey) == EVP_PKEY_RSA && EVP_PKEY_get_bits(pkey) >= 2048;
				break;
			case TOKEN_ALG_ES256:
				{
					char		group[64];
					size_t		glen;

					fits = EVP_PKEY_get_base_id(pkey) == EVP_PKEY_EC &&
						EVP_PKEY_get_group_name(pkey, group, sizeof(group), &glen) == 1 &&
						strcmp(group, "prime256v1") == 0;
					break;
				}
			case TOKEN_ALG_HS256:
				break;
		}
		e->pkey = pkey;
		if (!fits)
		{
			token_nkeys++;		/* freed by keys_file_error */
			keys_file_error(path, lineno,
							"The key does not fit its algorithm (EdDSA: Ed25519; RS256: RSA of 2048 bits or more; ES256: P-256).");
		}
	}
	token_nkeys++;
}

/* Read the keys file again when it changed; error when there is none. */
static void
token_keys_refresh(void)
{
	const char *path = tenancy_token_keys_file;
	struct stat st;
	FILE	   *f;
	char	   *line;
	volatile int lineno = 0;
	TimestampTz now;

	if (path == NULL || path[0] == '\0')
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("no tenant token keys are configured"),
				 errhint("Set tenancy.token_keys_file in postgresql.conf and reload.")));
	/* A stat() per call costs more than an HS256 check: once a second. */
	now = GetCurrentTimestamp();
	if (token_keys_loaded && token_keys_path != NULL && strcmp(token_keys_path, path) == 0 &&
		token_keys_checked != 0 && now - token_keys_checked < USECS_PER_SEC &&
		now >= token_keys_checked)
		return;
	token_keys_checked = now;
	if (stat(path, &st) != 0)
	{
		int			save_errno = errno;

		token_keys_free();
		errno = save_errno;
		ereport(ERROR,
				(errcode_for_file_access(),
				 errmsg("could not read tenant token keys file \"%s\": %m", path)));
	}
	if (token_keys_loaded && token_keys_path != NULL && strcmp(token_keys_path, path) == 0 &&
		st.st_ino == token_keys_stat.st_ino && st.st_dev == token_keys_stat.st_dev &&
		st.st_size == token_keys_stat.st_size &&
		st.st_mtim.tv_sec == token_keys_stat.st_mtim.tv_sec &&
		st.st_mtim.tv_nsec == token_keys_stat.st_mtim.tv_nsec &&
		st.st_ctim.tv_sec == token_keys_stat.st_ctim.tv_sec &&
		st.st_ctim.tv_nsec == token_keys_stat.st_ctim.tv_nsec)
		return;

	token_keys_free();
	token_keys_generation++;
	if (!S_ISREG(st.st_mode) || st.st_uid != geteuid() || (st.st_mode & (S_IRWXG | S_IRWXO)) != 0)
		ereport(ERROR,
				(errcode(ERRCODE_CONFIG_FILE_ERROR),
				 errmsg("tenant token keys file \"%s\" has group or world access, or is not the server's", path),
				 errdetail("The file must be a regular file owned by the database server's user with permissions u=rw (0600) or less."),
				 errhint("chmod 0600 the file, as the server's user.")));

	f = AllocateFile(path, "r");
	if (f == NULL)
		ereport(ERROR,
				(errcode_for_file_access(),
				 errmsg("could not open tenant token keys file \"%s\": %m", path)));
	line = palloc(TOKEN_LINE_MAX);
	PG_TRY();
	{
		while (fgets(line, TOKEN_LINE_MAX, f) != NULL)
		{
			size_t		len = strlen(line);
			char	   *p = line;

			CHECK_FOR_INTERRUPTS();
			lineno++;
			if (len == TOKEN_LINE_MAX - 1 && line[len - 1] != '\n')
				keys_file_error(path, lineno, "The line is too long.");
			while (len > 0 && (line[len - 1] == '\n' || line[len - 1] == '\r' ||
							   line[len - 1] == ' ' || line[len - 1] == '\t'))
				line[--len] = '\0';
			while (*p == ' ' || *p == '\t')
				p++;
			if (*p == '\0' || *p == '#')
				continue;
			keys_file_line(path, lineno, p);
		}
		if (ferror(f))
			ereport(ERROR,
					(errcode_for_file_access(),
					 errmsg("could not read tenant token keys file \"%s\": %m", path)));
	}
	PG_FINALLY();
	{
		explicit_bzero(line, TOKEN_LINE_MAX);
		FreeFile(f);
	}
	PG_END_TRY();

	if (token_keys_path != NULL)
		free(token_keys_path);
	token_keys_path = strdup(path);
	if (token_keys_path == NULL)
		ereport(ERROR, (errcode(ERRCODE_OUT_OF_MEMORY), errmsg("out of memory")));
	token_keys_stat = st;
	token_keys_loaded = true;
}

/* ---- signatures ---- */

static bool
verify_with_key(TokenKeyEntry *key, const char *input, int input_len,
				const unsigned char *sig, int sig_len)
{
	EVP_MD_CTX *ctx;
	bool		ok = false;
	unsigned char *der = NULL;
	int			der_len = 0;

	if (key->alg == TOKEN_ALG_HS256)
	{
		unsigned char mac[EVP_MAX_MD_SIZE];
		size_t		mac_len = 0;
		EVP_MAC_CTX *mctx = EVP_MAC_CTX_dup(key->mac);

		if (mctx != NULL &&
			EVP_MAC_update(mctx, (const unsigned char *) input, input_len) == 1 &&
			EVP_MAC_final(mctx, mac, &mac_len, sizeof(mac)) == 1)
			ok = (sig_len == (int) mac_len && CRYPTO_memcmp(mac, sig, mac_len) == 0);
		EVP_MAC_CTX_free(mctx);
		explicit_bzero(mac, sizeof(mac));
		return ok;
	}

	if (key->alg == TOKEN_ALG_ES256)
	{
		/* JWS carries r || s, 32 bytes each; OpenSSL wants DER. */
		ECDSA_SIG  *es;
		BIGNUM	   *r;
		BIGNUM	   *s;

		if (sig_len != 64)
			return false;
		es = ECDSA_SIG_new();
		r = BN_bin2bn(sig, 32, NULL);
		s = BN_bin2bn(sig + 32, 32, NULL);
		if (es == NULL || r == NULL || s == NULL || ECDSA_SIG_set0(es, r, s) != 1)
		{
			BN_free(r);
			BN_free(s);
			ECDSA_SIG_free(es);
			return false;
		}
		der_len = i2d_ECDSA_SIG(es, &der);
		ECDSA_SIG_free(es);
		if (der_len <= 0)
			return false;
		sig = der;
		sig_len = der_len;
	}

	ctx = EVP_MD_CTX_new();
	if (ctx != NULL &&
		EVP_DigestVerifyInit(ctx, NULL, key->alg == TOKEN_ALG_EDDSA ? NULL : token_sha256,
							 NULL, key->pkey) == 1 &&
		EVP_DigestVerify(ctx, sig, sig_len, (const unsigned char *) input, input_len) == 1)
		ok = true;
	EVP_MD_CTX_free(ctx);
	if (der != NULL)
		OPENSSL_free(der);
	return ok;
}

/*
 * Verify a token's signature and return its payload, from the cache when
 * this token was verified with the current keys.
 */
static Jsonb *
token_verify(const char *token)
{
	int			len = strlen(token);
	const char *dot1;
	const char *dot2;
	unsigned char hash[32];
	unsigned char *header_json;
	unsigned char *payload_json;
	unsigned char *sig;
	int			header_len;
	int			payload_len;
	int			sig_len;
	Jsonb	   *header;
	Jsonb	   *payload;
	JsonbValue *alg_v;
	JsonbValue *kid_v;
	int			alg;
	char	   *kid = NULL;
	bool		verified = false;
	bool		candidate = false;
	TokenCacheEntry *slot;

	if (len > TOKEN_MAX_LEN)
		token_malformed(psprintf("The token is longer than %d bytes.", TOKEN_MAX_LEN));

	/*
	 * The cache first: the same bytes, verified with the keys in force (with
	 * no keys configured nothing is cached; the checks below say why).
	 */
	token_crypto_init();
	if (EVP_Digest(token, len, hash, NULL, token_sha256, NULL) != 1)
		elog(ERROR, "SHA-256 failed");
	slot = &token_cache[0];
	if (tenancy_token_keys_file != NULL && tenancy_token_keys_file[0] != '\0')
	{
		token_keys_refresh();
		for (int i = 0; i < TOKEN_CACHE_SIZE; i++)
		{
			TokenCacheEntry *e = &token_cache[i];

			if (e->used && e->keys_generation == token_keys_generation &&
				memcmp(e->hash, hash, sizeof(hash)) == 0)
			{
				e->last_used = ++token_cache_clock;
				return e->payload;
			}
		}
	}

	dot1 = strchr(token, '.');
	dot2 = dot1 ? strchr(dot1 + 1, '.') : NULL;
	if (dot1 == NULL || dot2 == NULL || strchr(dot2 + 1, '.') != NULL)
		token_malformed("A compact JWS has exactly three parts.");
	if (dot1 == token || dot2 == dot1 + 1)
		token_malformed("The header and the payload must not be empty.");

	/* The decoding is strict: different bytes are a different token. */
	payload_len = b64url_decode(dot1 + 1, dot2 - dot1 - 1, &payload_json, "payload");
	sig_len = b64url_decode(dot2 + 1, len - (dot2 + 1 - token), &sig, "signature");
	if (last_header_len == dot1 - token && memcmp(last_header, token, last_header_len) == 0)
	{
		alg = last_header_alg;
		kid = last_header_has_kid ? last_header_kid : NULL;
		if (sig_len == 0)
			token_refused("tenant token refused", "The token is not signed.");
		goto header_done;
	}
	header_len = b64url_decode(token, dot1 - token, &header_json, "header");

	header = parse_object(header_json, header_len, "header");
	alg_v = json_get(header, "alg");
	if (alg_v == NULL || alg_v->type != jbvString)
		token_refused("tenant token refused", "The header names no algorithm.");
	for (alg = 0; alg < (int) lengthof(token_alg_names); alg++)
		if (json_string_is(alg_v, token_alg_names[alg]))
			break;
	if (alg == (int) lengthof(token_alg_names))
		token_refused("tenant token refused",
					  "The algorithm is not one of HS256, EdDSA, RS256, ES256 (\"none\" is never accepted).");
	if (json_get(header, "crit") != NULL)
		token_refused("tenant token refused", "The header has critical extensions (crit), none of which are supported.");
	kid_v = json_get(header, "kid");
	if (kid_v != NULL)
	{
		if (kid_v->type != jbvString)
			token_malformed("The kid of the header is not a string.");
		kid = json_string(kid_v);
		if (strlen(kid) > TOKEN_KID_MAXLEN || strlen(kid) != (size_t) kid_v->val.string.len)
			token_refused("tenant token refused", "No key has such a kid.");
	}
	if (sig_len == 0)
		token_refused("tenant token refused", "The token is not signed.");
	if (dot1 - token <= TOKEN_HEADER_MAXLEN)
	{
		memcpy(last_header, token, dot1 - token);
		last_header_len = dot1 - token;
		last_header_alg = alg;
		last_header_has_kid = (kid != NULL);
		if (kid != NULL)
			strlcpy(last_header_kid, kid, sizeof(last_header_kid));
	}

header_done:
	token_keys_refresh();

	/* Where it will be kept: a free entry, else the least recently used. */
	for (int i = 0; i < TOKEN_CACHE_SIZE; i++)
	{
		TokenCacheEntry *e = &token_cache[i];

		if (!e->used || e->keys_generation != token_keys_generation)
		{
			slot = e;
			break;
		}
		if (e->last_used < slot->last_used)
			slot = e;
	}

	for (int i = 0; i < token_nkeys && !verified; i++)
	{
		TokenKeyEntry *k = &token_keys[i];

		if (kid != NULL && strcmp(k->kid, kid) != 0)
			continue;
		if ((int) k->alg != alg)
		{
			/* The kid's key is of another algorithm: confusion. */
			if (kid != NULL)
				token_refused("tenant token refused",
							  psprintf("Key \"%s\" is an %s key; the token says %s.",
									   k->kid, token_alg_names[k->alg], token_alg_names[alg]));
			continue;
		}
		candidate = true;
		verified = verify_with_key(k, token, dot2 - token, sig, sig_len);
	}
	if (!candidate)
	{
		if (kid != NULL)
			token_refused("tenant token refused",
						  psprintf("No key has kid \"%s\".", kid));
		token_refused("tenant token refused",
					  psprintf("No key is configured for %s.", token_alg_names[alg]));
	}
	if (!verified)
		token_refused("tenant token refused", "The signature does not verify.");

	payload = parse_object(payload_json, payload_len, "payload");

	/* Keep it. */
	if (slot->used && slot->payload != NULL)
		pfree(slot->payload);
	slot->used = false;
	slot->payload = MemoryContextAlloc(TopMemoryContext, VARSIZE(payload));
	memcpy(slot->payload, payload, VARSIZE(payload));
	memcpy(slot->hash, hash, sizeof(hash));
	slot->keys_generation = token_keys_generation;
	slot->last_used = ++token_cache_clock;
	slot->used = true;
	return slot->payload;
}

/* Drop a cached token (expired: it will never verify again). */
static void
token_cache_forget(Jsonb *payload)
{
	for (int i = 0; i < TOKEN_CACHE_SIZE; i++)
		if (token_cache[i].used && token_cache[i].payload == payload)
		{
			pfree(token_cache[i].payload);
			token_cache[i].payload = NULL;
			token_cache[i].used = false;
		}
}

/* ---- claims ---- */

static void
check_times(Jsonb *payload)
{
	double		now = (double) timestamptz_to_time_t(GetCurrentTimestamp());
	double		leeway = tenancy_token_leeway;
	double		t;

	if (json_time(payload, "exp", &t))
	{
		if (now > t + leeway)
		{
			token_cache_forget(payload);
			token_refused("tenant token has expired", NULL);
		}
	}
	else if (tenancy_token_require_exp)
		token_refused("tenant token refused", "The token has no exp claim (tenancy.token_require_exp is on).");
	if (json_time(payload, "nbf", &t) && now + leeway < t)
		token_refused("tenant token is not valid yet", "Its nbf claim is in the future.");
	if (json_time(payload, "iat", &t) && now + leeway < t)
		token_refused("tenant token is not valid yet", "Its iat claim is in the future.");
}

static void
check_issuer_audience(Jsonb *payload)
{
	if (tenancy_token_issuer != NULL && tenancy_token_issuer[0] != '\0')
	{
		JsonbValue *v = json_get(payload, "iss");

		if (v == NULL || !json_string_is(v, tenancy_token_issuer))
			token_refused("tenant token refused", "Its iss claim is not tenancy.token_issuer.");
	}
	if (tenancy_token_audience != NULL && tenancy_token_audience[0] != '\0')
	{
		JsonbValue *v = json_get(payload, "aud");
		bool		found = false;

		if (v != NULL && v->type == jbvString)
			found = json_string_is(v, tenancy_token_audience);
		else if (v != NULL && v->type == jbvBinary)
		{
			JsonbIterator *it = JsonbIteratorInit(v->val.binary.data);
			JsonbValue	elem;
			JsonbIteratorToken tok;
			int			depth = 0;

			while ((tok = JsonbIteratorNext(&it, &elem, false)) != WJB_DONE)
			{
				if (tok == WJB_BEGIN_ARRAY || tok == WJB_BEGIN_OBJECT)
					depth++;
				else if (tok == WJB_END_ARRAY || tok == WJB_END_OBJECT)
					depth--;
				else if (tok == WJB_ELEM && depth == 1 && json_string_is(&elem, tenancy_token_audience))
					found = true;
			}
		}
		if (!found)
			token_refused("tenant token refused", "Its aud claim does not name tenancy.token_audience.");
	}
}

/* The tenant claim: a string, or an integer for bigint keys. */
static char *
tenant_claim(Jsonb *payload)
{
	const char *name = tenancy_token_tenant_claim;
	JsonbValue *v = json_get(payload, name);

	if (v == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("tenant token has no claim \"%s\"", name),
				 errhint("Put the tenant's key or slug in that claim, or set tenancy.token_tenant_claim.")));
	if (v->type == jbvString && v->val.string.len > 0 && v->val.string.len <= TENANT_KEY_MAXLEN)
		return json_string(v);
	if (v->type == jbvNumeric)
	{
		char	   *s = DatumGetCString(DirectFunctionCall1(numeric_out, NumericGetDatum(v->val.numeric)));

		if (strspn(s, "-0123456789") == strlen(s))
			return s;
	}
	token_bad_claim(name, "The tenant claim is a tenant key or slug: a non-empty string (or an integer key).");
	return NULL;				/* keep the compiler quiet */
}

/* Is user_key a member of the tenant? Read as tenancy.memberships' owner. */
static bool
is_member(const char *tenant_key, const char *user_key)
{
	Oid			nsp = get_namespace_oid("tenancy", false);
	Oid			relid = get_relname_relid("memberships", nsp);
	Oid			save_userid;
	int			save_sec;
	int			save_nestlevel;
	Oid			argtypes[2] = {TEXTOID, TEXTOID};
	Datum		args[2];
	bool		found;
	char	   *sql;
	HeapTuple	tup;
	Oid			owner;

	if (!OidIsValid(relid))
		elog(ERROR, "tenancy.memberships does not exist");
	tup = SearchSysCache1(RELOID, ObjectIdGetDatum(relid));
	if (!HeapTupleIsValid(tup))
		elog(ERROR, "cache lookup failed for relation %u", relid);
	owner = ((Form_pg_class) GETSTRUCT(tup))->relowner;
	ReleaseSysCache(tup);
	sql = psprintf("SELECT 1 FROM tenancy.memberships m WHERE m.tenant OPERATOR(pg_catalog.=) CAST($1 AS %s) "
				   "AND m.user_key OPERATOR(pg_catalog.=) $2",
				   format_type_extended(get_atttype(relid, get_attnum(relid, "tenant")), -1,
										FORMAT_TYPE_FORCE_QUALIFY));
	args[0] = CStringGetTextDatum(tenant_key);
	args[1] = CStringGetTextDatum(user_key);
	GetUserIdAndSecContext(&save_userid, &save_sec);
	SetUserIdAndSecContext(owner,
						   save_sec | SECURITY_LOCAL_USERID_CHANGE | SECURITY_RESTRICTED_OPERATION);
	save_nestlevel = NewGUCNestLevel();
	(void) set_config_option("search_path", "pg_catalog, pg_temp",
							 PGC_USERSET, PGC_S_SESSION,
							 GUC_ACTION_SAVE, true, 0, false);
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	if (SPI_execute_with_args(sql, 2, argtypes, args, NULL, true, 1) != SPI_OK_SELECT)
		elog(ERROR, "membership lookup failed");
	found = SPI_processed > 0;
	SPI_finish();
	AtEOXact_GUC(true, save_nestlevel);
	SetUserIdAndSecContext(save_userid, save_sec);
	return found;
}

/*
 * For citus_context.c: verify a token (signature, times, issuer, audience)
 * and return its tenant claim as a canonical key, without the registry (a
 * Citus worker's registry is empty): the claim must be a key, not a slug.
 */
void
token_verify_tenant_key(const char *token, char *key_out)
{
	Jsonb	   *payload;
	char	   *claim;
	TenantKey	key;
	const char *detail;

	payload = token_verify(token);
	check_times(payload);
	check_issuer_audience(payload);
	claim = tenant_claim(payload);
	if (!tenant_key_parse(claim, (TenantKeyType) tenancy_tenant_type, &key, &detail))
		token_bad_claim(tenancy_token_tenant_claim,
						"A token forwarded to Citus workers names the tenant by its key, not by its slug.");
	strlcpy(key_out, key.text, TENANT_KEY_MAXLEN + 1);
}

PG_FUNCTION_INFO_V1(tenancy_set_tenant_token);
Datum
tenancy_set_tenant_token(PG_FUNCTION_ARGS)
{
	bool		is_local = PG_ARGISNULL(1) ? true : PG_GETARG_BOOL(1);
	char	   *token;
	Jsonb	   *payload;
	char	   *claim;
	char	   *sub = NULL;
	JsonbValue *sub_v;
	char		key[TENANT_KEY_MAXLEN + 1];
	char	   *user;

	if (PG_ARGISNULL(0))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("tenant token must not be null"),
				 errhint("Use tenancy.clear_tenant() to unset the tenant.")));
	token = text_to_cstring(PG_GETARG_TEXT_PP(0));
	if (token[0] == '\0')
		token_malformed("The token is empty.");
	if (!is_local && !tenancy_allow_session_tenant)
	{
		tenancy_count(TENANCY_REFUSED_SESSION);
		ereport(ERROR,
				(errcode(ERRCODE_CANT_CHANGE_RUNTIME_PARAM),
				 errmsg("cannot set the tenant for the session"),
				 errdetail("tenancy.allow_session_tenant is off."),
				 errhint("Set the tenant in each transaction: SELECT tenancy.set_tenant_token($1).")));
	}

	payload = token_verify(token);
	check_times(payload);
	check_issuer_audience(payload);
	claim = tenant_claim(payload);
	sub_v = json_get(payload, "sub");
	if (sub_v != NULL)
	{
		if (sub_v->type != jbvString || sub_v->val.string.len == 0)
			token_bad_claim("sub", "The subject is a non-empty string.");
		sub = json_string(sub_v);
	}

	tenant_context_resolve(claim, key);

	if (tenancy_token_require_membership)
	{
		if (sub == NULL)
			ereport(ERROR,
					(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
					 errmsg("tenant token has no subject"),
					 errdetail("tenancy.token_require_membership is on: the sub claim must be a member of the tenant.")));
		if (!is_member(key, sub))
			ereport(ERROR,
					(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
					 errmsg("user \"%s\" is not a member of tenant \"%s\"", sub, claim),
					 errhint("Add the membership with tenancy.add_member().")));
	}

	if (is_local && !IsTransactionBlock() && !SPI_inside_nonatomic_context())
		ereport(WARNING,
				(errcode(ERRCODE_NO_ACTIVE_SQL_TRANSACTION),
				 errmsg("tenancy.set_tenant_token() outside a transaction block sets the tenant for this statement only"),
				 errhint("Call it after BEGIN, or pass is_local => false to set it for the session.")));

	/* On a Citus cluster the workers get the token, and verify it. */
	citus_context_forward_token(token);

	/* The tenant and its subject, at the same scope, by the trusted setter. */
	user = sub ? psprintf("%d:%s%s", (int) strlen(key), key, sub) : "";
	tenant_context_set(key, is_local);
	tenancy_trusted_setter = true;
	PG_TRY();
	{
		(void) set_config_option("tenancy.token_user", user,
								 superuser() ? PGC_SUSET : PGC_USERSET,
								 PGC_S_SESSION,
								 is_local ? GUC_ACTION_LOCAL : GUC_ACTION_SET,
								 true, 0, false);
	}
	PG_FINALLY();
	{
		tenancy_trusted_setter = false;
	}
	PG_END_TRY();
	tenancy_count(TENANCY_SET_TENANT);
	PG_RETURN_TEXT_P(cstring_to_text(key));
}

/*
 * The verified token's subject, while the tenant is the one that token
 * named; NULL otherwise.
 */
PG_FUNCTION_INFO_V1(tenancy_current_user_key);
Datum
tenancy_current_user_key(PG_FUNCTION_ARGS)
{
	const char *v = tenancy_token_user;
	const TenantKey *tenant;
	char	   *colon;
	long		klen;

	if (v == NULL || v[0] == '\0')
		PG_RETURN_NULL();
	tenant = tenant_context_peek();
	if (tenant == NULL)
		PG_RETURN_NULL();
	klen = strtol(v, &colon, 10);
	if (colon == v || *colon != ':' || klen < 0 || klen > (long) strlen(colon + 1) ||
		(size_t) klen != strlen(tenant->text) || strncmp(colon + 1, tenant->text, klen) != 0)
		PG_RETURN_NULL();
	PG_RETURN_TEXT_P(cstring_to_text(colon + 1 + klen));
}

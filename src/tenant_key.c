/*-------------------------------------------------------------------------
 * tenant_key.c
 *	  Parsing and canonical form of tenant keys (uuid, bigint, text).
 *
 * The parser never throws: it is used from GUC check hooks, which must
 * report failures through their return value.
 *-------------------------------------------------------------------------
 */
#include "tenancy.h"

#include <ctype.h>
#include <errno.h>
#include <limits.h>

#include "catalog/pg_type_d.h"

/* GUC variable */
int			tenancy_tenant_type = TENANT_KEY_UUID;

static const struct config_enum_entry tenant_type_options[] = {
	{"uuid", TENANT_KEY_UUID, false},
	{"bigint", TENANT_KEY_BIGINT, false},
	{"text", TENANT_KEY_TEXT, false},
	{NULL, 0, false}
};

/*
 * Defines tenancy.tenant_type.  Called before the context settings: the
 * tenant key is validated against the key type.  Changing the type is
 * the context's business (tenancy_assign_tenant_type, context.c).
 */
void
tenancy_tenant_key_init(void)
{
	DefineCustomEnumVariable("tenancy.tenant_type",
							 "Type of tenant keys: uuid, bigint or text.",
							 "Set it in postgresql.conf or with ALTER DATABASE before CREATE EXTENSION.",
							 &tenancy_tenant_type,
							 TENANT_KEY_UUID,
							 tenant_type_options,
							 PGC_SUSET,
							 0,
							 NULL,
							 tenancy_assign_tenant_type,
							 NULL);
}

const char *
tenant_key_type_name(TenantKeyType type)
{
	switch (type)
	{
		case TENANT_KEY_UUID:
			return "uuid";
		case TENANT_KEY_BIGINT:
			return "bigint";
		case TENANT_KEY_TEXT:
			return "text";
	}
	return "unknown";
}

Oid
tenant_key_type_oid(TenantKeyType type)
{
	switch (type)
	{
		case TENANT_KEY_UUID:
			return UUIDOID;
		case TENANT_KEY_BIGINT:
			return INT8OID;
		case TENANT_KEY_TEXT:
			return TEXTOID;
	}
	return InvalidOid;
}

static int
hexval(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

/*
 * Accepts what uuid_in accepts: 32 hex digits, optionally in braces, with a
 * hyphen allowed after any group of four digits.
 */
static bool
parse_uuid(const char *s, TenantKey *key, const char **detail)
{
	size_t		len = strlen(s);
	const char *end = s + len;
	int			ndigits = 0;
	static const char hex[] = "0123456789abcdef";
	char	   *out = key->text;

	if (len >= 2 && s[0] == '{' && s[len - 1] == '}')
	{
		s++;
		end--;
	}
	for (; s < end; s++)
	{
		int			v = hexval(*s);

		if (v < 0)
		{
			if (*s == '-' && ndigits > 0 && ndigits < 32 && ndigits % 4 == 0 &&
				s + 1 < end && s[1] != '-')
				continue;
			*detail = "A uuid key is 32 hexadecimal digits, optionally grouped by hyphens.";
			return false;
		}
		if (ndigits == 32)
		{
			*detail = "A uuid key has exactly 32 hexadecimal digits.";
			return false;
		}
		if (ndigits % 2 == 0)
			key->uuid.data[ndigits / 2] = (unsigned char) (v << 4);
		else
			key->uuid.data[ndigits / 2] |= (unsigned char) v;
		ndigits++;
	}
	if (ndigits != 32)
	{
		*detail = "A uuid key has exactly 32 hexadecimal digits.";
		return false;
	}
	for (int i = 0; i < 16; i++)
	{
		if (i == 4 || i == 6 || i == 8 || i == 10)
			*out++ = '-';
		*out++ = hex[key->uuid.data[i] >> 4];
		*out++ = hex[key->uuid.data[i] & 0x0f];
	}
	*out = '\0';
	return true;
}

/* An optional minus sign and decimal digits, within the range of bigint. */
static bool
parse_bigint(const char *s, TenantKey *key, const char **detail)
{
	const char *p = s;
	char	   *endp;
	long long	v;

	if (*p == '-')
		p++;
	if (*p == '\0')
	{
		*detail = "A bigint key is a decimal integer.";
		return false;
	}
	for (; *p; p++)
	{
		if (!isdigit((unsigned char) *p))
		{
			*detail = "A bigint key is a decimal integer.";
			return false;
		}
	}
	errno = 0;
	v = strtoll(s, &endp, 10);
	if (errno == ERANGE || *endp != '\0')
	{
		*detail = "The value is out of range for type bigint.";
		return false;
	}
	key->i64 = (int64) v;
	snprintf(key->text, sizeof(key->text), INT64_FORMAT, key->i64);
	return true;
}

/* Printable text without leading or trailing white space, at most 255 bytes. */
static bool
parse_text(const char *s, TenantKey *key, const char **detail)
{
	size_t		len = strlen(s);

	if (len > TENANT_KEY_MAXLEN)
	{
		*detail = "A text key is at most 255 bytes long.";
		return false;
	}
	if (isspace((unsigned char) s[0]) || isspace((unsigned char) s[len - 1]))
	{
		*detail = "A text key cannot begin or end with white space.";
		return false;
	}
	for (const char *p = s; *p; p++)
	{
		if ((unsigned char) *p < 0x20 || *p == 0x7f)
		{
			*detail = "A text key cannot contain control characters.";
			return false;
		}
	}
	memcpy(key->text, s, len + 1);
	return true;
}

/*
 * Does the input have the shape of a key of the given type, valid or not?
 * Such input names a key, never a slug: set_tenant() reports it as
 * malformed (22P02) when it does not parse, and create_tenant() refuses
 * slugs of this shape (its SQL spells the same rule for slugs).
 *   bigint: an optional minus sign and decimal digits;
 *   uuid: hexadecimal digits and hyphens, optionally in braces, at least
 *         32 characters (inside the braces);
 *   text: never (any slug is also a valid text key; keys are looked up
 *         first, and create_tenant() refuses a slug that is another
 *         tenant's key).
 */
bool
tenant_key_shaped(const char *input, TenantKeyType type)
{
	size_t		len = strlen(input);
	const char *p = input;
	const char *end = input + len;

	if (len == 0)
		return false;
	switch (type)
	{
		case TENANT_KEY_BIGINT:
			if (*p == '-')
				p++;
			if (p == end)
				return false;
			for (; p < end; p++)
				if (!isdigit((unsigned char) *p))
					return false;
			return true;
		case TENANT_KEY_UUID:
			if (len >= 2 && p[0] == '{' && p[len - 1] == '}')
			{
				p++;
				end--;
			}
			if (end - p < 32)
				return false;
			for (; p < end; p++)
				if (hexval(*p) < 0 && *p != '-')
					return false;
			return true;
		case TENANT_KEY_TEXT:
			return false;
	}
	return false;
}

/*
 * Parse a non-empty tenant key of the given type into *key, filling its
 * canonical text.  On failure returns false and sets *detail.
 */
bool
tenant_key_parse(const char *input, TenantKeyType type, TenantKey *key,
				 const char **detail)
{
	memset(key, 0, sizeof(*key));
	key->type = type;
	*detail = NULL;
	if (input == NULL || input[0] == '\0')
	{
		*detail = "A tenant key cannot be empty.";
		return false;
	}
	switch (type)
	{
		case TENANT_KEY_UUID:
			return parse_uuid(input, key, detail);
		case TENANT_KEY_BIGINT:
			return parse_bigint(input, key, detail);
		case TENANT_KEY_TEXT:
			return parse_text(input, key, detail);
	}
	*detail = "Unknown tenant key type.";
	return false;
}

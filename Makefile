# tenancy: PGXS build.  `make test`, `make demo` and `make bench` are the
# project's entry points; see README.md.

EXTENSION  = tenancy
MODULE_big = tenancy
OBJS       = $(patsubst %.c,%.o,$(sort $(wildcard src/*.c)))
PGFILEDESC = "tenancy - multi-tenant migration toolkit"
# token.c verifies tenant tokens with OpenSSL's libcrypto, which Debian's
# PostgreSQL links already.
SHLIB_LINK += -lcrypto

# The install script is built from the SQL sources, one per capability,
# beside the C of the same name, concatenated in this order (each part may
# use what an earlier one created).
SQL_SOURCES = $(addprefix src/,tenancy.sql as_owner.sql tenant_key.sql registry.sql \
	tables.sql context.sql common.sql memberships.sql token.sql contract.sql shared.sql \
	acknowledge.sql verify.sql rollback.sql tenant_column.sql backfill.sql \
	status.sql rls.sql shadow.sql path_stats.sql derive.sql rollout.sql citus_context.sql citus_shadow.sql deprecation.sql erase.sql move.sql distribute.sql report.sql)

# Versions.  A released version's install script is a committed file, never
# edited again (RELEASED); later changes go into the sources and into an
# upgrade script tenancy--A--B.sql.  Only the unreleased default version's
# script is built from the sources (DATA_built: make clean deletes it).
# While the default version is a released one, the sources must equal its
# script: make check-sources (run by make test) compares them.
RELEASED   = 0.1
EXTVERSION = $(shell sed -n "s/^default_version *= *'\([^']*\)'.*/\1/p" $(EXTENSION).control)
DATA       = $(addprefix tenancy--,$(addsuffix .sql,$(RELEASED))) $(sort $(wildcard tenancy--*--*.sql))
ifeq ($(filter $(EXTVERSION),$(RELEASED)),)
DATA_built = tenancy--$(EXTVERSION).sql
endif

# pg_regress suites.  Tests listed in REGRESS_PLAIN run on an instance
# without shared_preload_libraries; all others on a preloaded instance.
REGRESS_PLAIN = not_preloaded
REGRESS       = $(filter-out $(REGRESS_PLAIN),$(sort $(basename $(notdir $(wildcard sql/*.sql)))))
REGRESS_OPTS  = --temp-config=$(srcdir)/test/preload.conf

PG_CONFIG ?= pg_config
# Warnings always; -Werror only when asked (WERROR=1, as make test and CI
# do), so that a newer compiler's new warning does not break a user's build.
PG_CFLAGS += -Wall -Wextra -Wno-unused-parameter
ifeq ($(WERROR),1)
PG_CFLAGS += -Werror
endif
PGXS := $(shell $(PG_CONFIG) --pgxs 2>/dev/null)
ifeq ($(PGXS),)
# Server headers missing: only the helper targets below can run.
all install:
	@echo "pg_config --pgxs found nothing: run 'make test' (installs dependencies) or scripts/deps.sh" >&2; exit 1
else
include $(PGXS)
endif

ifneq ($(filter $(EXTVERSION),$(RELEASED)),)
# The sources are the released script: nothing to build, only to check.
check-sources:
	@cat $(SQL_SOURCES) | cmp -s - tenancy--$(EXTVERSION).sql \
	  && echo "tenancy: the sources are tenancy--$(EXTVERSION).sql" \
	  || { echo "tenancy: src/*.sql differ from the released tenancy--$(EXTVERSION).sql: bump default_version and add an upgrade script" >&2; exit 1; }
else
tenancy--$(EXTVERSION).sql: $(SQL_SOURCES)
	cat $^ > $@

check-sources: tenancy--$(EXTVERSION).sql
	@cat $(SQL_SOURCES) | cmp -s - $< && echo "tenancy: $< is what the sources produce" \
	  || { echo "tenancy: $< is not what src/*.sql produce: make clean && make" >&2; exit 1; }
endif

# The README states the default version.
check-sources: check-version
check-version:
	@grep -q "^Version $(EXTVERSION) " README.md \
	  || { echo "tenancy: README.md does not say 'Version $(EXTVERSION)' (tenancy.control's default_version)" >&2; exit 1; }

# `test` is also a directory name, so every entry point is phony.
.PHONY: test demo bench deps check-sources check-version

deps:
	@scripts/deps.sh

test:
	@scripts/test.sh

demo:
	@scripts/demo.sh

bench:
	@bench/run.sh

# `make print-REGRESS` and friends, for the scripts.
print-%:
	@echo $($*)

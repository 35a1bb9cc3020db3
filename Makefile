# tenancy: PGXS build.  `make test`, `make demo` and `make bench` are the
# project's entry points; see README.md.

EXTENSION  = tenancy
MODULE_big = tenancy
OBJS       = $(patsubst %.c,%.o,$(sort $(wildcard src/*.c)))
DATA       = $(sort $(wildcard tenancy--*.sql))
PGFILEDESC = "tenancy - multi-tenant migration toolkit"

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

# `test` is also a directory name, so every entry point is phony.
.PHONY: test demo bench deps

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

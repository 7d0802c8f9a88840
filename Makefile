# hookbridge build.
#
#   make            build every program into bin/ (debug symbols, -O2)
#   make run        install missing packages, build, start the local stack
#                   (KAFKA=apache: on Apache Kafka instead of the embedded broker)
#   make test       install missing packages, build, run unit + end-to-end tests,
#                   then the same suite under AddressSanitizer+UBSan
#   make bench      scripts/bench_all.sh (about 7 minutes): throughput, CPU per delivery
#                   vs a reference libcurl client, PostgreSQL CPU per logged attempt,
#                   latency, one vs two replicas; retry timeliness; 1,000 HTTPS
#                   endpoints; slow receivers; RSS with 10,000 requests in flight; on
#                   the embedded broker, then on Apache Kafka; a summary table with
#                   issue 12's targets. BENCH_ONLY=part,... runs some (docs/operations.md)
#   make chaos      the fault suite (tests/chaos, about 10 minutes): kill -9, outages,
#                   a frozen broker, failing and hung receivers; see docs/chaos.md
#   make fuzz       build the libFuzzer targets (tests/fuzz) with clang and run each for
#                   FUZZ_SECONDS (60); see docs/fuzzing.md
#   make DEBUG=1    unoptimised debug build (-O0 -g3)
#   make SANITIZER=address,undefined   sanitizer build (into build-san/ and bin-san/)
#   make CC=clang   the code is gcc and clang clean with -Wall -Wextra -Werror
#   make lint       pyflakes' checks on the Python tests and tools (make test runs it)
#   make ALLOC=glibc  link glibc's malloc instead of mimalloc (see below)

CC      ?= cc
PKGS    := rdkafka avro-c jansson libcurl libpq openssl libmicrohttpd
WARN    := -Wall -Wextra -Werror -Wshadow -Wformat=2 -Wstrict-prototypes \
           -Wmissing-prototypes -Wno-unused-parameter
ifdef DEBUG
OPT     ?= -O0 -g3
else
OPT     ?= -O2 -g
endif
CFLAGS  += -std=c11 -D_GNU_SOURCE $(OPT) $(WARN) -MMD -MP -Ilib -Ibuild/gen \
           $(shell pkg-config --cflags $(PKGS) 2>/dev/null)
LDLIBS  += $(shell pkg-config --libs $(PKGS) 2>/dev/null) -lpthread -lm

ifdef SANITIZER
B       ?= build-san
BIN     ?= bin-san
CFLAGS  += -fsanitize=$(SANITIZER) -fno-omit-frame-pointer -fno-sanitize-recover=all
LDFLAGS += -fsanitize=$(SANITIZER)
else
B       ?= build
BIN     ?= bin
# The programs allocate with mimalloc (Debian's libmimalloc2.0): linked
# before every other library, it serves their malloc and free too
# (librdkafka's, libcurl's, ...). The dispatcher spends about a fifth less
# CPU per delivery than with glibc's malloc (make bench prints both).
# Sanitizer builds keep the sanitizer's allocator; the unit tests and the
# bench tools keep glibc's (bench_tlsconn reads the heap with mallinfo2, and
# the reference client is a plain libcurl program).
ALLOC   ?= mimalloc
ifeq ($(ALLOC),mimalloc)
PROGRAM_LDLIBS := -lmimalloc
endif
endif

LIB_SRC  := $(sort $(wildcard lib/*.c))
LIB_OBJ  := $(LIB_SRC:%.c=$(B)/%.o) $(B)/gen/schemas.o
LIBHB    := $(B)/libhookbridge.a

PROGRAMS := hookbridge-producer hookbridge-dispatcher hookbridge-migrate \
            hookbridge-devbroker hookbridge-receiver hookbridge-secret
hookbridge-producer_SRC   := $(wildcard producer/*.c)
hookbridge-dispatcher_SRC := $(wildcard dispatcher/*.c)
hookbridge-retrier_SRC    := $(wildcard retrier/*.c)
hookbridge-migrate_SRC    := $(wildcard migrations/*.c)
hookbridge-secret_SRC     := $(wildcard secret/*.c)
hookbridge-devbroker_SRC  := $(wildcard deploy/local/*.c)
hookbridge-receiver_SRC   := $(wildcard examples/receiver/*.c)
# The receiver enforces client certificates (mTLS) on libmicrohttpd's GnuTLS sessions.
hookbridge-receiver_LDLIBS := $(shell pkg-config --libs gnutls 2>/dev/null)
ifneq ($(hookbridge-retrier_SRC),)
PROGRAMS += hookbridge-retrier
endif

UNIT_SRC   := $(sort $(wildcard tests/unit/test_*.c))
UNIT_BINS  := $(UNIT_SRC:tests/unit/%.c=$(B)/tests/%)
BENCH_SRC  := $(sort $(wildcard tests/bench/bench_*.c))
BENCH_BINS := $(BENCH_SRC:tests/bench/%.c=$(B)/tests/bench/%)

SCHEMAS    := $(sort $(wildcard schema/*.avsc schema/history/*.avsc)) schema/event_types.txt

# Fuzz targets: tests/fuzz/fuzz_<name>.c, seeds in tests/fuzz/corpus/<name>/.
# replay_<name> (normal compiler) feeds the whole corpus to a target in test-unit;
# <name>_fuzzer is the libFuzzer build `make fuzz` runs (in $(FUZZ_B), clang).
FUZZ_SRC     := $(sort $(wildcard tests/fuzz/fuzz_*.c))
FUZZ_NAMES   := $(FUZZ_SRC:tests/fuzz/fuzz_%.c=%)
FUZZ_REPLAY  := $(FUZZ_NAMES:%=$(B)/tests/fuzz/replay_%)
FUZZ_BINS    := $(FUZZ_NAMES:%=$(B)/tests/fuzz/%_fuzzer)
FUZZ_B       ?= $(B)/fuzz
FUZZ_SECONDS ?= 60
FUZZ_TARGETS ?= $(FUZZ_NAMES)

.PHONY: all deps run test test-unit test-e2e test-unit-e2e test-asan bench docs clean format format-check lint \
        fuzz fuzz-build chaos
all: $(PROGRAMS:%=$(BIN)/%) $(UNIT_BINS) $(BENCH_BINS) $(FUZZ_REPLAY) $(B)/tests/fuzz/gen_seeds

deps:
	@scripts/deps.sh

# Schemas are compiled into the library so a binary never depends on files at run time.
$(B)/gen/schemas.c: $(SCHEMAS) scripts/embed-schemas.sh
	@mkdir -p $(@D)
	scripts/embed-schemas.sh $(SCHEMAS) > $@.tmp && mv $@.tmp $@

$(B)/gen/schemas.o: $(B)/gen/schemas.c
	$(CC) $(CFLAGS) -c -o $@ $<

# The services know the newest migration of their release (its number), so a
# database not yet migrated to it keeps them not ready (lib/hb_store.c); a new
# migration file rebuilds the one object that reads it.
MIGRATION_FILES := $(sort $(wildcard migrations/[0-9][0-9][0-9][0-9]_*.sql))
SCHEMA_VERSION  := $(shell echo $(notdir $(lastword $(MIGRATION_FILES))) | sed 's/_.*//; s/^0*//')
$(B)/lib/hb_store.o: CFLAGS += -DHB_SCHEMA_VERSION=$(or $(SCHEMA_VERSION),0)
$(B)/lib/hb_store.o: $(MIGRATION_FILES)

$(B)/%.o: %.c
	@mkdir -p $(@D)
	$(CC) $(CFLAGS) -c -o $@ $<

$(LIBHB): $(LIB_OBJ)
	@rm -f $@
	$(AR) rcs $@ $^

define program_rule
$(BIN)/$(1): $$($(1)_SRC:%.c=$(B)/%.o) $(LIBHB)
	@mkdir -p $$(@D)
	$$(CC) $$(LDFLAGS) -o $$@ $$^ $$(PROGRAM_LDLIBS) $$($(1)_LDLIBS) $$(LDLIBS)
endef
$(foreach p,$(PROGRAMS),$(eval $(call program_rule,$(p))))

# Without this, make treats the test objects as intermediate, deletes them after
# linking, and the next `make` compiles and links every unit test again.
.SECONDARY: $(UNIT_SRC:%.c=$(B)/%.o) $(BENCH_SRC:%.c=$(B)/%.o)

$(B)/tests/%: $(B)/tests/unit/%.o $(LIBHB)
	@mkdir -p $(@D)
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS) -lcmocka

$(B)/tests/bench/%: $(B)/tests/bench/%.o $(LIBHB)
	@mkdir -p $(@D)
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)

$(FUZZ_REPLAY): $(B)/tests/fuzz/replay_%: $(B)/tests/fuzz/fuzz_%.o $(B)/tests/fuzz/replay.o $(LIBHB)
	@mkdir -p $(@D)
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)

$(B)/tests/fuzz/replay.o: CFLAGS += -DHB_FUZZ_CORPUS='"$(CURDIR)/tests/fuzz/corpus"'

$(B)/tests/fuzz/gen_seeds: $(B)/tests/fuzz/gen_seeds.o $(LIBHB)
	@mkdir -p $(@D)
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)

$(FUZZ_BINS): $(B)/tests/fuzz/%_fuzzer: $(B)/tests/fuzz/fuzz_%.o $(LIBHB)
	@mkdir -p $(@D)
	$(CC) $(LDFLAGS) -fsanitize=fuzzer -o $@ $^ $(LDLIBS)

fuzz-build: $(FUZZ_BINS)

# Everything, library included, is rebuilt with clang's coverage instrumentation
# and ASan+UBSan in $(FUZZ_B); tests/fuzz/run.sh runs each target, keeps what it
# finds in $(FUZZ_B)/findings and fails if anything was found.
fuzz:
	@scripts/deps.sh --fuzz
	@$(MAKE) --no-print-directory CC=clang SANITIZER=fuzzer-no-link,address,undefined \
	  B=$(FUZZ_B) BIN=$(FUZZ_B)/bin fuzz-build
	@tests/fuzz/run.sh $(FUZZ_B) $(FUZZ_SECONDS) $(FUZZ_TARGETS)

# KAFKA=apache: Apache Kafka (deploy/local/kafka.sh) instead of the devbroker.
KAFKA ?= devbroker
run: deps
	@$(MAKE) --no-print-directory all
	@KAFKA=$(KAFKA) deploy/local/run.sh

# The builds of `make test` use every core unless make was given -j itself.
BUILD_JOBS = $(if $(findstring -j,$(MAKEFLAGS)),,-j$(shell nproc))

# The sanitizer build (about 40 s of both cores) runs while the first pass
# does, at the lowest priority (nice 19): it takes only the CPU the tests
# leave idle (they mostly wait), so it slows no test. Its output follows the
# pass's; test-asan then finds it done.
test: deps
	@$(MAKE) --no-print-directory format-check
	@$(MAKE) --no-print-directory lint
	@$(MAKE) --no-print-directory $(BUILD_JOBS) all
	@s=$$(mktemp); \
	  nice -n 19 $(MAKE) --no-print-directory $(BUILD_JOBS) SANITIZER=address,undefined all \
	    >$$s 2>&1 & spid=$$!; \
	  $(MAKE) --no-print-directory test-unit-e2e; rc=$$?; \
	  wait $$spid; src=$$?; cat $$s; rm -f $$s; [ $$rc -eq 0 ] && [ $$src -eq 0 ]
	@$(MAKE) --no-print-directory test-asan

test-unit: $(UNIT_BINS) $(FUZZ_REPLAY)
	@scripts/run-unit.sh $(UNIT_BINS) $(FUZZ_REPLAY)

# The end-to-end tests mostly wait on real processes, so they run in
# PYTEST_JOBS parallel workers (pytest-xdist); each worker has its own
# PostgreSQL cluster, and every test its own broker and free ports.
# 8 on 2 cores: with 6 the CPU was still idle about 40 % of the time, and
# the plain pass took 9:32 against 7:18 with 8 (the sanitizer pass 9:15
# against 7:36; still 38-42 % idle). Most tests take about as long under
# the sanitizers as without: they wait for timers, joins and receivers.
# Both passes run 10 (967 tests on an idle machine: 8:55 with 8, 7:46
# with 10; the CPU was still idle 23 % of the time, the tests' summed
# time 8 % longer; the sanitizer pass of 995 tests: 9:03 with 8, 7:36 with
# 10, session 26). The plain pass runs 12 since session 29 (1,048 tests on
# an idle machine: 10:20 with 10, 9:04-9:24 with 12, the CPU then idle 11 %
# of the time); the sanitizer pass stays at 10: with 12 three tests met
# timing races the 10 had not shown (CI 107, each since made robust, but
# the CPU is then saturated). PYTEST_ASAN_JOBS sets the sanitizer pass's.
PYTEST_JOBS ?= 12
PYTEST_ASAN_JOBS ?= 10
PYTEST_OPTS := -q -p no:cacheprovider --dist loadgroup
PYTEST := /usr/bin/python3 -m pytest $(PYTEST_OPTS) -n $(PYTEST_JOBS)
PYTEST_ASAN := /usr/bin/python3 -m pytest $(PYTEST_OPTS) -n $(PYTEST_ASAN_JOBS)

test-e2e: all
	@HOOKBRIDGE_BIN=$(CURDIR)/$(BIN) $(PYTEST) tests/e2e $(PYTEST_ARGS)

# `make test` runs the unit binaries while the end-to-end suite runs: they
# mostly wait too (test_kafka_reach alone takes 18 s on a mock cluster's
# timeouts). Their output follows the suite's; either failing fails.
test-unit-e2e: all $(UNIT_BINS) $(FUZZ_REPLAY)
	@u=$$(mktemp); scripts/run-unit.sh $(UNIT_BINS) $(FUZZ_REPLAY) >$$u 2>&1 & upid=$$!; \
	  HOOKBRIDGE_BIN=$(CURDIR)/$(BIN) $(PYTEST) tests/e2e $(PYTEST_ARGS); rc=$$?; \
	  wait $$upid; urc=$$?; cat $$u; rm -f $$u; [ $$rc -eq 0 ] && [ $$urc -eq 0 ]

# The whole suite again under AddressSanitizer + UndefinedBehaviorSanitizer;
# LeakSanitizer reports leaks at exit of every program and test. The unit
# binaries run while the suite does, as in test-unit-e2e.
test-asan:
	@$(MAKE) --no-print-directory $(BUILD_JOBS) SANITIZER=address,undefined all
	@u=$$(mktemp); \
	  ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
	  $(MAKE) --no-print-directory SANITIZER=address,undefined test-unit >$$u 2>&1 & upid=$$!; \
	  ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
	  HOOKBRIDGE_TEST_SLOW=3 HOOKBRIDGE_BIN=$(CURDIR)/bin-san \
	  $(PYTEST_ASAN) tests/e2e $(PYTEST_ARGS); rc=$$?; \
	  wait $$upid; urc=$$?; cat $$u; rm -f $$u; [ $$rc -eq 0 ] && [ $$urc -eq 0 ]

bench: deps
	@$(MAKE) --no-print-directory all
	@BENCH_BUILD=$(B) scripts/bench_all.sh

# The fault suite (docs/chaos.md): not part of `make test`. CHAOS_SCENARIOS=a,b
# picks scenarios; CHAOS_* settings are read from the environment.
chaos: deps
	@$(MAKE) --no-print-directory all
	@HOOKBRIDGE_BIN=$(CURDIR)/$(BIN) /usr/bin/python3 tests/chaos/chaos.py

# Regenerates docs/configuration.md from the binaries' --config-reference
# (tests/e2e/test_ops.py fails when they differ).
docs: all
	@/usr/bin/python3 tests/e2e/test_ops.py --write-config-doc $(BIN)

format:
	clang-format -i $$(git ls-files '*.c' '*.h')

format-check:
	@clang-format --dry-run --Werror $$(git ls-files '*.c' '*.h') && echo 'format-check: ok'

# pyflakes' checks (through flake8, which honours `# noqa`) on every Python
# file: unused imports and variables, undefined names (a typo in a test's
# rarely taken branch fails only there), f-strings without a placeholder;
# and E999, a file that does not parse (pyflakes checks nothing in it, and
# --select=F alone said 'lint: ok'). LINT_FILES: the files (all tracked ones).
LINT_FILES ?= $$(git ls-files '*.py')
lint:
	@/usr/bin/python3 -m flake8 --select=F,E999 $(LINT_FILES) && echo 'lint: ok'

clean:
	rm -rf build build-san bin bin-san

-include $(shell find $(B) -name '*.d' 2>/dev/null)

# Two commands for a newcomer: `make serve` and `make test`. Both bootstrap .venv on a fresh
# machine (python3 >= 3.11 and a C compiler are the only prerequisites).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
RUNTIME_STAMP := $(VENV)/.installed-runtime
NATIVE := $(wildcard native/src/*.c native/src/*.h native/include/*.h native/cdef/*.h) native/build_native.py
FUZZ_SECONDS ?= 60
# The suite runs in PYTEST_WORKERS pytest-xdist processes, each test file (and the files
# sharing the wheel build) on one of them: see tests/conftest.py. Two keep CI's 2 cores busy
# (7.5 instead of 14.4 minutes); PYTEST_WORKERS=1 runs it in one process.
PYTEST_WORKERS ?= 2
PYTEST_JOBS := $(if $(filter-out 0 1,$(PYTEST_WORKERS)),-n $(PYTEST_WORKERS) --dist loadgroup)

.PHONY: install install-runtime serve test lint fuzz bench clean av-packages

$(BIN)/python:
	$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "mailwarden needs Python 3.11+"'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

# Editable install: the native core is compiled by setup.py's cffi_modules into
# native/mailwarden_native/; a change to the C sources re-runs it. `install` adds the test
# extras (pytest, linters, Playwright...); `install-runtime`, what `make serve` needs, only the
# runtime dependencies. The full install satisfies the runtime one too, so after `make test`
# `make serve` installs nothing again.
$(STAMP): $(BIN)/python pyproject.toml setup.py $(NATIVE)
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $(STAMP) $(RUNTIME_STAMP)

$(RUNTIME_STAMP): $(BIN)/python pyproject.toml setup.py $(NATIVE)
	@if [ -f $(STAMP) ] && [ -z "$$(find $^ -newer $(STAMP))" ]; then :; \
	else echo "$(BIN)/python -m pip install -q -e ."; $(BIN)/python -m pip install -q -e .; fi
	touch $(RUNTIME_STAMP)

install: $(STAMP)

install-runtime: $(RUNTIME_STAMP)

# The antivirus readers' system parts (libarchive for libarchive-c, 7z, lhasa, unar, upx): installed
# when missing and apt-get runs as root; without them those formats get not_scanned, never clean.
AV_PACKAGES := libarchive13 p7zip-full lhasa unar

av-packages:
	@missing=$$(for p in $(AV_PACKAGES); do dpkg-query -W -f='$${Status}' $$p 2>/dev/null \
		| grep -q 'ok installed' || echo $$p; done); \
	if [ -n "$$missing" ] && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		apt-get -o DPkg::Lock::Timeout=600 update -qq && DEBIAN_FRONTEND=noninteractive \
		apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends $$missing; \
	fi
	@# upx (UPX-packed PE files): Debian 12 has it in bookworm-backports only; the script adds it
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then sh contrib/debian/install-upx.sh; fi

# The home is named here (./var of the checkout unless MAILWARDEN_HOME says otherwise): the
# command itself makes no home where none was named.
serve: install-runtime av-packages
	MAILWARDEN_HOME="$${MAILWARDEN_HOME:-$(CURDIR)/var}" $(BIN)/mailwarden serve

# The fuzz step runs after the suite as its own command, not as a pytest test: it is a native
# build plus a fixed-length run whose exit status and libFuzzer statistics are the result, CI
# (.ci/run) reaches it through this target, and a plain `pytest` stays quick for developers.
# Here FUZZ_SECONDS is the total, split between the two targets (parse, sigs), which run side
# by side where there is a core for each (run.sh); `make fuzz` gives each target FUZZ_SECONDS. FUZZ_SECONDS=0 skips the step (libFuzzer would take a 0 s
# budget as "no limit").
test: install av-packages lint
	$(BIN)/python -m pytest -q --durations=25 $(PYTEST_JOBS)
	@if [ "$(FUZZ_SECONDS)" -gt 1 ]; then bash tests/fuzz/run.sh $$(( $(FUZZ_SECONDS) / 2 )) parse sigs; fi

# lint-imports checks the layers (.importlinter): native <- sdk <- plugins, no cycles, ...
lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports --no-logo
	$(BIN)/python -m tests.private_imports

fuzz: install
	bash tests/fuzz/run.sh $(FUZZ_SECONDS)

bench: install
	$(BIN)/python benchmarks/mime/bench_parse.py

clean:
	rm -rf build native/mailwarden_native/_core*.so native/mailwarden_native/_core.c *.egg-info

# Set-up and entry points. Every target installs what it is missing itself and is idempotent:
# on a fresh Debian machine as root, `make demo` and `make test` are all you need.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Debian packages the mount and the tests use at run time (chromium: the audit report is rendered
# in a headless browser; rsyslog: the central-audit tests; softhsm2: the PKCS#11 key-service tests).
APT_PACKAGES := fuse3 orthanc dcmtk rsyslog chromium softhsm2
# What `make bench` compares against and drives (gocryptfs; Orthanc in its own network namespace).
BENCH_APT_PACKAGES := fuse3 gocryptfs orthanc iproute2 util-linux
BENCH_ARGS ?=

.PHONY: demo test setup apt lint clean bench

demo: setup
	$(BIN)/encfs-pacs demo

test: setup
	$(BIN)/pytest

lint: setup
	$(BIN)/ruff check encfs_pacs tests

setup: apt $(VENV)/.installed

# Side-by-side benchmark (raw disk, gocryptfs, encfs-pacs); not part of `make test`.
# `make bench BENCH_ARGS=--quick` is a 1-minute smoke run; see docs/performance.md.
bench: setup
	@$(MAKE) --no-print-directory apt APT_PACKAGES="$(BENCH_APT_PACKAGES)"
	$(BIN)/python benchmarks/side_by_side.py $(BENCH_ARGS)

# Install only what is missing, so a second run costs nothing and needs no network.
apt:
	@missing=$$(for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages: $$missing"; \
		DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	fi
	@$(PYTHON) -c 'import venv, ensurepip' 2>/dev/null || \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $@

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache .hypothesis

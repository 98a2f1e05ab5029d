# nvllm developer tasks. `make help` lists them.

SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.ONESHELL:
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip install --disable-pip-version-check --no-input --quiet
# requirements-dev.txt includes every runtime requirements file.
DEV_REQS := requirements.txt requirements-agent.txt requirements-fake.txt requirements-dev.txt
ARGS ?=
PYTEST_ARGS ?=

.PHONY: help run test pytest smoke install-check system-deps lint clean distclean

help:
	@echo "make run      install requirements (once) and run nvllm (ARGS='--port 8080')"
	@echo "make test     unit and integration tests, tests/test.sh against a fresh server, the install check"
	@echo "make pytest   only the pytest suite (PYTEST_ARGS='-m \"not integration\"')"
	@echo "make smoke    only tests/test.sh against a fresh server"
	@echo "make install-check  each requirements file alone in a throwaway venv: main.py serves, agent and fakevllm start"
	@echo "make system-deps  the Debian packages some tests need (.ci/system-packages.txt; root or sudo)"
	@echo "make lint     ruff"
	@echo "make clean    caches and install stamps; 'make distclean' also removes $(VENV)"

$(PY):
	$(PYTHON) -m venv $(VENV)

# Stamps: pip runs again only when a requirements file changes.
$(VENV)/.installed-run: requirements.txt | $(PY)
	$(PIP) -r requirements.txt
	touch $@

$(VENV)/.installed-dev: $(DEV_REQS) | $(PY)
	$(PIP) -r requirements-dev.txt
	touch $@

run: $(VENV)/.installed-run
	exec $(PY) main.py $(ARGS)

test: $(VENV)/.installed-dev
	@echo "$(PY) -m pytest $(PYTEST_ARGS)"
	$(PY) -m pytest $(PYTEST_ARGS)
	echo "tests/test.sh against a fresh server"
	$(SMOKE)
	echo "tests/install_check.sh: each requirements file alone"
	PYTHON=$(PYTHON) bash tests/install_check.sh

pytest: $(VENV)/.installed-dev
	$(PY) -m pytest $(PYTEST_ARGS)

smoke: $(VENV)/.installed-dev
	@$(SMOKE)

system-deps:
	bash .ci/system-deps

install-check:
	PYTHON=$(PYTHON) bash tests/install_check.sh

# tests/test.sh against a server of its own: a free port, a temporary data
# directory (so its embedded store) and a generated admin password. The
# server is stopped, and must exit 0 on SIGTERM, whatever the outcome.
define SMOKE
tmp="$$(mktemp -d)"
port="$$($(PY) -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
password="$$($(PY) -c 'import secrets; print(secrets.token_urlsafe(18))')"
env -u REDIS_URL -u NVLLM_JWT_SECRET NVLLM_DATA_DIR="$$tmp/data" NVLLM_ADMIN_PASSWORD="$$password" \
    $(PY) main.py --host 127.0.0.1 --port "$$port" >"$$tmp/server.log" 2>&1 &
pid=$$!
cleanup() {
    status=$$?
    if [[ -n "$$pid" ]]; then kill -TERM "$$pid" 2>/dev/null || true; wait "$$pid" 2>/dev/null || true; fi
    if [[ $$status -ne 0 ]]; then echo "--- server log:"; tail -n 40 "$$tmp/server.log"; fi
    rm -rf "$$tmp"
    exit $$status
}
trap cleanup EXIT
for _ in $$(seq 300); do
    curl -fsS -o /dev/null "http://127.0.0.1:$$port/healthz" 2>/dev/null && break
    kill -0 "$$pid" 2>/dev/null || { echo "smoke: nvllm exited before it was ready" >&2; exit 1; }
    sleep 0.1
done
BASE_URL="http://127.0.0.1:$$port" NVLLM_PASSWORD="$$password" PYTHON="$(PY)" bash tests/test.sh
kill -TERM "$$pid"
code=0; wait "$$pid" || code=$$?
pid=""
if [[ $$code -ne 0 ]]; then echo "smoke: nvllm exited with $$code on SIGTERM, expected 0" >&2; exit 1; fi
echo "smoke: nvllm stopped cleanly"
endef

lint:
	@if $(PY) -m ruff --version >/dev/null 2>&1; then ruff=("$(PY)" -m ruff)
	elif command -v ruff >/dev/null; then ruff=(ruff)
	else echo "ruff is not installed: $(PY) -m pip install ruff" >&2; exit 1; fi
	"$${ruff[@]}" check --select E,F,W,I,UP,B --line-length 120 --exclude $(VENV) .

clean:
	rm -rf .pytest_cache .ruff_cache $(VENV)/.installed-run $(VENV)/.installed-dev
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV)

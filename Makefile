# Two commands set everything up on a fresh Debian machine:
#   make run    installs the Python requirements into .venv and serves on HOST:PORT
#   make test   also installs redis-server, postgresql, chromium, chromium-driver and nginx (apt) where missing,
#               then runs the tests
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: run check test lint bench bench-profile bench-spy bench-knowledge bench-console redis-server postgresql browser clean

$(VENV)/.installed: requirements.txt requirements-dev.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	touch $@

redis-server:
	@command -v redis-server >/dev/null 2>&1 || { \
	  echo "installing redis-server (Debian package)"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq redis-server >/dev/null; }

# PostgreSQL's server programs for the archive's tests and benchmarks, which run a throwaway cluster of their own
# (tests/postgres_server.py). Debian keeps them off PATH, in /usr/lib/postgresql/<version>/bin.
postgresql:
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || { \
	  echo "installing postgresql (Debian package)"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq postgresql >/dev/null; }

# Headless Chromium and its driver for tests/browser/ (Selenium is given both paths and never downloads one).
browser:
	@{ test -x /usr/bin/chromium && test -x /usr/bin/chromedriver; } || { \
	  echo "installing chromium and chromium-driver (Debian packages)"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium chromium-driver >/dev/null; }

# nginx for tests/test_deploy.py, which runs `nginx -t` on deploy/nginx/ (never serves). Debian starts the service on
# install: it is stopped again, so nothing is left listening on port 80.
nginx:
	@test -x /usr/sbin/nginx || { \
	  echo "installing nginx (Debian package)"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq nginx >/dev/null; \
	  $$SUDO service nginx stop >/dev/null 2>&1 || true; }

run: $(VENV)/.installed
	$(PY) webhook.py

# Tries each configured dependency (Redis, the model, the gateway, PostgreSQL, the knowledge folder) and exits.
check: $(VENV)/.installed
	$(PY) webhook.py --check

test: $(VENV)/.installed redis-server postgresql browser nginx
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(PY) -m pytest

bench: $(VENV)/.installed redis-server postgresql
	$(PY) bench/run.py

# Call trees of the webhook and reply paths (pyinstrument) under bench/profiles/; no PostgreSQL: the archive is off.
bench-profile: $(VENV)/.installed redis-server
	$(PY) bench/profile_paths.py

# Where gunicorn's sync workers spend their time under row H1's load (py-spy), product and empty app.
bench-spy: $(VENV)/.installed redis-server
	$(PY) bench/spy_webhook.py

bench-knowledge: $(VENV)/.installed
	$(PY) bench/retrieval.py

bench-console: $(VENV)/.installed redis-server
	$(PY) bench/console_pages.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache

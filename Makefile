# kvs-ingest: `make run` runs the service, `make test` runs every test. Both set up what they
# need on a fresh Debian machine (virtual environment, Debian packages) before they start.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

# Debian packages the tests need: command -> package.
TEST_TOOLS := ffmpeg:ffmpeg ffprobe:ffmpeg mkvinfo:mkvtoolnix espeak-ng:espeak-ng sox:sox
BROWSER_TOOLS := chromium:chromium chromedriver:chromium-driver firefox-esr:firefox-esr
CONTAINER_TOOLS := dockerd:docker.io docker-compose:docker-compose debootstrap:debootstrap

.PHONY: run test test-unit test-integration test-browser test-container venv deps deps-browser deps-container fixtures bench soak lint typecheck clean

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev,browser,bench]'
	@touch $(STAMP)

venv: $(STAMP)

# Installs whichever of the given Debian packages' commands are missing.
define apt_install
	@missing=""; for pair in $(1); do cmd=$${pair%%:*}; pkg=$${pair##*:}; \
	  command -v $$cmd >/dev/null 2>&1 || missing="$$missing $$pkg"; done; \
	if [ -n "$$missing" ]; then echo "installing Debian packages:$$missing"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends $$missing >/dev/null; fi
endef

deps:
	$(call apt_install,$(TEST_TOOLS))

deps-browser:
	$(call apt_install,$(BROWSER_TOOLS))

deps-container:
	$(call apt_install,$(CONTAINER_TOOLS))

## The service with its demo page, on the embedded KVS emulator unless KVS_INGEST_KVS_BACKEND
## says otherwise (a region in the developer's AWS environment never sends `make run` to AWS).
run: $(STAMP)
	KVS_INGEST_DEMO_PAGE=$${KVS_INGEST_DEMO_PAGE:-1} \
	KVS_INGEST_KVS_BACKEND=$${KVS_INGEST_KVS_BACKEND:-embedded} $(VENV)/bin/kvs-ingest serve

## Every test: unit, integration, browser, then the container suite.
test: test-python test-container

test-python: $(STAMP) deps deps-browser
	$(PY) -m pytest -q -p no:cacheprovider tests/unit tests/integration tests/browser tests/reliability

test-unit: $(STAMP) deps
	$(PY) -m pytest -q tests/unit

test-integration: $(STAMP) deps
	$(PY) -m pytest -q tests/integration

test-browser: $(STAMP) deps deps-browser
	$(PY) -m pytest -q tests/browser

test-container: $(STAMP) deps deps-container
	$(PY) -m pytest -q -p no:cacheprovider tests/container

## Re-records the browser test corpus under tests/data/ with headless Chromium and Firefox.
fixtures: $(STAMP) deps deps-browser
	$(PY) scripts/record_fixtures.py

bench: $(STAMP) deps
	$(PY) benchmarks/pipeline.py
	$(PY) benchmarks/load.py

soak: $(STAMP) deps
	$(PY) -m pytest -q tests/reliability -m soak --run-soak

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks scripts
	$(VENV)/bin/ruff format --check src tests benchmarks scripts

typecheck: $(STAMP)
	$(VENV)/bin/mypy

clean:
	rm -rf $(VENV) .kvs-data .pytest_cache

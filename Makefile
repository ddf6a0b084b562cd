# Two commands on a fresh machine: `make run` and `make test`. Everything else is optional.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
PY     := $(BIN)/python
NPM    := $(shell command -v npm 2>/dev/null)

.PHONY: run test test-bench bench-deps test-python test-web test-example openapi-gen test-image image image-deps lint types check web system-deps bench bench-scale conformance faults test-faults clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

$(VENV)/.runtime: requirements.txt | $(PY)
	$(PY) -m pip install -q -r requirements.txt
	touch $@

$(VENV)/.dev: requirements.txt requirements-dev.txt | $(PY)
	$(PY) -m pip install -q -r requirements-dev.txt
	touch $@

## run: start the service on :5001 with the embedded MongoDB (builds the dashboard when Node is present)
run: $(VENV)/.runtime
	@if [ -n "$(NPM)" ]; then $(MAKE) --no-print-directory web; \
	 else echo "Node.js/npm not found: the dashboard at / is not built; /ws, /events and /api work without it."; fi
	$(PY) -m service

## web: install the web package's dependencies and build the bundle into web/dist
web:
	@test -n "$(NPM)" || { echo "npm is required to build web/ (install Node.js 20)"; exit 1; }
	cd web && { [ -d node_modules ] && [ node_modules/.package-lock.json -nt package-lock.json ] || npm ci --no-audit --no-fund --loglevel=error; }
	cd web && npm run --silent build

system-deps:
	scripts/system-deps.sh /usr/bin/chromium=chromium promtool=prometheus /usr/sbin/nginx=nginx-light

## test: install everything the tests need, then run them all (lint, types, web unit tests, pytest)
test: $(VENV)/.dev system-deps web test-example openapi-gen
	$(MAKE) --no-print-directory lint types test-web test-python

# Fault injection against real processes (~2 min): their own target, so make test stays under 10 min
FAULT_TESTS := tests/system/faults/test_faults.py tests/system/faults/test_stalls.py tests/system/faults/test_embedded_faults.py tests/system/faults/test_replay_storm.py tests/system/faults/test_restart_resume.py

# The benchmark's peers need make bench-deps (Pushpin, nchan, npm packages): their own target, make test-bench
BENCH_TESTS := tests/system/test_bench_peers.py tests/system/test_bench_scale.py tests/system/test_bench_cload.py \
	tests/system/test_bench_bus_lag.py

# Two pytest-xdist workers: the suite mostly waits on processes it started (SecantusDB, services,
# Chromium), so two share two cores well (11:01 serial against 6:23 on this 2-core machine).
# TEST_WORKERS=0 runs it in one process.
TEST_WORKERS ?= 2

test-python: $(VENV)/.dev
	$(PY) -m pytest -n $(TEST_WORKERS) --dist worksteal --ignore=tests/system/deploy/test_image.py $(FAULT_TESTS:%=--ignore=%) $(BENCH_TESTS:%=--ignore=%)

## test-faults: the fault-injection tests (MongoDB restart under idle replicas, deep resumes, rolling
## restart, full disk on a tmpfs, stalls, a replay storm), real processes, ~2 min; CI runs it after make test
test-faults: $(VENV)/.dev system-deps
	$(PY) -m pytest $(FAULT_TESTS)

## image: build the container image (IMAGE=realtime:dev) with docker or podman; without a
## reachable registry its Debian bookworm bases are made locally (cached in ~/.cache/realtime-image)
IMAGE ?= realtime:dev
image: image-deps
	scripts/image.sh $(IMAGE)

# Debian's podman with runc (and slirp4netns, used by the image test) and mmdebstrap, unless an
# engine already runs here
image-deps:
	@scripts/image.sh --engine >/dev/null 2>&1 || \
	 scripts/system-deps.sh podman=podman,runc,slirp4netns slirp4netns=slirp4netns mmdebstrap=mmdebstrap

## test-image: build the image and run it as k8s/base's Deployment would (tests/system/deploy/test_image.py, ~1-3 min)
test-image: $(VENV)/.dev image-deps
	$(PY) -m pytest tests/system/deploy/test_image.py -s

test-web:
	cd web && npm run --silent typecheck && npm run --silent test

## openapi-gen: install tests/openapi-gen (openapi-typescript + TypeScript 5) for tests/system/test_openapi_codegen.py
openapi-gen:
	@test -n "$(NPM)" || { echo "npm is required for tests/openapi-gen (install Node.js 20)"; exit 1; }
	cd tests/openapi-gen && { [ -d node_modules ] && [ node_modules/.package-lock.json -nt package-lock.json ] || npm ci --no-audit --no-fund --loglevel=error; }

## test-example: pack web/, install the tarball into examples/vite-react, type-check and build it (tsc -b, vite build)
test-example: web
	examples/vite-react/install-package.sh
	cd examples/vite-react && npm run --silent build

lint: $(VENV)/.dev
	$(BIN)/ruff check service handlers metrics harness tests bench realtime_client examples/python
	$(BIN)/ruff format --check service handlers metrics harness tests bench realtime_client examples/python

types: $(VENV)/.dev
	$(BIN)/mypy

## bench-deps: what the benchmark's peers need: nginx with nchan and Pushpin (Debian), Socket.IO 4.8 (npm ci), a C compiler (--client c)
bench-deps:
	scripts/system-deps.sh pushpin=pushpin /usr/lib/nginx/modules/ngx_nchan_module.so=nginx-light,libnginx-mod-nchan cc=gcc,libc6-dev
	@test -n "$(NPM)" || { echo "npm is required for bench/peers/socketio (install Node.js 20)"; exit 1; }
	cd bench/peers/socketio && { [ -d node_modules ] && [ node_modules/.package-lock.json -nt package-lock.json ] || npm ci --no-audit --no-fund --loglevel=error; }

## test-bench: each benchmark peer (Socket.IO, Pushpin, nchan, the naive server) with 20 clients in Python and in C that all get an event, the scaling run at a tiny size, the C clients against a scripted server, a short bus-hop run (~2 min)
test-bench: $(VENV)/.dev bench-deps
	$(PY) -m pytest $(BENCH_TESTS)

## bench: fan-out benchmark against nchan, Socket.IO, Pushpin and a naive Tornado server (see bench/README.md)
bench: $(VENV)/.dev bench-deps
	$(PY) -m bench $(ARGS)

## conformance: Autobahn|Testsuite against the WebSocket session: cases 1-10, then 12-13 with WS_COMPRESSION=1 (~5 min)
conformance: $(VENV)/.dev
	AUTOBAHN=full $(PY) -m pytest tests/system/test_autobahn.py -s

clean:
	rm -rf $(VENV) web/node_modules web/dist test-artifacts .pytest_cache .mypy_cache .ruff_cache
	rm -rf examples/vite-react/node_modules examples/vite-react/dist examples/vite-react/vendor tests/openapi-gen/node_modules bench/peers/socketio/node_modules

## faults: the fault suite (MongoDB restart under idle replicas, deep resumes, rolling restart, full disk, stalls; ~10 min; see bench/README.md)
faults: $(VENV)/.dev
	$(PY) -m bench.faults $(ARGS)

## bench-scale: the scaling curve, 1k to 100k connections, service against nchan, Socket.IO and Pushpin (see bench/README.md)
bench-scale: $(VENV)/.dev bench-deps
	$(PY) -m bench.scale $(ARGS)

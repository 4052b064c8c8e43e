# mmrouter: `make serve` sets up and starts the daemon; `make test` sets up and runs every test.
PYTHON ?= python3
VENV ?= .venv
PLUGINS := plugins/local plugins/openai plugins/anthropic plugins/gemini plugins/assemblyai
NODE_CLIENT := examples/node-client

.PHONY: setup serve test system-deps node-deps lint proto bench

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml $(wildcard plugins/*/pyproject.toml)
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -e '.[test]' $(addprefix -e ,$(PLUGINS))
	touch $@

# Options for `mmrouter serve`, e.g. make serve ARGS="--address 127.0.0.1:50052".
ARGS ?=

serve: setup
	$(VENV)/bin/mmrouter serve $(ARGS)

# espeak-ng makes the speech the local provider's tests transcribe; protoc-gen-go(-grpc) check that Go stubs generate
# from the .proto (Debian packages; needs root).
system-deps:
	@(for tool in espeak-ng protoc-gen-go protoc-gen-go-grpc; do command -v $$tool >/dev/null || exit 1; done) || { \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq espeak-ng protoc-gen-go protoc-gen-go-grpc >/dev/null; }

# The Node.js example client and buf (for `buf lint`) come from npm.
node-deps: $(NODE_CLIENT)/node_modules/.installed

$(NODE_CLIENT)/node_modules/.installed: $(NODE_CLIENT)/package.json $(NODE_CLIENT)/package-lock.json
	cd $(NODE_CLIENT) && npm ci --no-audit --no-fund --loglevel=error
	touch $@

# The suite runs on the machine's cores (pytest-xdist, at most 4 workers); a single test file or
# test runs as usual: .venv/bin/pytest tests/test_x.py.
test: setup system-deps node-deps
	$(VENV)/bin/pytest -q -n auto --maxprocesses=4 --durations=25

lint: setup node-deps
	$(VENV)/bin/ruff check .
	$(NODE_CLIENT)/node_modules/.bin/buf lint

# Regenerate the Python stubs from proto/ (tests fail when they drift).
proto: setup
	$(VENV)/bin/python -m grpc_tools.protoc -Iproto --python_out=proto --pyi_out=proto \
	  --grpc_python_out=proto proto/mmrouter/v1/router.proto

bench: setup
	$(VENV)/bin/python bench/run.py

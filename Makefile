# batray: two commands on a fresh machine.
#   make run    install into .venv (the CPU torch first) and run the whole recipe on configs/tiny.yaml
#   make test   install and run the test suite
VENV     ?= .venv
PYTHON   ?= python3
# The CPU build of torch; on a GPU machine use `make install TORCH_SPEC=torch` (or let vLLM pick it).
TORCH_SPEC ?= torch==2.13.0
CONFIG   ?= configs/tiny.yaml
PYTEST_ARGS ?=

BIN   := $(VENV)/bin
STAMP := $(VENV)/.batray-installed

.PHONY: install run test browser clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "$(TORCH_SPEC)"
	$(BIN)/pip install -q -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

run: install
	$(BIN)/batray run $(CONFIG)

# Debian's Chromium (and CJK fonts, so Chinese renders) for the annotation page's browser test;
# Playwright drives it by path, no browser download. Without root the browser test skips with its reason.
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq chromium fonts-noto-cjk >/dev/null; \
	  else echo "note: chromium not installed and not root; the browser test will skip"; fi; }

test: install browser
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) runs .pytest_cache

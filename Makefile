# The two commands of the README:
#   make demo   installs what is needed and runs the whole stack with demo mailboxes (./var)
#   make test   installs what is needed (Python packages, Debian packages, a PostgreSQL if the
#               machine has none) and runs the whole test suite, lint and type checks included
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint check bench install clean

$(STAMP): pyproject.toml scripts/bootstrap.sh
	scripts/bootstrap.sh $(VENV)
	@touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/colombe demo

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

test: $(STAMP)
	scripts/test-services.sh
	$(MAKE) --no-print-directory lint
	$(BIN)/pytest

bench: $(STAMP)
	scripts/test-services.sh
	$(BIN)/python -m bench.store_deliver
	$(BIN)/python -m bench.pki_bench
	$(BIN)/python -m bench.whitelist_bench
	$(BIN)/python -m bench.directory_bench
	$(BIN)/python -m bench.ldap_bench
	scripts/bench-services.sh
	$(BIN)/python -m pip install -q py-spy  # the IMAP bench profiles Colombe where it is slower
	$(BIN)/python -m bench.mta_bench --sink --wait-quiet 180
	$(BIN)/python -m bench.imap_bench

clean:
	rm -rf $(VENV) var build *.egg-info .pytest_cache .mypy_cache .ruff_cache

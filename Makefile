# layerseal: `make demo` runs the main job, `make test` runs every check.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEBS := skopeo umoci docker-registry runc openssl busybox-static bubblewrap softhsm2 time buildah golang-go containerd pgbouncer xfsprogs swtpm swtpm-tools tpm2-tools fuse3 chromium chromium-driver jq curl systemd

.PHONY: setup debs demo test lint typecheck unit bench clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

# Debian packages the tests drive for real; installed only when missing.
debs:
	@missing=""; for p in $(DEBS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  SUDO=$$( [ $$(id -u) -eq 0 ] || echo sudo ); \
	  $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$missing \
	  || { $$SUDO apt-get update -q && $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$missing; }; \
	fi

lint: setup
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench

typecheck: setup
	$(BIN)/mypy

test: setup debs lint typecheck
	$(BIN)/pytest -q

demo: setup debs
	$(BIN)/python -m layerseal.demo

bench: setup debs
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) build .mypy_cache .pytest_cache .ruff_cache

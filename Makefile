# Two commands do everything on a fresh machine: `make demo` and `make test`.
PY      ?= python3.11
VENV    ?= .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: install demo test bench-deps bench-trl-ppo clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# torch first, pinned: this takes the local CPU wheel instead of the CUDA build.
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $@

demo: install
	$(BIN)/gradascent demo --out runs/demo

test: install
	$(BIN)/python -m pytest -q -n 2 --dist loadgroup

bench-deps: install
	$(BIN)/python -m pip install -q -e '.[dev,bench]'

# TRL's PPO trainer (trl.experimental.ppo) was removed after TRL 1.12: bench/ppo_vs_trl.py runs it from a
# side directory, leaving the installed TRL and every other dependency as they are.
bench-trl-ppo: bench-deps
	$(BIN)/python -m pip install -q --no-deps --target .cache/trl-ppo trl==1.12.0

clean:
	rm -rf $(VENV) runs build src/*.egg-info

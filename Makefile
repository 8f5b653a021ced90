# The two commands a user needs: `make demo` and `make test`. Everything they need is installed here.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
TORCH_PINS := torch==2.14.1 torchvision==0.29.1
# pytest-xdist worker processes for make test; each test file (and the Ray tests together) stays on one
TEST_WORKERS ?= 2

.PHONY: install test demo bench interop lint clean example-data train-demo

install: $(STAMP)

$(STAMP): pyproject.toml scripts/install_system_deps.sh
	bash scripts/install_system_deps.sh
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_PINS)
	$(PY) -m pip install -q -e '.[dev,ray]' $(TORCH_PINS)
	touch $(STAMP)

test: install
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadgroup --no-loadscope-reorder tests

demo: install
	$(VENV)/bin/agent demo

# Every bench in turn; each figure also lands in runs/bench/records.jsonl, and one table of every ratio
# against its goal ends the run (bench/summary.py), also when a bench failed (its name is printed).
BENCHES := model train data_tools mujoco_env web_env robot grpo lapa android_env metaworld_env miniwob_env search scale
BENCH_RECORDS_FILE := runs/bench/records.jsonl

bench: install
	mkdir -p $(dir $(BENCH_RECORDS_FILE)) && rm -f $(BENCH_RECORDS_FILE)
	failed=""; for name in $(BENCHES); do \
	  BENCH_RECORDS=$(BENCH_RECORDS_FILE) $(PY) bench/$$name.py || failed="$$failed $$name"; done; \
	$(PY) bench/summary.py $(BENCH_RECORDS_FILE); \
	if [ -n "$$failed" ]; then echo "failed benches:$$failed"; exit 1; fi

# Our wire and dataset contracts against the peers' own packages, each in its own venv (runs/.interop-venvs).
# The Magma-8B export against Microsoft's own modeling code: MAGMA_CODE=DIR, the magma/ folder of
# github.com/microsoft/Magma or a download of the hub repo (their code is never copied into this repo).
interop: install
	$(PY) scripts/interop_lerobot.py
	$(PY) scripts/interop_openpi.py
	@if [ -n "$(MAGMA_CODE)" ]; then $(PY) scripts/interop_magma.py --magma-code "$(MAGMA_CODE)"; \
	else echo "interop_magma: skipped; give MAGMA_CODE=DIR (Microsoft's Magma modeling files) to run it"; fi

# The synthetic three-source corpus the tiny training recipes read (data/example, a few MB).
example-data: install
	$(PY) -m data_tools.synthetic data/example

# Joint pretraining of magma-tiny on the example mixture: a few minutes on 2 CPU cores.
train-demo: example-data
	if [ -f runs/pretrain-tiny/config.yaml ]; then RESUME=--resume; fi; \
	$(VENV)/bin/agent train --config pretrain-tiny $$RESUME

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info data/example

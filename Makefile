# Everything starts from a fresh clone with only Python and pip: the venv target installs itself.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.requirements-installed

.PHONY: venv test demo lint bench clean sim-benchmark

venv: $(STAMP)

# Re-install only when requirements.txt changes. --no-cache-dir: a cached deepspeed wheel built
# against another torch fails at run time with a version mismatch.
$(STAMP): requirements.txt requirements-nodeps.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q --no-cache-dir -r requirements.txt
	$(PY) -m pip install -q --no-cache-dir --no-deps -r requirements-nodeps.txt
	cat requirements.txt requirements-nodeps.txt > $(STAMP)

test: venv
	$(PY) -m ruff check .
	$(PY) -m pytest -q tests

demo: venv
	bash scripts/demo.sh

# Closed-loop benchmark in gym-aloha: record, train on CPU (about 2 h on 2 cores), evaluate; re-run to resume.
sim-benchmark: venv
	bash scripts/sim_benchmark.sh

lint: venv
	$(PY) -m ruff check .

bench: venv
	$(PY) benchmarks/bench_data.py
	$(PY) benchmarks/bench_policy_head.py
	$(PY) benchmarks/bench_train.py
	$(PY) benchmarks/bench_server_load.py

clean:
	rm -rf artifacts outputs .pytest_cache

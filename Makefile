# Two commands: `make demo` runs the whole pipeline on synthetic data, `make test` the tests.
# Both create .venv/ from requirements.txt on first use and reuse it afterwards.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
DEMO := demo
SCALE ?= small
JOBS ?= 2

.PHONY: demo test bench clean-demo

$(VENV)/.installed: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.txt
	touch $@

demo: $(VENV)/.installed
	$(PY) make_demo_data.py --out $(DEMO)/affwild2_raw --scale $(SCALE) --jobs $(JOBS)
	$(PY) prepare_data.py --dataset affwild2 --root $(DEMO)/affwild2_raw --out $(DEMO)/data/affwild2 --jobs $(JOBS)

test: $(VENV)/.installed
	$(PY) -m pytest -q tests

bench: $(VENV)/.installed
	$(PY) benchmarks/bench_prepare.py

clean-demo:
	rm -rf $(DEMO)

# Two commands: `make demo` runs the whole pipeline on synthetic data, `make test` the tests.
# Both create .venv/ from requirements.txt on first use and reuse it afterwards.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
DEMO := demo
SCALE ?= small
JOBS ?= 2
SEED ?= 0

.PHONY: demo test bench clean-demo

$(VENV)/.installed: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.txt
	touch $@

demo: $(VENV)/.installed
	$(PY) make_demo_data.py --out $(DEMO)/affwild2_raw --scale $(SCALE) --jobs $(JOBS)
	$(PY) prepare_data.py --dataset affwild2 --root $(DEMO)/affwild2_raw --out $(DEMO)/data/affwild2 --jobs $(JOBS)
	$(PY) train_image.py --preset demo --data $(DEMO)/data/affwild2 --runs $(DEMO)/runs --name demo --seed $(SEED)
	$(PY) train_audio.py --preset demo --data $(DEMO)/data/affwild2 --runs $(DEMO)/runs --name demo --seed $(SEED)
	$(PY) train_fusion.py --preset demo --image $(DEMO)/runs/image/demo_seed$(SEED) --audio $(DEMO)/runs/audio/demo_seed$(SEED) \
		--data $(DEMO)/data/affwild2 --runs $(DEMO)/runs --name demo --seed $(SEED)
	$(PY) ensemble.py --runs $(foreach h,fusion image audio,$(DEMO)/runs/fusion/demo_seed$(SEED):logits_$(h)) \
		--name demo --out-dir $(DEMO)/ensembles
	$(PY) make_submission.py --ensemble $(DEMO)/ensembles/demo --split val --out $(DEMO)/submissions/demo.zip
	$(PY) make_submission.py --ensemble $(DEMO)/ensembles/demo --out $(DEMO)/submissions/demo.zip

test: $(VENV)/.installed
	$(PY) -m pytest -q tests

bench: $(VENV)/.installed
	$(PY) benchmarks/bench_prepare.py
	$(PY) benchmarks/bench_image.py
	$(PY) benchmarks/bench_audio.py
	$(PY) benchmarks/bench_fusion.py
	$(PY) benchmarks/bench_ensemble.py

clean-demo:
	rm -rf $(DEMO)

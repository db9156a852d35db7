# make demo: set up .venv and run the full TATL pipeline on the embedded synthetic dataset (~8 min on 2 CPU cores)
# make test: set up .venv and run the test suite (make test-fast: the fast tier alone; .ci/run: fast, then slow)
# make docs: build the documentation site into site/ with mkdocs build --strict (installs the docs extra)
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DOCS_STAMP := $(VENV)/.docs-installed
# Known-good pins (DEVELOPERS.md). On x86_64 with Python 3.11 pip takes these torch wheels from local disk here.
TORCH_PINS ?= torch==2.14.1 torchvision==0.29.1

.PHONY: venv demo test test-fast test-slow docs bench lint
venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(TORCH_PINS)
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

demo: venv
	$(VENV)/bin/tatl run synthetic --config demo --out runs/demo-$$(date +%Y%m%d-%H%M%S)

test: venv
	$(PY) -m pytest -q

test-fast: venv
	$(PY) -m pytest -q -m "not slow"

test-slow: venv
	$(PY) -m pytest -q -m slow

$(DOCS_STAMP): $(STAMP) pyproject.toml
	$(PY) -m pip install --quiet -e '.[test,docs]'
	touch $(DOCS_STAMP)

# --strict: a broken link, a missing page or a docstring mkdocstrings cannot read fails the build. No network needed.
# Not --quiet: it hides the warnings that --strict counts.
docs: $(DOCS_STAMP)
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --site-dir site

bench: venv
	$(PY) benchmarks/bench_decode.py
	$(PY) benchmarks/bench_train.py
	$(PY) benchmarks/bench_stage3.py
	$(PY) benchmarks/bench_stage3.py --encoder resnet152 --images 16
	$(PY) benchmarks/bench_stage3.py --size 256 --images 16
	$(PY) benchmarks/bench_infer.py
	$(PY) benchmarks/bench_flops.py
	$(PY) benchmarks/bench_memory.py
	$(PY) benchmarks/bench_ddp.py

lint: venv
	$(VENV)/bin/ruff check tatl tests benchmarks

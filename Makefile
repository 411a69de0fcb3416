# Two commands do all the set-up on a fresh machine:
#   make demo   # create .venv, install, run the whole pipeline on the synthetic benchmark
#   make test   # create .venv, install, run the test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DEMO_OUT ?= demo_out
BENCH_OUT ?= bench_out

.PHONY: install demo test test-fast bench clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --disable-pip-version-check -q -e '.[dev]'
	touch $@

demo: install
	PATH="$(abspath $(BIN)):$$PATH" SEGADAPT_QUIET=1 bash examples/synthetic.sh $(DEMO_OUT)
	$(BIN)/python benchmarks/summarize.py $(DEMO_OUT)

test: install
	$(BIN)/python -m pytest -q

test-fast: install
	$(BIN)/python -m pytest -q -m "not slow"

bench: install
	PATH="$(abspath $(BIN)):$$PATH" bash benchmarks/synthetic_seeds.sh $(BENCH_OUT)
	$(BIN)/python benchmarks/pseudo_label_throughput.py

clean:
	rm -rf $(DEMO_OUT) $(BENCH_OUT) .pytest_cache

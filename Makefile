# Two commands on a fresh machine: `make train` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
# The CPU wheel of torch; override on a GPU machine (e.g. TORCH_SPEC=torch) or where another build is wanted.
TORCH_SPEC ?= torch==2.13.0

# Triton: the `test` extra installs the newest supported release into the venv; every other version listed here
# goes beside it (.venv/triton-X, with a numpy < 2.4, which Triton 3.6's interpreter needs for loop bounds) and
# the Triton test files run once more with it first on PYTHONPATH, so both ends of the range are tested.
TRITON_MATRIX ?= 3.6.0 3.9.0
TRITON_TESTS  := tests/test_ops_mlstm_triton.py tests/test_ops_slstm_triton.py tests/test_large_fused_decode.py \
                 tests/test_compile_triton.py tests/test_triton_bad_values.py tests/test_fuzz_ops.py \
                 tests/test_triton_sm90_compile.py

.PHONY: train test test-triton-matrix install install-test clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[train,plot]"
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(PY) -m pip install -q -e ".[test]"
	touch $@

install: $(VENV)/.installed
install-test: $(VENV)/.installed-test

train: $(VENV)/.installed
	$(VENV)/bin/flashxlstm train --overwrite

test: $(VENV)/.installed-test
	$(PY) -m pytest -q -n 2 tests
	$(MAKE) test-triton-matrix

test-triton-matrix: $(VENV)/.installed-test
	@have=$$($(PY) -c "import triton; print(triton.__version__)"); \
	for v in $(TRITON_MATRIX); do \
	  if [ "$$v" = "$$have" ]; then echo "triton $$v: the venv's, tested by the main run"; continue; fi; \
	  test -f $(VENV)/triton-$$v/.installed || { rm -rf $(VENV)/triton-$$v && \
	    $(PY) -m pip install -q --no-deps --target $(VENV)/triton-$$v "triton==$$v" "numpy<2.4" && \
	    touch $(VENV)/triton-$$v/.installed; } || exit 1; \
	  echo "triton $$v: $(TRITON_TESTS)"; \
	  PYTHONPATH=$(VENV)/triton-$$v $(PY) -m pytest -q -n 2 $(TRITON_TESTS) || exit 1; \
	done

clean:
	rm -rf $(VENV) runs

# Two commands on a fresh machine: `make train` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
# The CPU wheel of torch; override on a GPU machine (e.g. TORCH_SPEC=torch) or where another build is wanted.
TORCH_SPEC ?= torch==2.13.0

.PHONY: train test install install-test clean

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

clean:
	rm -rf $(VENV) runs

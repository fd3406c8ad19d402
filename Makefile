# Two commands matter: `make demo` and `make test` (see README). Both create or reuse .venv.
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.securefed-installed

.PHONY: demo test install clean

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# CPU machines: install the pinned CPU build only when no torch is importable
	# (an unpinned torch would pull several GB of CUDA wheels).
	@echo "installing securefed and its dependencies into $(VENV) (first run only: 1-2 min; pip is silent while it unpacks)"
	# not -q: each install lists what it collects; pip is silent only while it unpacks (measured: up to 36 s, once)
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install --progress-bar off torch==2.13.0
	$(PY) -m pip install --progress-bar off -e '.[test,ray]'   # ray: tests/federation/test_ray.py and the conformance matrix
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/securefed simulate

test: $(STAMP)   # two workers (pytest-xdist): on one, the cores stood idle half the time (deadlines, processes waiting)
	$(PY) -m pytest -q -n 2 --dist worksteal

clean:
	rm -rf $(VENV) runs .pytest_cache

# fedpic: `make demo` and `make test` work on a fresh clone; each creates .venv on first use.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.fedpic-installed
export FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION := 1
export PYTHONUNBUFFERED := 1

.PHONY: demo test bench install clean

install: $(STAMP)

# torch first (from the pinned wheels), then the project without build isolation so the
# extension in csrc/ compiles against that same torch instead of a second download.
# --no-cache-dir: torch's CUDA wheels are ~3 GB; a cached copy beside the installed one
# doubled the disk an install needs (a CI machine ran out of space).
$(STAMP): pyproject.toml setup.py $(wildcard csrc/*.cpp csrc/*.cu csrc/*.h)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --no-cache-dir --upgrade pip "setuptools>=69" wheel
	$(PY) -m pip install -q --no-cache-dir torch==2.14.1 torchvision==0.29.1 ninja
	$(PY) -m pip install -q --no-cache-dir --no-build-isolation -e '.[test,bench]'
	touch $@

demo: $(STAMP)
	$(VENV)/bin/fedpic demo --config demo --out runs/demo

test: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m pytest -q

bench: $(STAMP)
	for script in $(filter-out benchmarks/bench_models.py,$(wildcard benchmarks/*.py)); do $(PY) $$script || exit 1; done

clean:
	rm -rf $(VENV) build *.egg-info pic_core/_C*.so runs

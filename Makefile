# `make train` and `make test` set up .venv themselves on first use.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
CONFIG ?= configs/default.py
WORKDIR ?= workdir/default
# Extra train.py flags, e.g. FLAGS=--config.seed=1 (one more seed of the recipe).
FLAGS ?=
# Raw Multi30k files for an offline build; a sibling ../shared/data/multi30k is used if
# present. Empty: the TFDS builder downloads them.
MULTI30K_DIR ?= $(abspath $(wildcard ../shared/data/multi30k))
export MULTI30K_DIR

# `make distill`: the teacher's training workdir and the student's config. The student
# trains in WORKDIR when given (make distill WORKDIR=...), else in workdir/distill: never
# in the default WORKDIR, the CPU recipe's.
TEACHER ?= workdir/best
DISTILL_CONFIG ?= configs/multi30k_distill.py
DISTILL_WORKDIR := $(if $(filter file,$(origin WORKDIR)),workdir/distill,$(WORKDIR))

# requirements/lock.txt pins every package, for Python 3.11 on Linux x86-64, at the
# version all our numbers were measured with; setup installs through it as constraints,
# so a clone installs the same versions a year from now. It covers the base install and
# every extra (test, ctranslate2, tensorboard, gcs, tpu, cuda12, cuda-compile, onnx), so
# e.g.
#   .venv/bin/pip install -c requirements/lock.txt -e '.[tpu]'
# installs the pinned libtpu as well.
LOCK := requirements/lock.txt
LOCK_EXTRAS := test ctranslate2 tensorboard gcs tpu cuda12 cuda-compile onnx
# `make lock` regenerates LOCK with uv's pip-compile (uv 0.13.9, installed into
# build/lock-tool), i.e.
#   uv pip compile setup.cfg --extra test ... --extra onnx --python-version 3.11 \
#       --python-platform x86_64-manylinux_2_31 -o requirements/lock.txt
# Run it after changing the requirements in setup.cfg. uv keeps the versions already
# pinned in LOCK where they still satisfy setup.cfg; UPGRADE=1 lets it move every pin to
# the newest release in range (then re-measure before committing the new lock). The
# platform is manylinux_2_31 because libtpu's wheels need glibc 2.31 or newer.
UV_VERSION := 0.13.9
LOCK_TOOL := build/lock-tool
UPGRADE ?=

# Extras `make setup` installs. libtpu (the `tpu` extra) prints start-up warnings on a
# machine without a TPU, so it is opt-in: EXTRAS=test,ctranslate2,tensorboard,tpu adds
# the compile-only TPU tests (tests/test_tpu_compile.py), as .ci/run does.
EXTRAS ?= test,ctranslate2,tensorboard

.PHONY: setup lock lock-check train distill test test-fast clean
setup: $(VENV)/.installed

$(VENV)/.installed: setup.cfg pyproject.toml $(LOCK)
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q 'pip==26.3'
	$(PY) -m pip install -q -c $(LOCK) -e '.[$(EXTRAS)]'
	touch $@

lock:
	test -x $(LOCK_TOOL)/bin/uv || { $(PYTHON) -m venv $(LOCK_TOOL) && \
	    $(LOCK_TOOL)/bin/pip install -q 'uv==$(UV_VERSION)'; }
	$(LOCK_TOOL)/bin/uv pip compile setup.cfg $(addprefix --extra ,$(LOCK_EXTRAS)) \
	    --python-version 3.11 --python-platform x86_64-manylinux_2_31 \
	    $(if $(UPGRADE),--upgrade) -o $(LOCK)

# Fails, naming them, if an installed package is missing from LOCK or differs from its
# pin there (e.g. a dependency added to setup.cfg without `make lock`).
NORMALIZE := awk -F'==' '{n = tolower($$1); gsub(/[-_.]+/, "-", n); print n "==" $$2}'
lock-check: setup
	@$(PY) -m pip freeze --exclude-editable | grep -v '^#' | $(NORMALIZE) | sort \
	    > $(VENV)/freeze.txt
	@grep -E '^[A-Za-z0-9]' $(LOCK) | cut -d' ' -f1 | $(NORMALIZE) | sort > $(VENV)/lock.txt
	@comm -23 $(VENV)/freeze.txt $(VENV)/lock.txt > $(VENV)/unlocked.txt; \
	if [ -s $(VENV)/unlocked.txt ]; then \
	    echo "installed, but not at a version pinned in $(LOCK):"; \
	    cat $(VENV)/unlocked.txt; exit 1; fi; \
	echo "all $$(wc -l < $(VENV)/freeze.txt) installed packages are pinned in $(LOCK)"

train: setup
	$(PY) train.py --config=$(CONFIG) --workdir=$(WORKDIR) $(FLAGS)

distill: setup  # Teacher translates the training set; a student trains on it; scores.
	$(PY) distill.py --config=$(DISTILL_CONFIG) --workdir=$(DISTILL_WORKDIR) \
	    --teacher=$(TEACHER)

test: setup
	$(PY) -m pytest -q -n 2 tests

test-fast: setup  # Unit tests only: no train.py/infer.py processes, no model training.
	$(PY) -m pytest -q -n 2 -m "not slow" tests

clean:
	rm -rf $(VENV) $(LOCK_TOOL) *.egg-info

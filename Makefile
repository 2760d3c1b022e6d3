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

.PHONY: setup train distill test test-fast clean
setup: $(VENV)/.installed

$(VENV)/.installed: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test,ctranslate2]'
	touch $@

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
	rm -rf $(VENV) *.egg-info

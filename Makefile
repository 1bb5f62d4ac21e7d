# The two quick-start commands (`make demo`, `make test`) create .venv from the
# pinned requirements the first time, and again whenever a requirements file changes.
VENV := .venv
PYTHON := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed

.PHONY: demo test test-keras3 test-keras3-mirrored test-tf-keras test-tf-keras-graph test-tf-keras-mirrored benchmark

$(INSTALLED): requirements.txt requirements-nodeps.txt pyproject.toml
	test -x $(PYTHON) || python3 -m venv $(VENV)
	$(PYTHON) -m pip install --quiet --upgrade pip
	$(PYTHON) -m pip install --quiet -r requirements.txt
	$(PYTHON) -m pip install --quiet --no-deps -r requirements-nodeps.txt
	$(PYTHON) -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $(INSTALLED)

# The main job: the ablation on the shipped default dataset (plain vs FGM vs
# PGD, 3 seeds); prints the table and writes runs/ablation/.
demo: $(INSTALLED)
	$(PYTHON) -m keras_adv ablation

# The whole suite, one process per stack, two at a time (each process's
# output is printed whole when it ends): tf-keras needs its flags set before
# TensorFlow loads (tests/tf_keras*/conftest.py sets them), graph mode is
# global to a process, and the mirrored folders split the CPU into two
# logical devices before TensorFlow initialises.
TEST_PROCESSES := test-keras3 test-keras3-mirrored test-tf-keras test-tf-keras-graph test-tf-keras-mirrored

test: $(INSTALLED)
	$(MAKE) --no-print-directory --keep-going -j2 --output-sync=target $(TEST_PROCESSES)

test-keras3: $(INSTALLED)
	$(PYTHON) -m pytest tests/keras3 tests/test_methods.py

test-keras3-mirrored: $(INSTALLED)
	$(PYTHON) -m pytest tests/keras3_mirrored

test-tf-keras: $(INSTALLED)
	$(PYTHON) -m pytest tests/tf_keras

test-tf-keras-graph: $(INSTALLED)
	$(PYTHON) -m pytest tests/tf_keras_graph

test-tf-keras-mirrored: $(INSTALLED)
	$(PYTHON) -m pytest tests/tf_keras_mirrored

# Not part of the tests: step cost against plain and against each method's
# floor, both stacks; writes BENCHMARKS.md.
benchmark: $(INSTALLED)
	$(PYTHON) benchmarks/step_cost.py

# The two quick-start commands (`make demo`, `make test`) create .venv from the
# pinned requirements the first time, and again whenever a requirements file changes.
VENV := .venv
PYTHON := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed

.PHONY: demo test test-keras3 test-keras3-jax test-keras3-torch test-ablation test-keras3-jax-data-parallel test-keras3-jax-model-parallel test-keras3-mirrored test-tf-keras test-tf-keras-graph test-tf-keras-mirrored test-tf-keras-graph-mirrored benchmark

$(INSTALLED): requirements.txt requirements-nodeps.txt pyproject.toml
	test -x $(PYTHON) || python3 -m venv $(VENV)
	$(PYTHON) -m pip install --quiet --upgrade pip
	$(PYTHON) -m pip install --quiet -r requirements.txt
	$(PYTHON) -m pip install --quiet --no-deps -r requirements-nodeps.txt
	$(PYTHON) -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $(INSTALLED)

# The main job: the ablation on the shipped default dataset (plain vs FGM on
# the matrix and per example, each on its own grid of relative sizes, grown
# past an edge where the best sits on it, 3 seeds; each size chosen on
# validation, then tested beside plain); prints the report and writes
# runs/ablation/.
demo: $(INSTALLED)
	$(PYTHON) -m keras_adv ablation

# The whole suite, one process per stack, two at a time (each process's
# output is printed whole when it ends). tests/keras3 is stack-neutral and
# runs once per Keras 3 backend, each with its backend's own folder; a
# backend is chosen before Keras loads. tf-keras needs its flags set before
# TensorFlow loads (tests/tf_keras*/conftest.py sets them), graph mode is
# global to a process, and the mirrored and data-parallel folders split the
# CPU into two devices before TensorFlow or JAX initialises (the model-parallel
# folder into eight). Listed longest first (as measured on 2 cores), so that
# the two at a time end together.
TEST_PROCESSES := test-keras3 test-tf-keras test-keras3-jax test-tf-keras-mirrored test-keras3-jax-model-parallel \
	test-ablation test-tf-keras-graph test-keras3-torch test-keras3-mirrored test-tf-keras-graph-mirrored \
	test-keras3-jax-data-parallel

test: $(INSTALLED)
	$(MAKE) --no-print-directory --keep-going -j2 --output-sync=target $(TEST_PROCESSES)

test-keras3: $(INSTALLED)
	KERAS_BACKEND=tensorflow $(PYTHON) -m pytest tests/keras3 tests/keras3_tensorflow tests/test_methods.py

# The ablation runner's tests (their end-to-end runs are the suite's longest)
# in a process of their own, on Keras 3 with TensorFlow, as `make demo` runs.
test-ablation: $(INSTALLED)
	KERAS_BACKEND=tensorflow $(PYTHON) -m pytest tests/ablation

test-keras3-jax: $(INSTALLED)
	KERAS_BACKEND=jax $(PYTHON) -m pytest tests/keras3 tests/keras3_jax

test-keras3-torch: $(INSTALLED)
	KERAS_BACKEND=torch $(PYTHON) -m pytest tests/keras3 tests/keras3_torch

test-keras3-jax-data-parallel: $(INSTALLED)
	$(PYTHON) -m pytest tests/keras3_jax_data_parallel

test-keras3-jax-model-parallel: $(INSTALLED)
	$(PYTHON) -m pytest tests/keras3_jax_model_parallel

test-keras3-mirrored: $(INSTALLED)
	$(PYTHON) -m pytest tests/keras3_mirrored

test-tf-keras: $(INSTALLED)
	$(PYTHON) -m pytest tests/tf_keras

test-tf-keras-graph: $(INSTALLED)
	$(PYTHON) -m pytest tests/tf_keras_graph

test-tf-keras-mirrored: $(INSTALLED)
	$(PYTHON) -m pytest tests/tf_keras_mirrored

test-tf-keras-graph-mirrored: $(INSTALLED)
	$(PYTHON) -m pytest tests/tf_keras_graph_mirrored

# Not part of the tests: step cost against plain and against each method's
# floor, both stacks; writes BENCHMARKS.md.
benchmark: $(INSTALLED)
	$(PYTHON) -m benchmarks.step_cost

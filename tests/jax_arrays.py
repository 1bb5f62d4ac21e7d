"""The arrays with a vocabulary-sized dimension that a Keras 3 JAX train
step builds: in its traced program (global arrays, what the step computes
before any partitioning; tests/keras3_jax/test_no_dense_matrix.py) and in
the program each device runs under `keras.distribution` (its shards, after
XLA's partitioner; tests/keras3_jax_model_parallel).
"""

import collections
import re

import jax
import keras


def state_of(model):
    """The train step's state, as `fit` passes it: the variables' values
    (the optimizer built first, as `fit` builds it, if no step has yet)."""
    if not model.optimizer.built:
        model.optimizer.build(model.trainable_variables)
    return tuple(
        [v.value for v in variables]
        for variables in (model.trainable_variables, model.non_trainable_variables,
                          model.optimizer.variables, model.metrics_variables)
    )


def vocabulary_arrays(jaxpr, vocab, counts=None):
    """`{(primitive, shape): n}`: the arrays of `jaxpr` with `vocab` rows
    that its equations make, nested programs (jit, cond, custom_jvp) included."""
    counts = collections.Counter() if counts is None else counts
    for equation in jaxpr.eqns:
        for var in equation.outvars:
            shape = getattr(var.aval, "shape", ())
            if shape and shape[0] == vocab:
                counts[(equation.primitive.name, tuple(shape))] += 1
        for param in equation.params.values():
            for inner in param if isinstance(param, (tuple, list)) else [param]:
                inner = getattr(inner, "jaxpr", inner)  # A ClosedJaxpr holds its Jaxpr.
                if hasattr(inner, "eqns"):
                    vocabulary_arrays(inner, vocab, counts)
    return counts


def train_step_arrays(model, data, vocab):
    """The `vocab`-row arrays of the model's traced train step on `data`."""
    traced = jax.make_jaxpr(lambda state, data: model.train_step(state, data))(state_of(model), data)
    return vocabulary_arrays(traced.jaxpr, vocab)


def gradient_arrays(model, data, vocab):
    """The `vocab`-row arrays of one pass's gradient of the loss w.r.t. the
    trainable weights, on `data` (`(x, y)` or `(x, y, sample_weight)`)."""
    trainable, non_trainable, optimizer_variables, metrics = state_of(model)
    x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)

    def loss(trainable):
        return model.compute_loss_and_updates(
            trainable, non_trainable, metrics, x, y, sample_weight, training=True,
            optimizer_variables=optimizer_variables,
        )[0]

    return vocabulary_arrays(jax.make_jaxpr(jax.grad(loss))(trainable).jaxpr, vocab)


# An HLO instruction's result type: `%name = f32[16,8]{1,0} opcode(...`, or a
# tuple of such types in parentheses.
_RESULT = re.compile(r"=\s+(\([^=]*?\)|\S+)\s+[\w\-]+\(")
_SHAPE = re.compile(r"\b([a-z]+\d*)\[([\d,]*)\]")


def shard_arrays(model, data):
    """`{(dtype, shape): n}`: the results of the instructions of the program
    that each device runs for one train step under the current
    `keras.distribution` (per-device shapes, after partitioning).

    It is compiled with the arguments Keras's JAX `fit` compiles the step
    with (`jax.jit(train_step, donate_argnums=0, out_shardings=the state's
    shardings)`, keras/src/backend/jax/trainer.py), on the state's sharded
    values and `data` distributed along the distribution's batch axis: the
    very program `fit` then runs (JAX's cache hands it over compiled).

    Args:
        model: A compiled model built under the distribution.
        data: `(x, y)` or `(x, y, sample_weight)`, numpy arrays (the global batch).
    """
    distribution = keras.distribution.distribution()
    data = jax.tree.map(
        lambda a: keras.distribution.distribute_tensor(a, distribution.get_data_layout(a.shape)), data
    )
    state = state_of(model)
    shardings = (None, tuple([value.sharding for value in part] for part in state))
    step = jax.jit(model.train_step, donate_argnums=0, out_shardings=shardings)
    program = step.lower(state, data).compile().as_text()
    return collections.Counter(
        (dtype, tuple(int(d) for d in dims.split(",") if d))
        for result in _RESULT.findall(program)
        for dtype, dims in _SHAPE.findall(result)
    )


def with_dimension(arrays, size):
    """The entries of `arrays` (`shard_arrays`) with a dimension of `size`."""
    return collections.Counter({key: n for key, n in arrays.items() if size in key[1]})

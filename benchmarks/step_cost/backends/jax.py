"""The JAX backend: Keras 3 on JAX (KerasHub BERT).

Every step is one XLA program, as Keras runs it: `fit` jit-compiles
`model.train_step(state, data) -> (logs, state)` with the state donated
(`keras/src/backend/jax/trainer.py`, `make_train_function`), whatever the
device (`jit_compile="auto"` is always XLA on JAX). Each variant here is that
same `jax.jit(step, donate_argnums=0)`, called on the batch already on the
device, the state carried from call to call as `fit`'s loop carries it. Not
`train_on_batch`: it also converts the batch from numpy, rebuilds the state
from the variables and writes it back every call, costs that are the same
for every variant and only dilute the ratios. All variants carry one shared
state (each step trains the same model, as on TensorFlow), which is copied
from the model once, so the model's own variables stay readable.

Memory: JAX has no reset of its allocator's peak (`memory_stats()` holds the
peak since the process started), so the allocator peak is not measured. The
live-tensor measure is what XLA's buffer assignment gives the compiled step
(`compiled.memory_analysis()`): the temporaries it allocates at once, plus
its outputs that reuse no donated input. It is the compiler's plan, exact for
the program that runs, and the same on a CPU and a GPU.
"""

import numpy as np

from benchmarks.step_cost import variants
from benchmarks.step_cost.memory import LIVE
from benchmarks.step_cost.variants import DOUBLE_BACKWARD, EPSILON, RECIPE_GRAPH, RECIPE_HOST

NAME = "jax"
STACKS = {"keras3": "Keras 3 on JAX (KerasHub BERT)"}
# The published Keras recipe copies the dense gradient and the matrix through
# numpy between compiled pieces (`K.eval`, `K.set_value`): TensorFlow's
# session-era path, with no JAX counterpart to time.
UNSUPPORTED_VARIANTS = {RECIPE_HOST: "the Keras recipe's host copies are TensorFlow's"}
MEMORY_ENV = {}
MEMORY_MEASURES = (
    "*Live tensors*: the weights and optimizer slots plus the temporaries that XLA's buffer "
    "assignment allocates for the compiled step, and its outputs that reuse no donated input "
    "(`compiled.memory_analysis()`: the compiler's plan, exact for the program that runs). "
    "*Allocator peak*: not measured: JAX keeps the peak since the process started, with no reset."
)
# No tf.distribute on JAX (its multi-device path is `keras.distribution`).
mirrored_strategy = None


def prepare(stack):
    """Nothing to set before JAX loads."""
    del stack


def device():
    """`"GPU"` if JAX's default device is one, else `"CPU"`."""
    import jax

    return "GPU" if jax.devices()[0].platform == "gpu" else "CPU"


def jit_compile(device, xla):
    """Always XLA: `jit_compile="auto"` on JAX, on every device."""
    del device, xla
    return True


def describe_device(device):
    return f"Device: {device}, every step one XLA program (as Keras's `fit` runs it on JAX)."


def memory_measures(device):
    """The live-tensor measure only, on every device (see the module's docstring)."""
    del device
    return (LIVE,)


# ---------------------------------------------------------------- steps


class _Step:
    """One variant: a jitted step over the shared state (or a pass that
    leaves the state as it is). Calling it runs one step to the end."""

    def __init__(self, function, shared, batch, updates_state):
        import jax

        self._function = function
        self._shared, self._batch, self._updates_state = shared, batch, updates_state
        self._jax = jax

    def __call__(self):
        if self._updates_state:
            logs, state = self._function(self._shared["state"], self._batch)
            # Tuples, as it came in: a list would be another pytree and retrace.
            self._shared["state"] = tuple(tuple(part) for part in state)
            return self._jax.block_until_ready((logs, self._shared["state"]))
        return self._jax.block_until_ready(self._function(self._shared["state"], self._batch))

    def step_bytes(self):
        """What XLA allocates for this step beyond its donated inputs: its
        temporaries, and its outputs that reuse no input buffer."""
        compiled = self._function.lower(self._shared["state"], self._batch).compile()
        stats = compiled.memory_analysis()
        return stats.temp_size_in_bytes + stats.output_size_in_bytes - stats.alias_size_in_bytes


def step_functions(stack, model, embedding_name, data, names, strategy=None):
    """A jitted step per variant, all over one state of `model`."""
    import jax
    import jax.numpy as jnp

    from keras_adv._stacks.lookup import tapped_lookups
    from keras_adv.embedding import find_embedding_layer

    del stack
    if strategy is not None:
        raise NotImplementedError("The JAX backend has no MirroredStrategy.")
    layer = find_embedding_layer(model, embedding_name)
    plain_step = type(model).train_step
    x, y = data
    # The adversarial steps report their loss through a metric that the
    # model tracks: installed before the state is read, it is in every
    # variant's state (two scalars).
    adversarial_steps = {name: variants.adversarial_step(model, layer, name)
                         for name in names if name in variants.METHODS}
    # One plain step builds the optimizer's and the metrics' variables, as
    # `fit`'s first step does.
    model.train_on_batch(x, y)
    shared = {"state": tuple(
        tuple(jnp.array(v.value, copy=True) for v in variables)  # Copies: the state is donated.
        for variables in (model.trainable_variables, model.non_trainable_variables,
                          model.optimizer.variables, model.metrics_variables)
    )}
    batch = jax.device_put((x, y))

    def lookup_loss(state, deltas, data):
        """The loss, with `deltas` (or nothing) added at the lookups' outputs, and those outputs."""
        trainable, non_trainable, optimizer_variables, metrics = state

        def transform(index, ids, outputs):
            del ids
            return outputs if deltas is None else outputs + deltas[index]

        with tapped_lookups(layer, transform) as lookups:
            loss, _ = model.compute_loss_and_updates(
                trainable, non_trainable, metrics, data[0], data[1], None, training=True,
                optimizer_variables=optimizer_variables,
            )
        return loss, lookups.outputs

    def embedding_gradient(state, data):
        # What TensorFlow's tape returns for the matrix (one row per token
        # occurrence) is the gradient w.r.t. the lookups' outputs: JAX
        # differentiates arguments, so zeros are added there and differentiated.
        shapes = jax.eval_shape(lambda: lookup_loss(state, None, data)[1])
        deltas = [jnp.zeros(s.shape, s.dtype) for s in shapes]
        return jax.grad(lambda d: lookup_loss(state, d, data)[0])(deltas)

    def double_backward(state, data):
        # The gradient penalty as written by hand: the loss plus half the
        # squared norm of its gradient at the lookups' outputs (the matrix's
        # rows per token occurrence), differentiated again, and the update.
        trainable, non_trainable, optimizer_variables, metrics = state

        def penalized(trainable):
            at = (trainable, non_trainable, optimizer_variables, metrics)
            shapes = jax.eval_shape(lambda: lookup_loss(at, None, data)[1])
            deltas = [jnp.zeros(s.shape, s.dtype) for s in shapes]
            loss, gradients = jax.value_and_grad(lambda d: lookup_loss(at, d, data)[0])(deltas)
            return loss + 0.5 * sum(jnp.sum(jnp.square(g)) for g in gradients)

        loss, gradients = jax.value_and_grad(penalized)(trainable)
        trainable, optimizer_variables = model.optimizer.stateless_apply(optimizer_variables, gradients, trainable)
        return loss, (trainable, non_trainable, optimizer_variables, metrics)

    matrix_index = next(
        (i for i, v in enumerate(model.trainable_variables) if v is layer.embeddings), None
    )

    def published_recipe_in_graph(state, data):
        # The recipe's pass, in one program: the dense gradient of the matrix
        # (JAX's is dense anyway), the matrix plus delta, the plain step, the
        # delta taken off the updated matrix.
        trainable, non_trainable, optimizer_variables, metrics = state

        def with_matrix(matrix):
            return trainable[:matrix_index] + (matrix,) + trainable[matrix_index + 1:]

        def loss_of(matrix):
            return model.compute_loss_and_updates(
                with_matrix(matrix), non_trainable, metrics, data[0], data[1], None, training=True,
                optimizer_variables=optimizer_variables,
            )[0]

        gradient = jax.grad(loss_of)(trainable[matrix_index])
        delta = EPSILON * gradient / (jnp.linalg.norm(gradient) + 1e-8)
        perturbed = (with_matrix(trainable[matrix_index] + delta), non_trainable, optimizer_variables, metrics)
        logs, (trainable, *rest) = plain_step(model, perturbed, data)
        trainable = list(trainable)
        trainable[matrix_index] = trainable[matrix_index] - delta
        return logs, (trainable, *rest)

    functions = {}
    for name in names:
        if name in UNSUPPORTED_VARIANTS:
            continue
        if name == "embedding gradient":
            functions[name] = _Step(jax.jit(embedding_gradient), shared, batch, updates_state=False)
            continue
        if name == "plain":
            step = plain_step
        elif name == DOUBLE_BACKWARD:
            step = lambda model, state, data: double_backward(state, data)
        elif name == RECIPE_GRAPH:
            if matrix_index is None:  # A frozen matrix: the recipe has no update to perturb.
                continue
            step = lambda model, state, data: published_recipe_in_graph(state, data)
        else:
            step = lambda model, state, data, bound=adversarial_steps[name]: bound(state, data)
        # As Keras's `make_train_function` compiles `train_step`.
        function = jax.jit(lambda state, data, step=step: step(model, state, data), donate_argnums=0)
        functions[name] = _Step(function, shared, batch, updates_state=True)
    return functions


# ---------------------------------------------------------------- memory


def allocator_peak_mib(call, device):
    """Not measured on JAX: `memory_stats()["peak_bytes_in_use"]` is the
    peak since the process started, and JAX cannot reset it, so it cannot
    tell one variant's peak from another's run earlier in the process."""
    raise NotImplementedError(allocator_peak_mib.__doc__)


def traced_peak_bytes(call, device):
    """The bytes XLA's buffer assignment allocates for the step `call`
    beyond its donated inputs (`_Step.step_bytes`)."""
    del device
    return call.step_bytes()


def clean_gradients_mib(model, data):
    """The clean gradient of every weight, in MiB: JAX's gradients are dense,
    each the shape of its weight (the embedding's too)."""
    import jax

    trainable = [v.value for v in model.trainable_variables]

    def loss(trainable):
        return model.compute_loss_and_updates(
            trainable, [v.value for v in model.non_trainable_variables],
            [v.value for v in model.metrics_variables], data[0], data[1], None, training=True,
            optimizer_variables=[v.value for v in model.optimizer.variables],
        )[0]

    shapes = jax.eval_shape(jax.grad(loss), trainable)
    return sum(np.prod(s.shape) * s.dtype.itemsize for s in shapes) / 2**20

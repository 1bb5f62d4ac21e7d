"""The PyTorch backend: Keras 3 on PyTorch (KerasHub BERT).

Each variant is `model.train_step(data)` called directly, as `fit`'s
`train_function` calls it (`keras/src/backend/torch/trainer.py`): eager, since
`jit_compile="auto"` is False on PyTorch (no `torch.compile`), on the batch
already on the device. Not `train_on_batch`, whose own conversions are the
same for every variant and only dilute the ratios. Every variant trains the
same model, as on TensorFlow.

Memory, on a GPU only: PyTorch's CUDA allocator counts the bytes its tensors
hold at their peak (`max_memory_allocated`, the live-tensor measure: the
counterpart of what the TensorFlow backend replays from its trace) and the
bytes it reserves from the device (`max_memory_reserved`, the allocator
peak), both reset before each step. On a CPU PyTorch keeps no allocator
statistics, so memory is not measured there.
"""

import numpy as np

from benchmarks.step_cost import variants
from benchmarks.step_cost.memory import ALLOCATOR, LIVE
from benchmarks.step_cost.variants import DOUBLE_BACKWARD, EPSILON, RECIPE_GRAPH, RECIPE_HOST

NAME = "torch"
STACKS = {"keras3": "Keras 3 on PyTorch (KerasHub BERT)"}
# The published Keras recipe copies the dense gradient and the matrix through
# numpy between compiled pieces (`K.eval`, `K.set_value`): TensorFlow's
# session-era path. On PyTorch the in-place recipe (`RECIPE_GRAPH`) is the
# published one (the widely copied PyTorch FGM class works so).
UNSUPPORTED_VARIANTS = {
    RECIPE_HOST: "the Keras recipe's host copies are TensorFlow's",
}
MEMORY_ENV = {}
MEMORY_MEASURES = (
    "On a GPU: *live tensors*: the weights and optimizer slots plus the most bytes that the step's own "
    "tensors hold at once (`torch.cuda.max_memory_allocated`, less what was allocated before the step); "
    "*allocator peak*: what PyTorch's caching allocator reserves from the device at its peak, its "
    "cache emptied before each step (`torch.cuda.max_memory_reserved`). On a CPU: not measured "
    "(PyTorch keeps no allocator statistics there)."
)
# No tf.distribute on PyTorch.
mirrored_strategy = None


def prepare(stack):
    """Nothing to set before PyTorch loads."""
    del stack


def device():
    """`"GPU"` if PyTorch sees CUDA (where Keras puts its tensors), else `"CPU"`."""
    import torch

    return "GPU" if torch.cuda.is_available() else "CPU"


def jit_compile(device, xla):
    """Never: `jit_compile="auto"` is False on PyTorch (eager, no `torch.compile`),
    and PyTorch has no XLA path to ask for."""
    del device, xla
    return False


def describe_device(device):
    return f"Device: {device}, eager (as Keras's `fit` runs it on PyTorch: `jit_compile=\"auto\"` is False)."


def memory_measures(device):
    """Both measures on a GPU; none on a CPU (see the module's docstring)."""
    return (LIVE, ALLOCATOR) if device == "GPU" else ()


# ---------------------------------------------------------------- steps


def step_functions(stack, model, embedding_name, data, names, strategy=None):
    """A step per variant, all on the same model."""
    import keras
    import torch

    from keras_adv._stacks import keras3
    from keras_adv._stacks.lookup import tapped_lookups
    from keras_adv.embedding import find_embedding_layer

    del stack
    if strategy is not None:
        raise NotImplementedError("The PyTorch backend has no MirroredStrategy.")
    layer = find_embedding_layer(model, embedding_name)
    plain_step = type(model).train_step
    adversarial_steps = {name: variants.adversarial_step(model, layer, name)
                         for name in names if name in variants.METHODS}
    # `fit` puts the module in training mode before its steps.
    model.train()
    batch = keras.tree.map_structure(keras.ops.convert_to_tensor, data)
    x, y = batch

    def embedding_gradient(data):
        # What TensorFlow's tape returns for the matrix (one row per token
        # occurrence) is the gradient w.r.t. the lookups' outputs.
        with tapped_lookups(layer, lambda index, ids, outputs: outputs) as lookups:
            loss = keras3.compute_loss(model, x, y, model(x, training=True), None)
        return torch.autograd.grad(loss, lookups.outputs)

    def double_backward(data):
        # The gradient penalty as written by hand: the loss plus half the
        # squared norm of its gradient at the lookups' outputs (the matrix's
        # rows per token occurrence), differentiated again (attention on the
        # math kernel, which has a double backward, as keras_adv runs it),
        # and the update.
        from torch.nn.attention import SDPBackend, sdpa_kernel

        trainable = model.trainable_variables
        with sdpa_kernel([SDPBackend.MATH]):
            with tapped_lookups(layer, lambda index, ids, outputs: outputs) as lookups:
                loss = keras3.compute_loss(model, x, y, model(x, training=True), None)
            gradients = torch.autograd.grad(loss, lookups.outputs, create_graph=True)
            penalized = loss + 0.5 * sum(torch.sum(torch.square(g)) for g in gradients)
            weight_gradients = torch.autograd.grad(penalized, [v.value for v in trainable])
        with torch.no_grad():
            model.optimizer.apply(weight_gradients, trainable)
        return penalized.detach()

    def published_recipe_in_graph(data):
        # The PyTorch FGM recipe on the Keras recipe's objective: the dense
        # gradient of the matrix (`autograd.grad`, not accumulated into
        # `.grad`), the matrix plus delta in place, the plain step, delta
        # taken off the updated matrix.
        matrix = layer.embeddings.value
        loss = keras3.compute_loss(model, x, y, model(x, training=True), None)
        (gradient,) = torch.autograd.grad(loss, [matrix])
        with torch.no_grad():
            delta = EPSILON * gradient / (torch.linalg.norm(gradient) + 1e-8)
            matrix.add_(delta)
        logs = plain_step(model, data)
        with torch.no_grad():
            matrix.sub_(delta)
        return logs

    def on_host(step):
        def call():
            logs = step(batch)
            if torch.cuda.is_available():
                torch.cuda.synchronize()  # The step has run.
            return [np.asarray(t.detach().cpu()) for t in keras.tree.flatten(logs)]

        return call

    functions = {}
    for name in names:
        if name in UNSUPPORTED_VARIANTS:
            continue
        if name == "plain":
            step = lambda data: plain_step(model, data)
        elif name == "embedding gradient":
            step = embedding_gradient
        elif name == DOUBLE_BACKWARD:
            step = double_backward
        elif name == RECIPE_GRAPH:
            if not layer.trainable:  # A frozen matrix: the recipe has no update to perturb.
                continue
            step = published_recipe_in_graph
        else:
            step = adversarial_steps[name]
        functions[name] = on_host(step)
    return functions


# ---------------------------------------------------------------- memory


def allocator_peak_mib(call, device):
    """What PyTorch's CUDA caching allocator reserves at its peak during
    `call()`, in MiB, its cache emptied first (so that the step's own
    segments are counted, not those left from earlier steps)."""
    import torch

    _require_gpu(device)
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    call()
    return torch.cuda.max_memory_reserved() / 2**20


def traced_peak_bytes(call, device):
    """The most bytes that the tensors made during `call()` hold at once on
    the GPU, as PyTorch's allocator counts them (what was allocated before
    the step, the weights and slots among it, is not the step's)."""
    import torch

    _require_gpu(device)
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    call()
    return torch.cuda.max_memory_allocated() - before


def _require_gpu(device):
    if not device.startswith("GPU"):  # A peak of 0 would pass for a measure.
        raise RuntimeError(f"PyTorch keeps allocator statistics on a GPU only, not on {device}.")


def clean_gradients_mib(model, data):
    """The clean gradient of every weight as autograd returns it (the
    embedding's dense, the shape of its matrix), in MiB."""
    import keras
    import torch

    from keras_adv._stacks import keras3

    x, y = keras.tree.map_structure(keras.ops.convert_to_tensor, data)
    loss = keras3.compute_loss(model, x, y, model(x, training=True), None)
    weights = [w.value for w in model.trainable_weights]
    gradients = torch.autograd.grad(loss, weights, allow_unused=True)
    return sum(g.numel() * g.element_size() for g in gradients if g is not None) / 2**20

"""The TensorFlow backend: Keras 3 on TensorFlow, and tf-keras with bert4keras.

Everything of the benchmark that speaks TensorFlow: how each variant's step is
made (`tf.function`, `tf.GradientTape`), which device runs it, the
MirroredStrategy of `--mirrored`, and how TensorFlow's allocator is read for
the memory measures. The interface is described in `backends/__init__.py`.

TensorFlow is imported inside the functions: the parent process never loads
it, and a tf-keras process must set its flags before it loads (`prepare`).
"""

import glob
import os
import shutil
import tempfile

import numpy as np

from benchmarks.step_cost import variants
from benchmarks.step_cost.memory import ALLOCATOR, LIVE
from benchmarks.step_cost.variants import DOUBLE_BACKWARD, EPSILON, RECIPE_GRAPH, RECIPE_HOST

NAME = "tensorflow"
STACKS = {
    "keras3": "Keras 3 on TensorFlow (KerasHub BERT)",
    "tf_keras": "tf-keras eager (bert4keras BERT)",
}
# On the CPU, TensorFlow keeps allocator statistics only with its BFC
# allocator; and only its events are in the profiler trace on every CPU (an
# AMD machine's trace held none of the default allocator's). The timing
# processes keep the default allocator that users get.
MEMORY_ENV = {"TF_CPU_ALLOCATOR_USE_BFC": "true"}
# Every variant of `variants.py` has its TensorFlow step, on both stacks.
UNSUPPORTED_VARIANTS = {}
MEMORY_MEASURES = (
    "*Live tensors*: the weights and optimizer slots plus the most bytes that "
    "the step's own tensors hold at once, as requested from TensorFlow's allocator (replayed from its "
    "profiler trace; it repeats to about 1 MiB). *Allocator peak*: what TensorFlow's BFC allocator "
    "counts as in use at its peak, free-running, the median of the steps; it counts a free chunk "
    "that it hands out unsplit (one less than twice the request) whole, so it also holds the unused "
    "rest of such chunks, which moves by tens of MiB with where the free space happened to lie."
)


def prepare(stack):
    """What a stack's process does before TensorFlow loads."""
    if stack == "tf_keras":
        import keras_adv

        keras_adv.prepare_bert4keras()


def device():
    """`"GPU"` if TensorFlow sees one, else `"CPU"`."""
    import tensorflow as tf

    return "GPU" if tf.config.list_logical_devices("GPU") else "CPU"


def jit_compile(device, xla):
    """The models' `jit_compile`: XLA where `jit_compile="auto"` picks it (a
    GPU), or where asked (`xla`)."""
    return device == "GPU" or xla


def describe_device(device):
    if device == "GPU":
        return "Device: GPU, XLA-compiled (as `jit_compile=\"auto\"` compiles on a GPU)."
    return ("Device: CPU (no GPU on this machine: CPU timings; on a GPU machine the same command "
            "times the GPU, XLA-compiled).")


def memory_measures(device):
    """Both measures, on every device (the CPU's with the BFC allocator, `MEMORY_ENV`)."""
    del device
    return (LIVE, ALLOCATOR)


# ---------------------------------------------------------------- steps


def step_functions(stack, model, embedding_name, data, names, strategy=None):
    """A compiled step per variant, all on the same model (each replica's
    step run by `strategy.run` on its share of the batch, when given)."""
    import tensorflow as tf

    from keras_adv.embedding import find_embedding_layer

    plain_step = type(model).train_step
    layer = find_embedding_layer(model, embedding_name)
    variable = _tf_variable(layer.embeddings)
    x, y = data
    loss_fn = model.loss

    def embedding_gradient(data):
        with tf.GradientTape(watch_accessed_variables=False) as tape:
            tape.watch(variable)
            loss = loss_fn(data[1], model(data[0], training=True))
        return tape.gradient(loss, variable).values

    def double_backward(data):
        # The gradient penalty as written by hand (the bert4keras author's
        # one line): the loss plus half the squared norm of its gradient
        # w.r.t. the matrix (a row per token occurrence), differentiated
        # again, and the update.
        trainable = model.trainable_variables
        with tf.GradientTape() as outer:
            with tf.GradientTape(watch_accessed_variables=False) as inner:
                inner.watch(variable)
                loss = loss_fn(data[1], model(data[0], training=True))
            penalized = loss + 0.5 * tf.reduce_sum(tf.square(inner.gradient(loss, variable).values))
        model.optimizer.apply_gradients(zip(outer.gradient(penalized, trainable), trainable))
        return penalized

    def dense_embedding_gradient(data):
        with tf.GradientTape(watch_accessed_variables=False) as tape:
            tape.watch(variable)
            loss = loss_fn(data[1], model(data[0], training=True))
        return tf.convert_to_tensor(tape.gradient(loss, variable))  # Dense V x d.

    def published_recipe_in_graph(data):
        gradient = dense_embedding_gradient(data)
        delta = EPSILON * gradient / (tf.norm(gradient) + 1e-8)
        variable.assign_add(delta)
        logs = plain_step(model, data)
        variable.assign_sub(delta)
        return logs

    compiled_gradient = tf.function(dense_embedding_gradient, jit_compile=False)
    compiled_plain = tf.function(lambda data: plain_step(model, data), jit_compile=False)

    def published_recipe_with_host_copies(data):
        # The recipe's train function: gradient to numpy, then
        # K.set_value(E, K.eval(E) + delta), the old step, and the same with -delta.
        gradient = compiled_gradient(data).numpy()
        delta = EPSILON * gradient / (np.sqrt((gradient**2).sum()) + 1e-8)
        variable.assign(variable.numpy() + delta)
        logs = compiled_plain(data)
        variable.assign(variable.numpy() - delta)
        return logs

    def step_of(name):
        if name == "plain":
            return lambda data: plain_step(model, data)
        if name == "embedding gradient":
            return embedding_gradient
        if name == DOUBLE_BACKWARD:
            return double_backward
        if name == RECIPE_GRAPH:
            return published_recipe_in_graph
        return variants.adversarial_step(model, layer, name)

    if strategy is None:
        batch = (tf.nest.map_structure(tf.constant, x), tf.constant(y))

        def compiled(step):
            return tf.function(step, jit_compile=model.jit_compile)
    else:
        features = tuple(x) if isinstance(x, list) else x  # tf.data stacks a list.
        dataset = tf.data.Dataset.from_tensor_slices((features, y)).batch(len(y))
        batch = next(iter(strategy.experimental_distribute_dataset(dataset)))

        def compiled(step):
            return tf.function(lambda data: strategy.run(step, args=(data,)))

    functions = {}
    for name in names:
        # The published recipe is a Python function around compiled pieces.
        function = published_recipe_with_host_copies if name == RECIPE_HOST else compiled(step_of(name))
        # Each replica's results, to the host: the step has run.
        functions[name] = lambda f=function: [
            np.asarray(t) for t in tf.nest.flatten(f(batch), expand_composites=True)
        ]
    return functions


def _tf_variable(variable):
    import tensorflow as tf

    # A Keras 3 variable wraps the tf.Variable that a tape watches.
    return variable if isinstance(variable, tf.Variable) else variable.value


def mirrored_strategy():
    """MirroredStrategy over two logical CPU devices, made of the first CPU
    (before TensorFlow initialises its devices: call it first)."""
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    return tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])


# ---------------------------------------------------------------- memory


def allocator_peak_mib(call, device):
    """The allocator's peak on `device` during `call()`, in MiB: what it
    counts as in use, whole free chunks where it did not split one."""
    import tensorflow as tf

    tf.config.experimental.reset_memory_stats(device)
    call()
    return tf.config.experimental.get_memory_info(device)["peak"] / 2**20


def traced_peak_bytes(call, device):
    """The most bytes that the tensors allocated during `call()` hold at once
    on `device`, as requested from its allocator.

    Replayed from TensorFlow's profiler trace, in which the allocator logs
    every allocation and free with the bytes requested. A free of a tensor
    made before the trace is not counted: it was not part of the step.
    """
    import tensorflow as tf
    # TensorFlow's own reader of the trace format (no TensorBoard plugin).
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    logdir = tempfile.mkdtemp(prefix="keras_adv_trace_")
    try:
        tf.profiler.experimental.start(logdir)
        try:
            call()
        finally:
            tf.profiler.experimental.stop()
        (path,) = glob.glob(os.path.join(logdir, "**", "*.xplane.pb"), recursive=True)
        with open(path, "rb") as f:
            space = xplane_pb2.XSpace.FromString(f.read())
    finally:
        shutil.rmtree(logdir, ignore_errors=True)
    # The device's allocator: "GPU_0_bfc"; on a CPU the host's, TensorFlow's
    # BFC allocator ("bfc_cpu_allocator_for_gpu") where turned on, else
    # oneDNN's ("mklcpu").
    allocator = "GPU_0" if device.startswith("GPU") else "cpu"
    events, allocators_seen = [], set()
    for plane in space.planes:
        def value(stat):
            kind = stat.WhichOneof("value")
            return plane.stat_metadata[stat.ref_value].name if kind == "ref_value" else getattr(stat, kind)

        for line in plane.lines:
            for event in line.events:
                kind = plane.event_metadata[event.metadata_id].name
                if kind not in ("MemoryAllocation", "MemoryDeallocation"):
                    continue
                stats = {plane.stat_metadata[s.metadata_id].name: value(s) for s in event.stats}
                allocators_seen.add(stats["allocator_name"])
                if allocator in stats["allocator_name"]:
                    events.append((line.timestamp_ns * 1000 + event.offset_ps,
                                   kind == "MemoryAllocation", stats["addr"], stats["requested_bytes"]))
    if not events:  # A peak of 0 would pass for a measure.
        raise RuntimeError(
            f"The profiler trace holds no allocation by an allocator named like {allocator!r} "
            f"for {device} (allocators in it: {sorted(allocators_seen) or 'none'}): is {device} "
            f"the device that the step runs on?"
        )
    live, held, peak = {}, 0, 0
    for _, allocated, address, size in sorted(events):
        if allocated:
            live[address] = size
            held += size
            peak = max(peak, held)
        else:
            held -= live.pop(address, 0)
    return peak


def clean_gradients_mib(model, data):
    """The clean gradient of every weight as the tape returns it (a
    lookup's, token or segment, one row per token), in MiB."""
    import tensorflow as tf

    with tf.GradientTape() as tape:
        loss = model.loss(data[1], model(data[0], training=True))
    gradients = tape.gradient(loss, model.trainable_variables)
    parts = [t for t in tf.nest.flatten(gradients, expand_composites=True) if t is not None]
    return sum(t.numpy().nbytes for t in parts) / 2**20

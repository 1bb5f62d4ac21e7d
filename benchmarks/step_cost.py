"""Cost of an adversarial training step against a plain step and against its floor.

    python benchmarks/step_cost.py            # both stacks, writes BENCHMARKS.md
    python benchmarks/step_cost.py --steps 5  # fewer timed steps (a quick look)

Per stack (Keras 3 on TensorFlow; tf-keras eager with a bert4keras model), in
one process per stack and interleaved step by step, it times the median of
`--steps` steps of: the plain step, a pass computing only the embedding
gradient, FGM and PGD-3 with both objectives, FGM per example (both
objectives), FGSM, and the published Keras recipe
twice: as published (dense gradient copied to the host, the matrix copied
through numpy to add and subtract the perturbation; timed after the others,
whose timings its host copies would disturb) and densely in the graph (no
host copies; a generous baseline). The floor of each method comes from
the two measured passes (DESIGN.md's cost model). The BERT-like model also
runs at vocabulary 250000, and both sizes with the embedding frozen (the
plain step then has nothing that grows with the vocabulary), to show what
grows with it; the two sizes compared are timed side by side, round by
round, in the same process.

On a GPU every step is XLA-compiled, as Keras compiles them there by default
(`jit_compile="auto"`). On a CPU-only machine the BERT-like model also runs
XLA-compiled, to show that path's cost on the CPU at hand.

Peak memory, two measures, side by side in one process, each as a ratio to
the plain step's:

- Live tensors: the model's and optimizer's variables plus the most bytes
  that the step's own tensors hold at once, as requested from TensorFlow's
  allocator, replayed from its profiler trace (every allocation and free is
  an event there). It is what the step needs, and it repeats to about 1 MiB
  from step to step (the counterpart of PyTorch's `max_memory_allocated`).
- Allocator peak: what the allocator counts as in use at its peak (weights,
  optimizer slots and the step's own tensors), free-running, the median over
  `--steps` steps. TensorFlow's BFC allocator hands out a free chunk whole
  unless it is at least twice the request, and counts it whole, so this peak
  also holds the unused rest of such chunks, which moves by tens of MiB with
  where the free space happened to lie and how the executor ordered
  independent ops.

Three processes per stack measure both (the plain step's own peak moves from
process to process), and the report gives the median of their ratios. On the
CPU, TensorFlow keeps allocator statistics only with its BFC allocator, which
those processes turn on (`TF_CPU_ALLOCATOR_USE_BFC`); the timing processes
keep the default allocator that users get. Only the BFC allocator's events
are in the profiler trace on every CPU (an AMD machine's trace held none of
the default allocator's), so both measures use it.
"""

import argparse
import glob
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
MEMORY_PROCESSES = 3
TRACED_STEPS = 3
BERT_LIKE = dict(vocab=21128, layers=4, width=256, heads=4, length=128, batch=16)
MODELS = {
    "tiny": dict(vocab=2000, layers=1, width=64, heads=2, length=32, batch=16),
    "bert-like": BERT_LIKE,
    "bert-like, vocab 250000": dict(BERT_LIKE, vocab=250000),
    # Adam updates the whole embedding matrix, so the plain step itself grows
    # with the vocabulary; with the embedding frozen nothing in a plain step
    # does, and the ratio shows whether keras_adv's own cost grows.
    "bert-like, frozen embedding": dict(BERT_LIKE, frozen_embedding=True),
    "bert-like, frozen embedding, vocab 250000": dict(BERT_LIKE, vocab=250000, frozen_embedding=True),
}
# Models timed side by side, round by round: the two vocabulary sizes that are
# compared see the same machine state (timed one after the other, the plain
# step moved by up to 10% between them, more than what is being measured).
TIMED_TOGETHER = [
    ["tiny"],
    ["bert-like", "bert-like, vocab 250000"],
    ["bert-like, frozen embedding", "bert-like, frozen embedding, vocab 250000"],
]
RECIPE_HOST, RECIPE_GRAPH = "published recipe (host copies)", "published recipe (dense, in graph)"
CLEAN_GRADIENTS = "clean gradients"
# The two measures of peak memory (see `_live_tensor_peaks`, `_allocator_peaks`).
LIVE, ALLOCATOR = "live tensors", "allocator"
# keras_adv's methods, each named "<method> <objective>".
METHODS = ["fgm sum", "fgm adversarial", "pgd3 sum", "pgd3 adversarial",
           "fgm sum per-example", "fgm adversarial per-example", "fgsm sum"]
VARIANTS = ["plain", "embedding gradient", *METHODS, RECIPE_HOST, RECIPE_GRAPH]
# What the large-vocabulary model runs: the cost that must not grow with V.
LARGE_VOCABULARY_VARIANTS = ["plain", "embedding gradient", "fgm sum", RECIPE_HOST]
FROZEN_EMBEDDING_VARIANTS = ["plain", "fgm sum"]
# What runs under MirroredStrategy, beside the same on one device.
MIRRORED_MODELS = ["tiny", "bert-like"]
MIRRORED_VARIANTS = ["plain", "fgm sum", "fgm adversarial", "pgd3 sum"]


def variants_of(model_name):
    if MODELS[model_name].get("frozen_embedding"):
        return FROZEN_EMBEDDING_VARIANTS
    return LARGE_VOCABULARY_VARIANTS if "250000" in model_name else VARIANTS

EPSILON = 1.0
STACKS = (("keras3", "Keras 3 on TensorFlow (KerasHub BERT)"), ("tf_keras", "tf-keras eager (bert4keras BERT)"))


def floors(times):
    """Each method's floor, in plain steps, from the two measured passes."""
    plain, embgrad = times["plain"], times["embedding gradient"]
    return {
        "fgm sum": 2.0,
        "fgm adversarial": (embgrad + plain) / plain,
        "pgd3 sum": (plain + 2 * embgrad + plain) / plain,
        "pgd3 adversarial": (3 * embgrad + plain) / plain,
        "fgm sum per-example": 2.0,
        "fgm adversarial per-example": (embgrad + plain) / plain,
        "fgsm sum": 2.0,
    }


# ---------------------------------------------------------------- one stack


def _build(stack, spec, jit):
    """Model, embedding variable, one batch; random weights, no download."""
    import numpy as np

    rng = np.random.RandomState(0)
    tokens = rng.randint(1, spec["vocab"], size=(spec["batch"], spec["length"]))
    labels = rng.randint(0, 2, size=spec["batch"]).astype("int32")
    if stack == "keras3":
        import keras
        import keras_hub

        backbone = keras_hub.models.BertBackbone(
            vocabulary_size=spec["vocab"], num_layers=spec["layers"], num_heads=spec["heads"],
            hidden_dim=spec["width"], intermediate_dim=4 * spec["width"],
            max_sequence_length=spec["length"], dropout=0.0,
        )
        model = keras_hub.models.BertTextClassifier(backbone, num_classes=2, preprocessor=None, dropout=0.0)
        x = {"token_ids": tokens.astype("int32"), "segment_ids": np.zeros_like(tokens, "int32"),
             "padding_mask": np.ones_like(tokens, "int32")}
        embedding_name = "token_embedding"
    else:
        from bert4keras.backend import keras
        from bert4keras.models import build_transformer_model

        bert = build_transformer_model(
            os.path.join(HERE, os.pardir, "examples", "tiny_bert_config.json"), checkpoint_path=None,
            vocab_size=spec["vocab"], hidden_size=spec["width"], num_hidden_layers=spec["layers"],
            num_attention_heads=spec["heads"], intermediate_size=4 * spec["width"],
            max_position_embeddings=spec["length"],
        )
        cls = keras.layers.Lambda(lambda h: h[:, 0])(bert.output)
        model = keras.models.Model(bert.input, keras.layers.Dense(2)(cls))
        x = [tokens.astype("float32"), np.zeros(tokens.shape, "float32")]
        embedding_name = "Embedding-Token"
    if spec.get("frozen_embedding"):
        embedding_layer = backbone.token_embedding if stack == "keras3" else model.get_layer(embedding_name)
        embedding_layer.trainable = False
    model.compile(
        optimizer=keras.optimizers.Adam(1e-5),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        # The adversarial step picks its XLA path from the model's setting.
        jit_compile=jit,
    )
    return model, embedding_name, (x, labels)


def _step_functions(stack, model, embedding_name, data, names, strategy=None):
    """A compiled step per variant, all on the same model (each replica's
    step run by `strategy.run` on its share of the batch, when given)."""
    import numpy as np
    import tensorflow as tf

    import keras_adv
    from keras_adv._stacks.passes import Settings
    from keras_adv.embedding import find_embedding_layer

    if stack == "keras3":
        from keras_adv._stacks.keras_tensorflow import AdversarialTrainStep
        plain_step = type(model).train_step
    else:
        from keras_adv._stacks.tf_keras import AdversarialTrainStep
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

    def adversarial(method, objective, per_example=False):
        pgd = dict(steps=3, alpha=0.4) if method == "pgd" else {}
        epsilon = 0.01 if method == "fgsm" else EPSILON  # Per entry, not per batch.
        method = keras_adv.methods.get_method(method, epsilon=epsilon, **pgd)
        settings = Settings(method, objective, per_example=per_example)
        step = AdversarialTrainStep(layer, settings, model.distribute_strategy)
        return lambda data: step(model, data)

    builders = {
        "plain": lambda: (lambda data: plain_step(model, data)),
        "embedding gradient": lambda: embedding_gradient,
        "fgm sum": lambda: adversarial("fgm", "sum"),
        "fgm adversarial": lambda: adversarial("fgm", "adversarial"),
        "pgd3 sum": lambda: adversarial("pgd", "sum"),
        "pgd3 adversarial": lambda: adversarial("pgd", "adversarial"),
        "fgm sum per-example": lambda: adversarial("fgm", "sum", per_example=True),
        "fgm adversarial per-example": lambda: adversarial("fgm", "adversarial", per_example=True),
        "fgsm sum": lambda: adversarial("fgsm", "sum"),
        RECIPE_GRAPH: lambda: published_recipe_in_graph,
    }
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
        function = published_recipe_with_host_copies if name == RECIPE_HOST else compiled(builders[name]())
        # Each replica's results, to the host: the step has run.
        functions[name] = lambda f=function: [
            np.asarray(t) for t in tf.nest.flatten(f(batch), expand_composites=True)
        ]
    return functions


def _tf_variable(variable):
    import tensorflow as tf

    # A Keras 3 variable wraps the tf.Variable that a tape watches.
    return variable if isinstance(variable, tf.Variable) else variable.value


def _held_through_the_perturbed_passes(model, embedding_name, data):
    """What a method holds beyond a plain step's tensors, in MiB: under
    `objective="sum"`, the clean gradient of every weight as the tape returns
    it (a lookup's, token or segment, one row per token) through the
    adversarial pass. (`"adversarial"` holds nothing more: the perturbation
    enters at the lookups, and no original rows are kept to restore.)"""
    import tensorflow as tf

    with tf.GradientTape() as tape:
        loss = model.loss(data[1], model(data[0], training=True))
    gradients = tape.gradient(loss, model.trainable_variables)
    parts = [t for t in tf.nest.flatten(gradients, expand_composites=True) if t is not None]
    return {CLEAN_GRADIENTS: sum(t.numpy().nbytes for t in parts) / 2**20}


def _in_allocator(functions):
    # The published recipe's copies live in numpy, outside the allocator.
    return [name for name in functions if name != RECIPE_HOST]


def _allocator_peaks(functions, device, steps):
    """Each variant's allocator peak, the median over `steps` steps, in MiB.

    The peak of what the allocator counts as in use: whole free chunks
    where it did not split one (it splits a chunk only when it is at least
    twice the request), so it depends on how the free space happened to lie.
    """
    import tensorflow as tf

    peaks = {name: [] for name in _in_allocator(functions)}
    for _ in range(steps):  # Interleaved, like the timings.
        for name in peaks:
            tf.config.experimental.reset_memory_stats(device)
            functions[name]()
            peaks[name].append(tf.config.experimental.get_memory_info(device)["peak"] / 2**20)
    return {name: statistics.median(p) for name, p in peaks.items()}


def _live_tensor_peaks(functions, variables_mib, device):
    """Each variant's memory as its tensors need it, in MiB: the model's and
    optimizer's variables plus the most that the step's own tensors hold at
    once (the median of `TRACED_STEPS` traced steps, which agree to about
    1 MiB: unlike the allocator's peak, it does not depend on where the free
    space lies)."""
    peaks = {name: [] for name in _in_allocator(functions)}
    for _ in range(TRACED_STEPS):
        for name in peaks:
            peaks[name].append(variables_mib + _traced_peak_bytes(functions[name], device) / 2**20)
    return {name: statistics.median(p) for name, p in peaks.items()}


def _traced_peak_bytes(call, device):
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


def _variables_mib(model):
    """The model's and its optimizer's variables (weights and slots), in MiB."""
    optimizer_variables = model.optimizer.variables
    if callable(optimizer_variables):  # tf-keras's optimizers.
        optimizer_variables = optimizer_variables()
    return sum(v.numpy().nbytes for v in [*model.variables, *optimizer_variables]) / 2**20


def run_stack(stack, steps, models, memory=False, xla=False):
    if stack == "tf_keras":
        import keras_adv

        keras_adv.prepare_bert4keras()
    import tensorflow as tf

    gpu = bool(tf.config.list_logical_devices("GPU"))
    # XLA where `jit_compile="auto"` picks it (a GPU), or where asked.
    jit = gpu or xla
    results = {"device": "GPU" if gpu else "CPU"}
    for group in [[name for name in together if name in models] for together in TIMED_TOGETHER]:
        functions = {}
        for model_name in group:
            model, embedding_name, data = _build(stack, MODELS[model_name], jit)
            functions[model_name] = _step_functions(stack, model, embedding_name, data, variants_of(model_name))
            for function in functions[model_name].values():  # Trace and warm up.
                function()
                function()
            if memory:
                device = "GPU:0" if gpu else "CPU:0"
                results[model_name] = {
                    ALLOCATOR: _allocator_peaks(functions[model_name], device, steps),
                    LIVE: _live_tensor_peaks(functions[model_name], _variables_mib(model), device),
                    **_held_through_the_perturbed_passes(model, embedding_name, data),
                }
        if functions and not memory:
            results.update(_timings(functions, steps))
            for model_name in group:
                print(f"[{stack}] {model_name}: " + ", ".join(
                    f"{n} {t * 1000:.1f} ms" for n, t in results[model_name].items()), flush=True)
    return results


def run_mirrored(stack, steps, models):
    """`{model: {"single device": {variant: s}, "mirrored": {variant: s}}}`:
    each variant timed on one device and under MirroredStrategy over two
    logical CPU devices, side by side, round by round, in one process."""
    if stack == "tf_keras":
        import keras_adv

        keras_adv.prepare_bert4keras()
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    results = {}
    for model_name in models:
        functions = {}
        for setting, scope in (("single device", None), ("mirrored", strategy)):
            with (scope or tf.distribute.get_strategy()).scope():
                model, embedding_name, data = _build(stack, MODELS[model_name], jit=False)
                # Built in the scope, as `fit` builds it there, before any step is traced.
                model.optimizer.build(model.trainable_variables)
            functions[setting] = _step_functions(
                stack, model, embedding_name, data, MIRRORED_VARIANTS, strategy=scope
            )
            for function in functions[setting].values():  # Trace and warm up.
                function()
                function()
        results[model_name] = _timings(functions, steps)
        print(f"[{stack}] {model_name}: " + "; ".join(
            f"{setting}: " + ", ".join(f"{n} {t * 1000:.1f} ms" for n, t in times.items())
            for setting, times in results[model_name].items()), flush=True)
    return results


def _timings(functions, steps):
    """`{model: {variant: median seconds}}` over `steps` rounds, every round
    timing each variant of each model once, in turn, the models' order
    alternating from round to round: every variant sees the same machine
    state. Except the published recipe with host copies, timed after the
    others in the same way: its numpy copies of the matrix (four per step,
    256 MB each at vocabulary 250000) slow down whatever runs next."""
    samples = {model: {name: [] for name in variants} for model, variants in functions.items()}
    for timed_last in (False, True):
        for round_ in range(steps):
            for model in list(functions) if round_ % 2 == 0 else list(functions)[::-1]:
                for name in [name for name in functions[model] if (name == RECIPE_HOST) == timed_last]:
                    start = time.perf_counter()
                    functions[model][name]()
                    samples[model][name].append(time.perf_counter() - start)
    return {model: {name: statistics.median(s) for name, s in by_name.items()} for model, by_name in samples.items()}


# ---------------------------------------------------------------- the report


def _child(*args, env=None):
    out = subprocess.run(
        [sys.executable, os.path.abspath(__file__), *args], capture_output=True, text=True,
        check=False, env=None if env is None else {**os.environ, **env},
    )
    if out.returncode != 0:
        raise SystemExit(f"benchmark child {args} failed:\n{out.stderr[-3000:]}")
    sys.stderr.write("".join(line + "\n" for line in out.stdout.splitlines() if line.startswith("[")))
    return json.loads(out.stdout.strip().splitlines()[-1])


def _memory(stack, *args):
    """Each variant's peak memory by both measures, median over
    `MEMORY_PROCESSES` processes: `{measure: {"MiB": {name: peak},
    "x plain": {name: peak / plain peak}}}`, each ratio the median of ratios
    measured side by side in one process; and the MiB of what the methods
    hold beyond a plain step (`_held_through_the_perturbed_passes`)."""
    runs = [_child("--stack", stack, *args, "--models", "bert-like", "--memory",
                   env={"TF_CPU_ALLOCATOR_USE_BFC": "true"})["bert-like"] for _ in range(MEMORY_PROCESSES)]
    memory = {CLEAN_GRADIENTS: statistics.median(run[CLEAN_GRADIENTS] for run in runs)}
    for measure in (LIVE, ALLOCATOR):
        peaks = [run[measure] for run in runs]
        memory[measure] = {
            "MiB": {name: statistics.median(p[name] for p in peaks) for name in peaks[0]},
            "x plain": {name: statistics.median(p[name] / p["plain"] for p in peaks) for name in peaks[0]},
        }
    return memory


def _table(times, memory=None):
    plain = times["plain"]
    floor = floors(times) if "embedding gradient" in times else {}
    rows = ["| pass / method | ms | x plain step | floor (x plain) | x its floor "
            "| peak memory vs plain: live tensors | allocator peak |",
            "| --- | --- | --- | --- | --- | --- | --- |"]

    def peak(measure, name):
        if not memory or name not in memory[measure]["MiB"]:
            return ""
        return f"{memory[measure]['x plain'][name]:.3f} ({memory[measure]['MiB'][name]:.0f} MiB)"

    for name, seconds in times.items():
        ratio = seconds / plain
        floor_text = f"{floor[name]:.2f}" if name in floor else ""
        of_floor = f"{ratio / floor[name]:.3f}" if name in floor else ""
        rows.append(f"| {name} | {seconds * 1000:.1f} | {ratio:.2f} | {floor_text} | {of_floor} "
                    f"| {peak(LIVE, name)} | {peak(ALLOCATOR, name)} |")
    if "fgm adversarial" in times:
        for recipe in (RECIPE_HOST, RECIPE_GRAPH):
            rows.append(f"\nSpeed-up of FGM (objective=\"adversarial\", the recipe's update) over the "
                        f"{recipe}: {times[recipe] / times['fgm adversarial']:.2f}x")
    return "\n".join(rows)


def _vocabulary_growth(small, big, title):
    def added(times, name):
        return (times[name] - times["plain"]) * 1000

    ratio_small, ratio_big = small["fgm sum"] / small["plain"], big["fgm sum"] / big["plain"]
    rows = [
        title,
        "",
        "| | vocab 21128 | vocab 250000 | 250000 / 21128 |",
        "| --- | --- | --- | --- |",
        f"| plain step, ms | {small['plain'] * 1000:.1f} | {big['plain'] * 1000:.1f} | "
        f"{big['plain'] / small['plain']:.3f} |",
        f"| FGM (sum) / plain | {ratio_small:.3f} | {ratio_big:.3f} | {ratio_big / ratio_small:.3f} |",
        f"| FGM (sum) added to the plain step, ms | {added(small, 'fgm sum'):.1f} | "
        f"{added(big, 'fgm sum'):.1f} | {added(big, 'fgm sum') / added(small, 'fgm sum'):.3f} |",
    ]
    if RECIPE_HOST in small and RECIPE_HOST in big:
        rows.append(
            f"| published recipe (host copies) added, ms | {added(small, RECIPE_HOST):.1f} | "
            f"{added(big, RECIPE_HOST):.1f} | {added(big, RECIPE_HOST) / added(small, RECIPE_HOST):.3f} |"
        )
    return "\n".join(rows)


def _mirrored_table(results):
    rows = ["| model | method | one device: x plain | mirrored, 2 replicas: x plain | mirrored / one device |",
            "| --- | --- | --- | --- | --- |"]
    for model_name, by_setting in results.items():
        single, mirrored = by_setting["single device"], by_setting["mirrored"]
        for name in MIRRORED_VARIANTS[1:]:
            one, two = single[name] / single["plain"], mirrored[name] / mirrored["plain"]
            rows.append(f"| {model_name} | {name} | {one:.2f} | {two:.2f} | {two / one:.3f} |")
    return "\n".join(rows)


def _mirrored_section(stack, steps):
    results = _child("--stack", stack, *steps, "--mirrored", "--models", *MIRRORED_MODELS)
    return ["### MirroredStrategy over 2 logical CPU devices", "",
            "Each method's step against the plain step, on one device and under MirroredStrategy "
            "(global batch as above, split across the replicas), timed side by side in one process. "
            "Under the strategy the perturbation is built from the global batch's gradient: the "
            "replicas all-gather their token ids and all-reduce the touched rows' gradient.", "",
            _mirrored_table(results), ""]


def _memory_floors(memory):
    """The memory floor of each objective from what it must hold beyond a
    plain step, and each method's live-tensor peak over its floor."""
    clean, plain = memory[CLEAN_GRADIENTS], memory[LIVE]["MiB"]["plain"]
    floor = {"adversarial": 1.0, "sum": 1 + clean / plain}
    over = ", ".join(f"{name} {memory[LIVE]['x plain'][name] / floor[name.split()[1]]:.3f}"
                     for name in METHODS)
    return (f"Memory floors (live tensors): `objective=\"adversarial\"` holds nothing beyond a plain "
            f"step (the perturbation enters at the lookups; no rows are kept to restore): 1.000 x plain; "
            f"`objective=\"sum\"` holds the clean gradients through the adversarial pass, {clean:.1f} MiB: "
            f"{floor['sum']:.3f} x plain. Peak over its floor: {over}.")


MEMORY_MEASURES = (
    f"Peak memory, the median over {MEMORY_PROCESSES} processes of the ratio to the plain step measured "
    f"side by side in each. *Live tensors*: the weights and optimizer slots plus the most bytes that "
    f"the step's own tensors hold at once, as requested from TensorFlow's allocator (replayed from its "
    f"profiler trace; it repeats to about 1 MiB). *Allocator peak*: what TensorFlow's BFC allocator "
    f"counts as in use at its peak, free-running, the median of the steps; it counts a free chunk "
    f"that it hands out unsplit (one less than twice the request) whole, so it also holds the unused "
    f"rest of such chunks, which moves by tens of MiB with where the free space happened to lie."
)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=10, help="timed steps per variant (median)")
    parser.add_argument("--stack", help=argparse.SUPPRESS)
    parser.add_argument("--memory", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--xla", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--models", nargs="+", default=list(MODELS), help=argparse.SUPPRESS)
    parser.add_argument("--mirrored", action="store_true",
                        help="only time the methods under MirroredStrategy against one device, and print it")
    parser.add_argument("--out", default=os.path.join(HERE, os.pardir, "BENCHMARKS.md"))
    args = parser.parse_args()
    if args.stack and args.mirrored:  # A child: one stack, mirrored against one device.
        print(json.dumps(run_mirrored(args.stack, args.steps, args.models)))
        return
    if args.stack:  # A child: one stack, its timings or (--memory) its peaks.
        print(json.dumps(run_stack(args.stack, args.steps, args.models, args.memory, args.xla)))
        return

    steps = ("--steps", str(args.steps))
    if args.mirrored:
        for stack, title in STACKS:
            print("\n".join([f"## {title}", "", *_mirrored_section(stack, steps)]))
        return
    lines = ["# Benchmarks", "",
             f"Command: `python benchmarks/step_cost.py --steps {args.steps}`", "",
             f"Machine: {platform.platform()}, {os.cpu_count()} CPU cores, Python {platform.python_version()}.", "",
             MEMORY_MEASURES, ""]
    for stack, title in STACKS:
        results = _child("--stack", stack, *steps)
        gpu = results["device"] == "GPU"
        lines += [f"## {title}", "",
                  "Device: GPU, XLA-compiled (as `jit_compile=\"auto\"` compiles on a GPU)." if gpu else
                  "Device: CPU (no GPU on this machine: CPU timings; on a GPU machine the same command "
                  "times the GPU, XLA-compiled).", ""]
        memory = _memory(stack, *steps)
        for model_name in MODELS:
            if model_name not in results:
                continue
            lines += [f"### {model_name}: " + ", ".join(f"{k} {v}" for k, v in MODELS[model_name].items()), "",
                      _table(results[model_name], memory if model_name == "bert-like" else None), ""]
            if model_name == "bert-like":
                lines += [_memory_floors(memory), ""]
        growth = [
            ("bert-like", "bert-like, vocab 250000",
             "Vocabulary 21128 -> 250000 (the plain step itself grows: Adam updates the whole matrix):"),
            ("bert-like, frozen embedding", "bert-like, frozen embedding, vocab 250000",
             "Vocabulary 21128 -> 250000 with the embedding frozen (nothing in the plain step grows):"),
        ]
        for small, big, title in growth:
            if small in results and big in results:
                lines += [_vocabulary_growth(results[small], results[big], title), ""]
        if not gpu:
            # The path a GPU takes by default, on this CPU: its own step (one
            # program, its own memory planning), though not a GPU's timings.
            only = ("--models", "bert-like", "--xla")
            xla = _child("--stack", stack, *steps, *only)["bert-like"]
            xla_memory = _memory(stack, *steps, "--xla")
            lines += ["### bert-like, XLA-compiled on this CPU (`jit_compile=True`, a GPU's default)", "",
                      _table(xla, xla_memory), "", _memory_floors(xla_memory), ""]
            lines += _mirrored_section(stack, steps)
    with open(args.out, "w", encoding="utf-8") as f:
        f.write("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()

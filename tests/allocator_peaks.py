"""Peak allocations of training steps, in embedding matrices.

TensorFlow keeps allocator statistics on the CPU only with its BFC
allocator, chosen before it loads, so the measure runs in a process of its
own: `measure(stack)` starts one, which prints, as JSON, for each way of
training the linear model at vocabulary 200000, the peak allocation of a
training step (the most over three, after one to build) and of a lookup after
training. The allocator rounds a matrix's 51.2 MB up to 64 MiB: one copy
reads 1.31.
"""

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VOCAB, DIM = 200000, 64

# name: (optimizer, embedding frozen, jit_compile, adversarial_training options or None)
TRAININGS = {
    "keras3": {
        "sgd plain": ("sgd", False, False, None),
        "sgd fgm": ("sgd", False, False, dict(method="fgm")),
        "sgd pgd": ("sgd", False, False, dict(method="pgd")),
        "adam plain": ("adam", False, False, None),
        "adam fgm": ("adam", False, False, dict(method="fgm")),
        "frozen pgd adversarial": ("adam", True, False, dict(method="pgd", objective="adversarial")),
        "xla sgd plain": ("sgd", False, True, None),
        "xla sgd pgd": ("sgd", False, True, dict(method="pgd")),
    },
    "tf_keras": {
        "xla sgd plain": ("sgd", False, True, None),
        "xla sgd fgm": ("sgd", False, True, dict(method="fgm")),
        "xla sgd pgd": ("sgd", False, True, dict(method="pgd")),
    },
}


def measure(stack):
    """Runs the measure for `stack` ("keras3" or "tf_keras") in a new process."""
    env = {**os.environ, "TF_CPU_ALLOCATOR_USE_BFC": "true", "PYTHONPATH": ROOT}
    out = subprocess.run(
        [sys.executable, "-m", "tests.allocator_peaks", stack],
        capture_output=True, text=True, env=env, cwd=ROOT,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def _peaks(stack):
    import keras_adv

    if stack == "tf_keras":
        keras_adv.prepare_bert4keras()  # Before TensorFlow loads.
        import bert4keras.backend  # noqa: F401  (puts tf.keras under the name `keras`)
    import keras
    import tensorflow as tf

    from tests.models import batch, compile_adam, compile_sgd, linear_text_model

    x, y = batch(vocab=VOCAB)

    def peak_of(call):
        tf.config.experimental.reset_memory_stats("CPU:0")
        before = tf.config.experimental.get_memory_info("CPU:0")["current"]
        call()
        return (tf.config.experimental.get_memory_info("CPU:0")["peak"] - before) / (VOCAB * DIM * 4)

    def peaks(optimizer, frozen, jit_compile, options):
        keras.backend.clear_session()
        model = linear_text_model(vocab=VOCAB, dim=DIM)
        model.get_layer("emb").trainable = not frozen
        (compile_sgd if optimizer == "sgd" else compile_adam)(model, jit_compile=jit_compile)
        if options is not None:
            keras_adv.adversarial_training(model, "emb", 0.5, **options)
        model.train_on_batch(x, y)
        step = max(peak_of(lambda: model.train_on_batch(x, y)) for _ in range(3))
        lookup = tf.function(lambda ids: model.get_layer("emb")(ids))
        lookup(x)
        return {"step": step, "lookup": peak_of(lambda: lookup(x))}

    return {name: peaks(*training) for name, training in TRAININGS[stack].items()}


if __name__ == "__main__":
    print(json.dumps(_peaks(sys.argv[1])))

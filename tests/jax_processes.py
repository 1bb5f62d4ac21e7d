"""Two JAX processes joined by `jax.distributed`, on a loopback port.

`train_in_two_processes(...)` starts this module as two processes with one
CPU device each; `keras.distribution.DataParallel` spans both devices, and
each process feeds its half of every global batch (JAX's CPU collectives
run over gloo). Each trains the linear model with the one line and saves its
final weights. Run as a script, it is one process.
"""

import os
import sys

from tests.multi_worker import _free_ports, run_two_processes, save_weights


def train_in_two_processes(out_dir, options, global_batch, steps):
    """Returns each process's final weights (a list of lists of arrays).

    Args:
        options: `adversarial_training` keyword arguments, as a Python literal.
    """
    (port,) = _free_ports(1)
    envs = [{"KERAS_BACKEND": "jax", "XLA_FLAGS": ""} for _ in range(2)]
    args = [out_dir, str(port), repr(options), str(global_batch), str(steps)]
    return run_two_processes("tests.jax_processes", [args + ["0"], args + ["1"]], envs, out_dir)


def _work(out_dir, port, options, global_batch, steps, index):
    import ast

    import jax

    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(f"127.0.0.1:{port}", num_processes=2, process_id=index)
    import keras

    import keras_adv
    from tests.models import batch, compile_sgd, linear_text_model

    assert len(jax.devices()) == 2 and len(jax.local_devices()) == 1
    distribution = keras.distribution.DataParallel(devices=jax.devices())
    distribution.auto_shard_dataset = False  # Each process feeds its own half.
    keras.distribution.set_distribution(distribution)
    keras.utils.set_random_seed(0)
    model = compile_sgd(linear_text_model(), lr=0.5)
    keras_adv.adversarial_training(model, "emb", **ast.literal_eval(options))
    x, y = batch(size=global_batch * steps, seed=3)
    half = global_batch // 2
    mine = [i for i in range(len(x)) if (i % global_batch) // half == index]
    model.fit(x[mine], y[mine], batch_size=half, epochs=1, shuffle=False, verbose=0)
    save_weights(out_dir, index, model)


if __name__ == "__main__":
    out_dir, port, options, global_batch, steps, index = sys.argv[1:7]
    _work(out_dir, port, options, int(global_batch), int(steps), int(index))

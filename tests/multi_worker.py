"""Two tf-keras workers under MultiWorkerMirroredStrategy, on loopback ports.

`train_on_two_workers(...)` starts this module as two processes, each one
worker of the cluster (TF_CONFIG), which train the linear model with the one
line on the same global batches and save their final weights and History;
every worker is stopped within a bounded time. Run as a script, it is one
worker.
"""

import json
import os
import socket
import subprocess
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIMEOUT_S = 240


def _free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def train_on_two_workers(out_dir, method, objective, global_batch, steps):
    """Returns each worker's final weights (a list of lists of arrays) and
    each worker's History (a list of dicts).

    Raises:
        AssertionError: If a worker fails or runs past `TIMEOUT_S`.
    """
    cluster = {"worker": [f"127.0.0.1:{port}" for port in _free_ports(2)]}
    envs = [
        {"TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})}
        for index in range(2)
    ]
    args = [out_dir, method, objective, str(global_batch), str(steps)]
    weights = run_two_processes("tests.multi_worker", [args, args], envs, out_dir)
    return weights, [_load_history(out_dir, index) for index in range(2)]


def run_two_processes(module, argv, envs, out_dir):
    """Runs `python -m module *argv[i]` for i = 0, 1, with `envs[i]` added to
    the environment, each stopped within `TIMEOUT_S`; returns the weights each
    saved as `out_dir/worker<i>.npz`.

    Raises:
        AssertionError: If a process fails or runs past `TIMEOUT_S`.
    """
    workers = []
    for args, env in zip(argv, envs):
        workers.append(subprocess.Popen(
            [sys.executable, "-m", module, *args], env={**os.environ, "PYTHONPATH": ROOT, **env},
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        ))
    logs = []
    try:
        for worker in workers:
            logs.append(worker.communicate(timeout=TIMEOUT_S)[0])
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
                worker.wait()
    for index, (worker, log) in enumerate(zip(workers, logs)):
        assert worker.returncode == 0, f"process {index} failed:\n{log[-4000:]}"
    return [_load(out_dir, index) for index in range(2)]


def save_weights(out_dir, index, model):
    weights = {f"w{i}": w for i, w in enumerate(model.get_weights())}
    np.savez(os.path.join(out_dir, f"worker{index}.npz"), **weights)


def save_history(out_dir, index, history):
    with open(os.path.join(out_dir, f"worker{index}.history.json"), "w") as f:
        json.dump(history, f)


def _load_history(out_dir, index):
    with open(os.path.join(out_dir, f"worker{index}.history.json")) as f:
        return json.load(f)


def _load(out_dir, index):
    with np.load(os.path.join(out_dir, f"worker{index}.npz")) as saved:
        return [saved[f"w{i}"] for i in range(len(saved.files))]


def _work(out_dir, method, objective, global_batch, steps):
    import keras_adv

    keras_adv.prepare_bert4keras()
    import bert4keras.backend  # noqa: F401  (puts tf.keras under the name `keras`)
    import tensorflow as tf

    from tests.models import batch, compile_sgd, linear_text_model

    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    assert strategy.num_replicas_in_sync == 2
    tf.keras.utils.set_random_seed(0)
    with strategy.scope():
        model = compile_sgd(linear_text_model(), lr=0.5)
    keras_adv.adversarial_training(model, "emb", 0.7, method=method, objective=objective)
    x, y = batch(size=global_batch * steps, seed=3)
    history = model.fit(x, y, batch_size=global_batch, epochs=1, shuffle=False, verbose=0)
    index = json.loads(os.environ["TF_CONFIG"])["task"]["index"]
    save_weights(out_dir, index, model)
    save_history(out_dir, index, history.history)


if __name__ == "__main__":
    _work(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]))

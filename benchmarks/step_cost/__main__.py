"""The command line: `python -m benchmarks.step_cost`, from the repository's root.

Without `--stack` it is the parent: it runs each stack's measures in child
processes (`processes.py`) and writes the report (`report.py`). With
`--stack` it is one such child, and prints its results as one line of JSON.
"""

import argparse
import json
import os

import benchmarks.step_cost
from benchmarks.step_cost import ROOT, backends, memory, models, report, timing


def main():
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.step_cost", description=benchmarks.step_cost.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--steps", type=int, default=10, help="timed steps per variant (median)")
    parser.add_argument("--backend", choices=backends.NAMES, default="tensorflow",
                        help="Keras 3's backend (tf-keras runs on tensorflow only)")
    parser.add_argument("--stack", help=argparse.SUPPRESS)
    parser.add_argument("--memory", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--xla", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--models", nargs="+", default=list(models.MODELS), choices=list(models.MODELS),
                        metavar="MODEL", help="only these models (default: all); needs --out, so that no "
                        "partial report overwrites the whole one")
    parser.add_argument("--mirrored", action="store_true",
                        help="only time the methods under MirroredStrategy against one device, and print it")
    parser.add_argument("--out", help="the report's file (default: BENCHMARKS.md for tensorflow, "
                        "BENCHMARKS-<backend>.md for the others, so that no run overwrites another's)")
    args = parser.parse_args()
    subset = args.models != list(models.MODELS)
    if subset and args.out is None and not args.stack:
        parser.error("--models writes a partial report: give its file with --out.")
    if args.out is None:
        name = "BENCHMARKS.md" if args.backend == "tensorflow" else f"BENCHMARKS-{args.backend}.md"
        args.out = os.path.join(ROOT, name)
    try:
        backend = backends.load(args.backend)
    except NotImplementedError as error:
        parser.error(str(error))

    if args.stack:  # A child: one stack's timings, (--memory) its peaks, or (--mirrored) both settings' timings.
        backend.prepare(args.stack)
        if args.mirrored:
            results = timing.time_mirrored(backend, args.stack, args.steps, args.models)
        elif args.memory:
            results = memory.measure_stack(backend, args.stack, args.steps, args.models, args.xla)
        else:
            results = timing.time_stack(backend, args.stack, args.steps, args.models, args.xla)
        print(json.dumps(results))
    elif args.mirrored:
        report.print_mirrored(backend, args.steps)
    else:
        report.write(backend, args.steps, args.out, args.models)


if __name__ == "__main__":
    main()

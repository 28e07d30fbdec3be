"""Which BatchNormalization treatment makes a shrunk profile's numbers track what the network learned.

    python -m benchmarks.bn_treatments --data PATH [--profile quick] [--step template] [--seeds 0 1 2]
        [--treatments moving recomputed]

Trains the step once per seed and treatment (interleaved: seed by seed, every treatment in turn) and
prints, per epoch, the logged validation accuracy and the check's accuracy with moving and with
recomputed statistics; per run, the logged test accuracy, the test accuracy with statistics recomputed
at the final weights (scored here, independently of the treatment), and the training CPU-seconds.
No MLflow: `ablation.training.fit.train` directly. Results go to stdout and, with --out, to a JSON file.
"""

import argparse
import dataclasses
import json
import sys

import numpy as np

from ablation.core.profiles import get_profile
from ablation.core.study import load_study
from ablation.data import LazySplits


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bn_treatments", description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--study", default="assignment")
    parser.add_argument("--profile", default="quick")
    parser.add_argument("--step", default="template")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--treatments", nargs="+", default=["moving", "recomputed"])
    parser.add_argument("--out", default=None)
    return parser.parse_args(argv)


def measure(config, splits) -> dict:
    """One training: its per-epoch numbers, its test accuracy as logged and with recomputed statistics."""
    from ablation.training import bn_statistics
    from ablation.training.fit import prepare_inputs, train

    result = train(config, splits)
    x_train, _, x_test, _ = prepare_inputs(splits, config)
    bn_statistics.recompute(result.network, bn_statistics.fixed_images(x_train, bn_statistics.RECOMPUTE_IMAGES, config.seed))
    recomputed = bn_statistics.accuracy(result.network, x_test, splits.y_test)
    return {"treatment": config.bn_statistics, "seed": config.seed, "history": result.history,
            "test_accuracy": result.test_accuracy, "test_accuracy_recomputed_bn": recomputed,
            "epochs_run": result.epochs_run, "train_cpu_seconds": result.train_cpu_seconds,
            "train_seconds": result.train_seconds, "stopped_early": result.stopped_early}


def show(row: dict):
    h = row["history"]
    print(f"{row['treatment']:>16} seed {row['seed']}: test {row['test_accuracy']:.4f}  "
          f"test (recomputed BN) {row['test_accuracy_recomputed_bn']:.4f}  epochs {row['epochs_run']}  "
          f"CPU {row['train_cpu_seconds']:.0f} s  wall {row['train_seconds']:.0f} s", flush=True)
    for epoch, values in enumerate(zip(h["val_accuracy"], h["val_accuracy_moving_bn"], h["val_accuracy_recomputed_bn"],
                                       h["learning_rate"]), start=1):
        print(f"{'':>18}epoch {epoch:>2}: val {values[0]:.3f}  check moving {values[1]:.3f}  "
              f"check recomputed {values[2]:.3f}  lr {values[3]:.1e}", flush=True)


def main(argv=None) -> int:
    args = parse_args(argv)
    study, profile = load_study(args.study), get_profile(args.profile)
    step = study.step(args.step)
    data = LazySplits(args.data)
    rows = []
    for seed in args.seeds:
        for treatment in args.treatments:
            # After the profile, which would put its own treatment in place of the recipe's "moving".
            config = dataclasses.replace(profile.apply(dataclasses.replace(step.config, seed=seed)), bn_statistics=treatment)
            splits = data.splits(**config.split_args())
            rows.append(measure(config, splits))
            show(rows[-1])
    for treatment in args.treatments:
        mine = [r for r in rows if r["treatment"] == treatment]
        gaps = [abs(r["test_accuracy"] - r["test_accuracy_recomputed_bn"]) for r in mine]
        cpu = [r["train_cpu_seconds"] / r["epochs_run"] for r in mine]
        print(f"{treatment:>16}: n {len(mine)}  test mean {np.mean([r['test_accuracy'] for r in mine]):.4f}  "
              f"|logged - recomputed| max {max(gaps):.4f}  CPU-s per epoch median {np.median(cpu):.1f}")
    if args.out:
        with open(args.out, "w") as file:
            json.dump(rows, file, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())

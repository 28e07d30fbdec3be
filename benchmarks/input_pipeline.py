"""The host side of a full-profile training step: what stays on the CPU when the network runs on a GPU.

    python -m benchmarks.input_pipeline --data PATH [--rounds 3] [--images 40000] [--step-images 1280]

The host side of a step is everything but the network's arithmetic: feeding the batch (the array adapter's
shuffling, slicing and prefetching), Keras' loop and the project's callbacks (stop requests, the divergence
check, the history, the BatchNormalization check), validation (with the recipe's augmented validation
images, drawn on the host), all at the full profile's batch of 32. It is measured by training the project's
own step (`ablation.training.fit.train`, the study's config at the full profile) with its network replaced
by a linear probe (global average pooling and a 3-to-10 softmax classifier: a few thousand additions an
image against the template's 54 million multiply-adds), so that what is left is the host side. Per
variant, the CPU-seconds of a training's second epoch (start-up and tracing are over by then), from its
start to its end (validation and callbacks included), over its steps.

Variants, interleaved round by round (medians printed):
- template, 1 batch per call (the recipe);
- template, 8 batches per call (`steps_per_execution = 8`: the callbacks and the logs' trip to the host
  once per 8 batches);
- augmentation, 1 batch per call: the training images' augmentation (a layer of the model: on a GPU it
  runs on the device, here it is counted) and the validation images' (drawn on the host).
Beside them, the template network's own step, measured the same way on `--step-images` images: the
share is host side / that step, both CPU-ms on this machine. A GPU's step is far shorter than this CPU's,
so the line printed last gives the GPU step time below which the host side would exceed 10% of a step.
"""

import argparse
import dataclasses
import statistics
import sys
import time

from ablation.core.profiles import get_profile
from ablation.core.study import load_study
from ablation.data import LazySplits

BATCH = 32


def linear_probe(input_shape=(32, 32, 3), num_classes=10):
    """The network that leaves only the host side: global average pooling, then the softmax classifier."""
    import keras  # when it is built (as the registry's builders): --help and the tables need no TensorFlow

    inputs = keras.Input(input_shape)
    outputs = keras.layers.Dense(num_classes, activation="softmax")(keras.layers.GlobalAveragePooling2D()(inputs))
    return keras.Model(inputs, outputs, name="linear_probe")


def step_config(study, step: str, images: int, probe: bool, **fields):
    """The step's config at the full profile, on `images` training images, with the probe network if asked."""
    config = get_profile("full").apply(study.step(step).config)
    validation = max(BATCH, round(images * config.validation_split / (1 - config.validation_split)))
    config = dataclasses.replace(config, train_subset=images + validation, test_subset=BATCH, **fields)
    if probe:
        config = dataclasses.replace(config, model="benchmarks.input_pipeline:linear_probe", model_args={})
    return config


def epoch_cpu_ms_per_step(config, source: LazySplits) -> float:
    """CPU-ms per training step of a training's second epoch (its steps, validation and callbacks), over its steps."""
    from ablation.training.fit import train

    splits = source.splits(**config.split_args())
    marks = {}
    # The second epoch: start-up and tracing are over. No early stopping or LR schedule of the recipe acts so early.
    train(dataclasses.replace(config, epochs=2), splits,
          on_epoch_begin=[lambda epoch, logs: marks.setdefault(("begin", epoch), time.process_time())],
          on_epoch=[lambda epoch, logs: marks.setdefault(("end", epoch), time.process_time())])
    steps = -(-len(splits.y_train) // config.batch_size)
    return 1000 * (marks["end", 2] - marks["begin", 2]) / steps


def measure(data: str, rounds: int, images: int, step_images: int, say=print, only=None) -> dict[str, list[float]]:
    """Each variant's (or those named in `only`) CPU-ms per step, one value a round, the variants interleaved."""
    study = load_study("assignment")
    variants = {
        "template, 1 batch a call": step_config(study, "template", images, True),
        "template, 8 batches a call": step_config(study, "template", images, True, steps_per_execution=8),
        "augmentation, 1 batch a call": step_config(study, "augmentation", images, True),
        "template network's own step": step_config(study, "template", step_images, False),
    }
    variants = {name: config for name, config in variants.items() if only is None or name in only}
    found, source = {name: [] for name in variants}, LazySplits(data)
    for turn in range(1, rounds + 1):
        for name, config in variants.items():
            found[name].append(epoch_cpu_ms_per_step(config, source))
            say(f"round {turn}/{rounds}  {name:<30} {found[name][-1]:8.2f} CPU-ms a step")
    return found


def table(found: dict[str, list[float]]) -> list[str]:
    medians = {name: statistics.median(values) for name, values in found.items()}
    step = medians.pop("template network's own step")
    lines = [f"the template network's step at batch {BATCH}, on this CPU: {step:.1f} CPU-ms (median)", "",
             "| host side of a step | CPU-ms (median) | rounds | share of this CPU's template step |",
             "|---|---|---|---|"]
    lines += [f"| {name} | {value:.2f} | {len(found[name])} | {100 * value / step:.1f}% |" for name, value in medians.items()]
    recipe = medians["template, 1 batch a call"]
    lines += ["", f"at the recipe's 1 batch a call, the host side exceeds 10% of a step once the network's own "
                  f"step is shorter than {9 * recipe:.1f} ms (9 x {recipe:.2f})"]
    return lines


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog="python -m benchmarks.input_pipeline", description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="CIFAR-10 (the archive or its folder)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--images", type=int, default=40_000, help="training images of the probe's epochs "
                        "(the full profile's 40,000)")
    parser.add_argument("--step-images", type=int, default=1280, help="training images of the template network's "
                        "epochs (its step costs the same at any epoch size)")
    args = parser.parse_args(argv)
    for name in ("rounds", "images", "step_images"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    found = measure(args.data, args.rounds, args.images, args.step_images)
    print("\n".join(["", *table(found)]))
    return 0


if __name__ == "__main__":
    sys.exit(main())

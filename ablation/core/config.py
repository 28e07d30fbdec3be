"""Configs: what one training run is, and what each field accepts (how a profile shrinks one: profiles.py).

A `Config` is one frozen object with every knob of a training run and the known-good defaults
(the assignment report's recipe, docs/sources.md#the-ladder). Every field and model knob has a rule
(`FIELD_RULES`, `KNOB_RULES`): study files (`ablation.core.study`), search spaces and `--set` overrides are
checked against the same table. Study files are read in `ablation.core.study`.
"""

import dataclasses
import hashlib
import json
import math
import re
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Callable, Mapping

from ablation.models import MODELS, model_defaults  # the registry: read from source, no Keras
from ablation.models.imported import is_import_path, read_source


class StudyError(ValueError):
    """A study file or option that cannot be used; the message names the file and the key."""


class StoreError(ValueError):
    """A tracking store or Optuna storage that cannot be used; the message names it and what to do."""


@dataclass(frozen=True)
class Config:
    """Everything one training run needs; variants are made with `dataclasses.replace`."""

    model: str = "template_resnet"
    model_args: Mapping[str, Any] = field(default_factory=dict)  # the model's knobs (see ablation.models)
    epochs: int = 25
    batch_size: int = 32
    optimizer: str = "adam"  # adam | sgd
    learning_rate: float = 1e-3  # Keras' Adam default, as in the report
    validation_split: float = 0.2  # held out of the 50,000 training images
    normalization: str = "scale"  # scale: x/255 | per_pixel_mean: x/255 minus the training mean image
    # Augmentation, named as the source's ImageDataGenerator arguments; applied in training only.
    rotation_range: float = 0.0  # degrees
    width_shift_range: float = 0.0  # fraction of the width
    height_shift_range: float = 0.0  # fraction of the height
    horizontal_flip: bool = False
    zoom_range: float = 0.0  # fraction, both ways
    # Early stopping; off when the monitor is "".
    early_stopping_monitor: str = ""
    early_stopping_patience: int = 10  # epochs
    early_stopping_min_delta: float = 1e-4
    # When early stopping puts the best epoch's weights back: "always" (Keras 3: at the end of training,
    # stopped or not), "on_stop" (Keras 2, the assignment's code: only when stopping fired), "never".
    restore_best_weights: str = "always"
    # ReduceLROnPlateau; off when the monitor is "".
    reduce_lr_monitor: str = ""
    reduce_lr_factor: float = 0.2
    reduce_lr_patience: int = 5  # epochs
    min_lr: float = 1e-5
    # Step schedule: [[epoch, multiplier], ...]: from that epoch on, lr = learning_rate * multiplier.
    lr_schedule: tuple = ()
    seed: int = 0  # the training seed: initial weights, batch order, augmentation draws, dropout masks
    split_seed: int = 0  # which images are train, validation and test subset: fixed across a ladder's replicates
    augment_validation: bool = False  # validate on augmented images, as the assignment's generator did
    deterministic: bool = False  # TensorFlow's op determinism: bit-identical repeats of a seed, slower
    train_subset: int | None = None  # a seeded, stratified subset of the training images (profiles)
    test_subset: int | None = None  # likewise for the test images
    run_eagerly: bool = False  # no graph tracing: slower per image, far faster to start (smoke runs)
    # Which BatchNormalization statistics validation and test passes use (docs/recipe.md#batchnorm-statistics):
    # "moving" (the recipe: Keras' moving averages), "recomputed" (exact statistics of a fixed set of
    # training images at the current weights, before every validation and the test pass).
    bn_statistics: str = "moving"
    # XLA for the compiled steps, Keras' `compile(jit_compile=...)`: "auto" (Keras: on when a GPU is
    # visible), true or false. Every layer of the project compiles (docs/stack.md#xla-and-the-augmentation).
    jit_compile: bool | str = "auto"
    # Keras' dtype policy for the network: "float32" (the recipe), "mixed_float16" (loss scaled) or
    # "mixed_bfloat16"; variables, BatchNormalization statistics and the classifier stay float32.
    precision: str = "float32"
    # Batches per call into the compiled step, Keras' `compile(steps_per_execution=...)`: 1 (the recipe)
    # hands control back to Python after every batch, which on TensorFlow waits for the batch's loss
    # (docs/stack.md#keras-callbacks). N > 1: batch callbacks (stop requests, the divergence check,
    # progress) run every N batches; the training itself is the same.
    steps_per_execution: int = 1
    # What modern recipes ablate (docs/recipe.md#modern-training-changes); added after runs were recorded.
    label_smoothing: float = 0.0  # targets (1 - s) * one-hot + s / classes
    weight_decay: float = 0.0  # decoupled: each step multiplies every weight by 1 - learning_rate * weight_decay
    nesterov: bool = False  # Nesterov momentum (SGD only)
    lr_decay: str = "none"  # none | cosine: from learning_rate towards 0 over the epochs after the warm-up
    warmup_epochs: int = 0  # epochs of linear warm-up to learning_rate
    mixup_alpha: float = 0.0  # MixUp: each batch mixed with a shuffled copy of itself, weight ~ Beta(a, a); 0: off
    cutmix_alpha: float = 0.0  # CutMix: a box of a shuffled copy pasted in, its area ~ Beta(a, a); 0: off
    # The images (docs/studies.md#data), read from --data PATH: "cifar10", "cifar100", "fashion_mnist", "mnist",
    # "images" (an image-folder tree) or "package.module:function" (a loader returning the arrays).
    data: str = "cifar10"
    image_size: int | None = None  # resize every image to image_size x image_size (None: as stored)

    def __post_init__(self):
        # Every knob, defaults included: the params show them all, and a default spelled out in a
        # study is the same work as one left implicit (same hash). Frozen all the way down, too.
        knobs = model_defaults(self.model) if self.model in MODELS or is_import_path(self.model) else {}
        object.__setattr__(self, "model_args", MappingProxyType({**knobs, **self.model_args}))
        object.__setattr__(self, "lr_schedule", tuple(tuple(p) for p in self.lr_schedule))

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict of the config."""
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        data["model_args"] = {k: _plain(v) for k, v in sorted(self.model_args.items())}
        data["lr_schedule"] = [list(p) for p in self.lr_schedule]
        return data

    def params(self) -> dict[str, Any]:
        """Flat name → value, as logged to MLflow: the config's fields and the model's knobs by name."""
        data = self.to_dict()
        model_args = data.pop("model_args")
        return {**data, **model_args, **self.model_source()}

    def model_source(self) -> dict[str, str]:
        """An import-path model's file digest (`ablation.models.imported`): in the params and the hash."""
        return {"model_source_sha256": read_source(self.model).digest} if is_import_path(self.model) else {}

    def split_args(self) -> dict[str, Any]:
        """The arguments of `ablation.data.make_splits` this config trains on."""
        return {"data": self.data, "image_size": self.image_size, "validation_split": self.validation_split,
                "seed": self.split_seed,
                "train_subset": self.train_subset, "test_subset": self.test_subset}

    def hash(self) -> str:
        """Stable short hash of everything that determines the run's work.

        A field or model knob added after runs were recorded enters it only when set away from its default,
        so a config that leaves it alone keeps the hash (and the finished work) it had before.
        """
        data = {name: value for name, value in self.to_dict().items()
                if name not in LATER_FIELDS or value != CONFIG_FIELDS[name].default}
        data["model_args"] = {knob: value for knob, value in data["model_args"].items()
                              if f"{self.model}.{knob}" not in LATER_KNOBS or value != MODELS[self.model][knob]}
        text = json.dumps({**data, **self.model_source()}, sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:12]


def _plain(value):
    return list(value) if isinstance(value, tuple) else value


CONFIG_FIELDS = {f.name: f for f in dataclasses.fields(Config)}
LATER_FIELDS = frozenset({"data", "image_size", "bn_statistics", "jit_compile", "precision", "steps_per_execution",
                          "label_smoothing", "weight_decay", "nesterov", "lr_decay", "warmup_epochs",
                          "mixup_alpha", "cutmix_alpha"})  # see Config.hash
LATER_KNOBS = frozenset({"template_resnet.block"})  # model knobs added after runs were recorded: the same rule
# What training logs per epoch: Keras' numbers, then the BatchNormalization check (ablation.training.bn_statistics):
# accuracy on a fixed set of validation images with the moving and with recomputed statistics.
EPOCH_METRICS = ("loss", "accuracy", "val_loss", "val_accuracy", "learning_rate",
                 "val_accuracy_moving_bn", "val_accuracy_recomputed_bn",
                 "top5_accuracy", "val_top5_accuracy")  # top-5: only where there are more than 5 classes


def check_knob_names(models: Mapping[str, Mapping[str, Any]]):
    """A model knob named like a Config field would overwrite it in the flat params: refuse it."""
    colliding = sorted(f"{model}.{knob}" for model, knobs in models.items() for knob in knobs if knob in CONFIG_FIELDS)
    if colliding:
        raise ValueError(f"model knobs named like Config fields: {colliding}; rename the knobs")


check_knob_names(MODELS)


def split_values(model: str, values: Mapping[str, Any]) -> tuple[dict, dict]:
    """(Config fields, model knobs) of a flat name -> value mapping: the one place a name is routed."""
    knobs = model_defaults(model)
    unknown = sorted(set(values) - set(knobs) - (set(CONFIG_FIELDS) - {"model_args"}))
    if unknown:
        raise StudyError(f"{unknown} are neither Config fields nor knobs of model {model}; "
                         f"allowed: {sorted((set(CONFIG_FIELDS) - {'model_args'}) | set(knobs))}")
    fields = {k: v for k, v in values.items() if k not in knobs}
    return fields, {k: v for k, v in values.items() if k in knobs}


def with_values(config: "Config", values: Mapping[str, Any]) -> "Config":
    """The config with flat values put in: knobs into model_args, other names into their fields."""
    fields, knobs = split_values(config.model, values)
    return dataclasses.replace(config, **fields, model_args={**config.model_args, **knobs})
# ---------------------------------------------------------------------------------------------
# What every field and model knob accepts: one table, used by study files, the search space and any
# command-line override, so a value is refused with the same words wherever it comes from.


def _same(value):
    return value


@dataclass(frozen=True)
class Rule:
    """What one config field or model knob accepts; `what` says it in words for the error message."""

    what: str
    accepts: Callable[[Any], bool]
    kind: str = "other"  # int | float | bool | choice | other: which search parameter types may sample it
    convert: Callable[[Any], Any] = _same


def _whole_number(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def finite(value) -> bool:
    """A real number that is not NaN or infinite (a huge integer counts as infinite)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


def whole(low: int | None = None, high: int | None = None) -> Rule:
    """An integer in [low, high]."""
    if high is not None:
        what = f"an integer in {low}..{high}"
    else:
        what = {None: "an integer", 0: "a non-negative integer", 1: "a positive integer"}.get(low, f"an integer >= {low}")
    return Rule(what, lambda v: _whole_number(v) and (low is None or v >= low) and (high is None or v <= high), "int")


def number(low: float, high: float | None = None, *, low_open=False, high_open=False) -> Rule:
    """A finite number in the interval from low to high (open ends excluded)."""
    above = (lambda v: v > low) if low_open else (lambda v: v >= low)
    below = (lambda v: True) if high is None else (lambda v: v < high) if high_open else (lambda v: v <= high)
    if high is None:
        what = f"a finite number {'>' if low_open else '>='} {low:g}"
    else:
        what = f"a number in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
    return Rule(what, lambda v: finite(v) and above(v) and below(v), "float", float)


def one_of(*choices) -> Rule:
    return Rule(f"one of {list(choices)}", lambda v: isinstance(v, str) and v in choices, "choice")


FLAG = Rule("true or false", lambda v: isinstance(v, bool), "bool")
SEED = whole(0, 2**32 - 1)  # numpy's seeds are unsigned 32-bit integers


def _is_schedule(value) -> bool:
    return isinstance(value, (list, tuple)) and all(
        isinstance(p, (list, tuple)) and len(p) == 2 and _whole_number(p[0]) and p[0] >= 0 and finite(p[1]) and p[1] > 0
        for p in value)


def _optional(rule: Rule) -> Rule:
    """The rule, or None (the default: no subset); study files cannot say None, overrides may."""
    return Rule(rule.what + " (or none)", lambda v: v is None or rule.accepts(v), rule.kind)


DATASETS = ("cifar10", "cifar100", "fashion_mnist", "mnist", "images")  # read by ablation.data
LOADER_PATH = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*")  # package.module:function


CHOICES = {
    "optimizer": ("adam", "sgd"),
    "normalization": ("scale", "per_pixel_mean"),
    "early_stopping_monitor": ("", "val_accuracy", "val_loss"),
    "reduce_lr_monitor": ("", "val_accuracy", "val_loss"),
    "restore_best_weights": ("always", "on_stop", "never"),
    "bn_statistics": ("moving", "recomputed"),
    "precision": ("float32", "mixed_float16", "mixed_bfloat16"),
    "lr_decay": ("none", "cosine"),
}
FIELD_RULES = {
    "model": Rule(f"a registered model: {sorted(MODELS)}, or an import path package.module:function",
                  lambda v: isinstance(v, str) and (v in MODELS or is_import_path(v)), "choice"),
    "model_args": Rule("a table of the model's knobs", lambda v: isinstance(v, Mapping)),  # each knob: KNOB_RULES
    "epochs": whole(1),
    "batch_size": whole(1),
    "learning_rate": number(0, low_open=True),
    "validation_split": number(0, 1, low_open=True, high_open=True),
    "rotation_range": number(0, 180),
    "width_shift_range": number(0, 1, high_open=True),
    "height_shift_range": number(0, 1, high_open=True),
    "horizontal_flip": FLAG,
    "zoom_range": number(0, 1, high_open=True),  # zooms drawn in [1 - z, 1 + z]: z >= 1 would zoom to nothing
    "early_stopping_patience": whole(1),
    "early_stopping_min_delta": number(0),
    "reduce_lr_factor": number(0, 1, low_open=True, high_open=True),
    "reduce_lr_patience": whole(1),
    "min_lr": number(0),
    "lr_schedule": Rule("a list of [epoch, multiplier] pairs (epoch >= 0, multiplier > 0), "
                        "e.g. [[80, 0.1], [120, 0.01]]", _is_schedule),
    "seed": SEED,
    "split_seed": SEED,
    "augment_validation": FLAG,
    "deterministic": FLAG,
    "train_subset": _optional(whole(1)),
    "test_subset": _optional(whole(1)),
    "run_eagerly": FLAG,
    "jit_compile": Rule('"auto", true or false', lambda v: isinstance(v, bool) or v == "auto", "choice"),
    "steps_per_execution": whole(1),
    "label_smoothing": number(0, 1, high_open=True),
    "weight_decay": number(0),
    "nesterov": FLAG,
    "warmup_epochs": whole(0),
    "mixup_alpha": number(0),
    "cutmix_alpha": number(0),
    "data": Rule(f"one of {list(DATASETS)}, or a loader's import path package.module:function",
                 lambda v: isinstance(v, str) and (v in DATASETS or LOADER_PATH.fullmatch(v) is not None), "choice"),
    "image_size": _optional(whole(8, 1024)),
    **{name: one_of(*choices) for name, choices in CHOICES.items()},
}
# Model knobs by name, or by "model.knob" where one model reads a name differently.
# Sizes have upper bounds, so that a typo (100000 blocks) is refused in one line before a run opens
# rather than building for minutes. Three stages at the bound keep the deepest network (63 blocks, up
# to 1,244 layers) within Python's default recursion limit, which Keras' graph walk meets when it builds
# or reloads a network: three stages of 64 template blocks could not be built, 60 + 1 + 1 could.
MAX_BLOCKS = 21  # per stage
KNOB_RULES = {
    "dropout_rate": number(0, 1, high_open=True),
    **{f"stage{n}_blocks": whole(0, MAX_BLOCKS) for n in (2, 3, 4)},
    **{f"blocks_{part}": whole(0, MAX_BLOCKS) for part in "abc"},
    **{f"scale_{part}": number(0) for part in "abc"},
    "width": whole(1, 1024),
    "convs_per_group": whole(1, MAX_BLOCKS),
    "dense_units": whole(1, 65536),
    # One 2x2 pooling per group: 32 pixels allow at most five.
    "filters": Rule("a list of 1 to 5 integers in 1..4096 (filters per group)", lambda v: isinstance(v, (list, tuple))
                    and 1 <= len(v) <= 5 and all(_whole_number(f) and 1 <= f <= 4096 for f in v), convert=tuple),
    "template_resnet.block": one_of("post", "pre"),  # ReLU after the add (the report's), or pre-activation
    "resnet_v1.depth": Rule(f"6n + 2 with 1 <= n <= {MAX_BLOCKS} (20, 32, 44, 56, 110)",
                            lambda v: _whole_number(v) and 8 <= v <= 6 * MAX_BLOCKS + 2 and (v - 2) % 6 == 0),
    "resnet_v2.depth": Rule(f"9n + 2 with 1 <= n <= {MAX_BLOCKS} (56, 110)",
                            lambda v: _whole_number(v) and 11 <= v <= 9 * MAX_BLOCKS + 2 and (v - 2) % 9 == 0),
}


def knob_rule(model: str, knob: str) -> Rule:
    if is_import_path(model):
        return inferred_rule(model_defaults(model)[knob])
    return KNOB_RULES.get(f"{model}.{knob}") or KNOB_RULES[knob]


TEXT_KNOB = Rule("a string", lambda v: isinstance(v, str), "choice")
FINITE = Rule("a finite number", finite, "float", float)


def inferred_rule(default) -> Rule:
    """An import-path model's knob accepts what its default is: an int, a float, a bool, a string, or a list of one."""
    scalar = {bool: FLAG, int: whole(), float: FINITE, str: TEXT_KNOB}.get(type(default))
    if scalar is not None:
        return scalar
    if isinstance(default, (list, tuple)):
        item = inferred_rule(default[0]) if default else None
        if item is None or (item.kind != "other" and all(item.accepts(v) for v in default)):
            what = f"a list of items each {item.what}" if item else "a list"
            return Rule(what, lambda v: isinstance(v, (list, tuple)) and (item is None or all(map(item.accepts, v))),
                        convert=tuple)
    raise ValueError(f"its default {shown(default)} is none of an int, a float, a bool, a string or a list of one")


def check_rules(models: Mapping[str, Mapping[str, Any]]):
    """Every Config field and every registered model's knob has a rule, and its default passes it."""
    missing = sorted(set(CONFIG_FIELDS) - set(FIELD_RULES))
    missing += sorted(f"{model}.{knob}" for model, knobs in models.items() for knob in knobs
                      if f"{model}.{knob}" not in KNOB_RULES and knob not in KNOB_RULES)
    if missing:
        raise ValueError(f"no rule for {missing}: add one to FIELD_RULES or KNOB_RULES in ablation/core/config.py")
    wrong = [name for name in CONFIG_FIELDS if not FIELD_RULES[name].accepts(getattr(Config(), name))]
    wrong += [f"{model}.{knob}" for model, knobs in models.items() for knob, default in knobs.items()
              if not knob_rule(model, knob).accepts(default)]
    if wrong:
        raise ValueError(f"defaults refused by their own rules: {wrong}")


check_rules(MODELS)


def check_field(name: str, value, where: str):
    """`value` as Config field `name` holds it, or a StudyError naming `where`, the field and what is allowed."""
    if name not in FIELD_RULES:
        raise StudyError(f"{where}: {name!r} is not a Config field; allowed: {sorted(FIELD_RULES)}")
    return checked(FIELD_RULES[name], name, value, where)


def check_knob(model: str, name: str, value, where: str):
    """`value` as knob `name` of `model` holds it, or a StudyError naming `where`, the knob and what is allowed."""
    knobs = model_defaults(model)
    if name not in knobs:
        raise StudyError(f"{where}: {name!r} is not a knob of model {model}; allowed: {sorted(knobs)}")
    return checked(knob_rule(model, name), f"model_args.{name}", value, where)


def check_setting(model: str, name: str, value, where: str):
    """A flat name (a Config field, or a knob of `model`) and its value checked: a search parameter, an override."""
    if name in model_defaults(model):
        return check_knob(model, name, value, where)
    if name == "model_args":
        raise StudyError(f"{where}: set a model's knobs by name (e.g. dropout_rate), not model_args")
    return check_field(name, value, where)


def checked(rule: Rule, name: str, value, where: str):
    if not rule.accepts(value):
        raise StudyError(f"{where}: {name} must be {rule.what}, got {shown(value)}")
    return rule.convert(value)


def check_combination(config: Config, where: str):
    """A StudyError naming `where` and the fields, where fields of the config cannot apply together."""
    schedule = "lr_decay = \"cosine\"" if config.lr_decay == "cosine" else "warmup_epochs" if config.warmup_epochs else ""
    problems = [
        (config.nesterov and config.optimizer != "sgd", f"nesterov = true needs optimizer = \"sgd\", got {config.optimizer!r}"),
        (schedule and config.reduce_lr_monitor, f"{schedule} sets the learning rate every epoch, undoing "
                                                "ReduceLROnPlateau's drops: set reduce_lr_monitor = \"\" or leave it out"),
        (config.lr_decay == "cosine" and config.lr_schedule, "lr_decay = \"cosine\" and lr_schedule are two decays: set one"),
        (config.warmup_epochs >= config.epochs, f"warmup_epochs ({config.warmup_epochs}) must be fewer than epochs ({config.epochs})"),
    ]
    wrong = [message for broken, message in problems if broken]
    if wrong:
        raise StudyError(f"{where}: {wrong[0]}")


def shown(value) -> str:
    """The refused value for a one-line message: repr, cut short."""
    text = repr(value).replace("\n", " ")
    return text if len(text) <= 80 else text[:77] + "..."

"""Configs, profiles and study files.

A `Config` is one frozen object with every knob of a training run and the known-good defaults
(the assignment report's recipe, docs/sources.md#the-ladder). A study file (`studies/*.toml`) holds a base config, the
steps as deltas, baselines, the numbers the source reported and an optional search space. The
loader rejects unknown keys and bad values, naming the file, the key and what is allowed.
"""

import dataclasses
import hashlib
import json
import math
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Callable, Mapping

from ablation.models import MODELS, model_defaults  # the registry: read from source, no Keras


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

    def __post_init__(self):
        # Every knob, defaults included: the params show them all, and a default spelled out in a
        # study is the same work as one left implicit (same hash). Frozen all the way down, too.
        knobs = model_defaults(self.model) if self.model in MODELS else {}
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
        return {**data, **model_args}

    def split_args(self) -> dict[str, Any]:
        """The arguments of `ablation.data.make_splits` this config trains on."""
        return {"validation_split": self.validation_split, "seed": self.split_seed,
                "train_subset": self.train_subset, "test_subset": self.test_subset}

    def hash(self) -> str:
        """Stable short hash of everything that determines the run's work.

        A field added after runs were recorded enters it only when set away from its default, so a
        config that leaves it alone keeps the hash (and the finished work) it had before.
        """
        data = {name: value for name, value in self.to_dict().items()
                if name not in LATER_FIELDS or value != CONFIG_FIELDS[name].default}
        text = json.dumps(data, sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:12]


def _plain(value):
    return list(value) if isinstance(value, tuple) else value


CONFIG_FIELDS = {f.name: f for f in dataclasses.fields(Config)}
LATER_FIELDS = frozenset({"bn_statistics", "jit_compile", "precision"})  # see Config.hash
# What training logs per epoch: Keras' numbers, then the BatchNormalization check (ablation.bn_statistics):
# accuracy on a fixed set of validation images with the moving and with recomputed statistics.
EPOCH_METRICS = ("loss", "accuracy", "val_loss", "val_accuracy", "learning_rate",
                 "val_accuracy_moving_bn", "val_accuracy_recomputed_bn")


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


def _finite(value) -> bool:
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
    return Rule(what, lambda v: _finite(v) and above(v) and below(v), "float", float)


def one_of(*choices) -> Rule:
    return Rule(f"one of {list(choices)}", lambda v: isinstance(v, str) and v in choices, "choice")


FLAG = Rule("true or false", lambda v: isinstance(v, bool), "bool")
SEED = whole(0, 2**32 - 1)  # numpy's seeds are unsigned 32-bit integers


def _is_schedule(value) -> bool:
    return isinstance(value, (list, tuple)) and all(
        isinstance(p, (list, tuple)) and len(p) == 2 and _whole_number(p[0]) and p[0] >= 0 and _finite(p[1]) and p[1] > 0
        for p in value)


def _optional(rule: Rule) -> Rule:
    """The rule, or None (the default: no subset); study files cannot say None, overrides may."""
    return Rule(rule.what + " (or none)", lambda v: v is None or rule.accepts(v), rule.kind)


CHOICES = {
    "optimizer": ("adam", "sgd"),
    "normalization": ("scale", "per_pixel_mean"),
    "early_stopping_monitor": ("", "val_accuracy", "val_loss"),
    "reduce_lr_monitor": ("", "val_accuracy", "val_loss"),
    "restore_best_weights": ("always", "on_stop", "never"),
    "bn_statistics": ("moving", "recomputed"),
    "precision": ("float32", "mixed_float16", "mixed_bfloat16"),
}
FIELD_RULES = {
    "model": Rule(f"a registered model: {sorted(MODELS)}", lambda v: isinstance(v, str) and v in MODELS, "choice"),
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
    **{name: one_of(*choices) for name, choices in CHOICES.items()},
}
# Model knobs by name, or by "model.knob" where one model reads a name differently.
# Sizes have upper bounds, so that a typo (100000 blocks) is refused in one line before a run opens
# rather than building for minutes: a stage of 60 template blocks took 34 s to build on a 2-core CPU,
# and Keras could not build 120 (its graph walk exceeds Python's recursion limit).
MAX_BLOCKS = 64  # per stage
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
    "resnet_v1.depth": Rule(f"6n + 2 with 1 <= n <= {MAX_BLOCKS} (20, 32, 44, 56, 110)",
                            lambda v: _whole_number(v) and 8 <= v <= 6 * MAX_BLOCKS + 2 and (v - 2) % 6 == 0),
    "resnet_v2.depth": Rule(f"9n + 2 with 1 <= n <= {MAX_BLOCKS} (56, 110)",
                            lambda v: _whole_number(v) and 11 <= v <= 9 * MAX_BLOCKS + 2 and (v - 2) % 9 == 0),
}


def knob_rule(model: str, knob: str) -> Rule:
    return KNOB_RULES.get(f"{model}.{knob}") or KNOB_RULES[knob]


def check_rules(models: Mapping[str, Mapping[str, Any]]):
    """Every Config field and every registered model's knob has a rule, and its default passes it."""
    missing = sorted(set(CONFIG_FIELDS) - set(FIELD_RULES))
    missing += sorted(f"{model}.{knob}" for model, knobs in models.items() for knob in knobs
                      if f"{model}.{knob}" not in KNOB_RULES and knob not in KNOB_RULES)
    if missing:
        raise ValueError(f"no rule for {missing}: add one to FIELD_RULES or KNOB_RULES in ablation/config.py")
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
    return _checked(FIELD_RULES[name], name, value, where)


def check_knob(model: str, name: str, value, where: str):
    """`value` as knob `name` of `model` holds it, or a StudyError naming `where`, the knob and what is allowed."""
    knobs = model_defaults(model)
    if name not in knobs:
        raise StudyError(f"{where}: {name!r} is not a knob of model {model}; allowed: {sorted(knobs)}")
    return _checked(knob_rule(model, name), f"model_args.{name}", value, where)


def check_setting(model: str, name: str, value, where: str):
    """A flat name (a Config field, or a knob of `model`) and its value checked: a search parameter, an override."""
    if name in model_defaults(model):
        return check_knob(model, name, value, where)
    if name == "model_args":
        raise StudyError(f"{where}: set a model's knobs by name (e.g. dropout_rate), not model_args")
    return check_field(name, value, where)


def _checked(rule: Rule, name: str, value, where: str):
    if not rule.accepts(value):
        raise StudyError(f"{where}: {name} must be {rule.what}, got {_shown(value)}")
    return rule.convert(value)


def _shown(value) -> str:
    """The refused value for a one-line message: repr, cut short."""
    text = repr(value).replace("\n", " ")
    return text if len(text) <= 80 else text[:77] + "..."


# ---------------------------------------------------------------------------------------------
# Profiles: the same study at three sizes.


@dataclass(frozen=True)
class Profile:
    """How a study is shrunk: epochs (and epoch-counted patience) scaled, data subsetted."""

    name: str
    epoch_scale: float
    train_subset: int | None
    test_subset: int | None
    description: str
    max_epochs: int | None = None  # a cap on every epoch budget after scaling
    run_eagerly: bool = False
    # The BatchNormalization statistics a shrunk profile evaluates with, where the config keeps the
    # recipe's moving ones: on a few thousand images they lag (docs/recipe.md#batchnorm-statistics).
    bn_statistics: str | None = None

    def apply(self, config: Config) -> Config:
        """The config as this profile runs it."""
        if self.epoch_scale == 1.0 and self.train_subset is None and self.test_subset is None:
            return config
        scale = lambda n: max(1, math.ceil(n * self.epoch_scale))  # noqa: E731
        # Patience shrinks with the epochs, but not below 5 (or the recipe's own value): on a
        # subset the first epochs' validation numbers swing while BatchNorm's moving statistics
        # catch up, and a quick run with patience 2 stopped the LR-schedule step at epoch 3.
        patience = lambda n: max(min(n, MIN_SCALED_PATIENCE), scale(n))  # noqa: E731
        stopping, lowering = patience(config.early_stopping_patience), patience(config.reduce_lr_patience)
        if (config.early_stopping_monitor and config.reduce_lr_monitor
                and config.reduce_lr_patience < config.early_stopping_patience and lowering >= stopping):
            # The floor must not undo the recipe's order (the LR drops before training stops), or the
            # step would stop in the very epoch its rate would fall: keep the recipe's ratio instead.
            lowering = max(1, min(stopping - 1, math.ceil(stopping * config.reduce_lr_patience / config.early_stopping_patience)))
        return dataclasses.replace(
            config,
            epochs=min(scale(config.epochs), self.max_epochs or config.epochs),
            run_eagerly=config.run_eagerly or self.run_eagerly,
            early_stopping_patience=stopping,
            reduce_lr_patience=lowering,
            lr_schedule=tuple((scale(epoch), mult) for epoch, mult in config.lr_schedule),
            train_subset=_smaller(config.train_subset, self.train_subset),
            test_subset=_smaller(config.test_subset, self.test_subset),
            bn_statistics=self.bn_statistics if self.bn_statistics and config.bn_statistics == "moving"
            else config.bn_statistics,
        )


MIN_SCALED_PATIENCE = 5  # epochs


def _smaller(a, b):
    return b if a is None else a if b is None else min(a, b)


PROFILES = {
    "full": Profile("full", 1.0, None, None, "the recipe exactly: all 50,000 images, every epoch (for a GPU)"),
    "quick": Profile(
        "quick", 0.2, 4000, 2000,
        "a faithful miniature: 1/5 of every epoch budget (patience too, but at least 5), 4,000 training and 2,000 test images",
        bn_statistics="recomputed",
    ),
    # The recipe's own epochs and patiences, so early stopping and LR drops happen where the recipe
    # has them, on fewer images: the alternative to quick's shortened ramp-up, at about 1.5x its CPU.
    "miniature": Profile(
        "miniature", 1.0, 1250, 2000,
        "the recipe's epochs and patiences, 1,250 training (1,000 train / 250 validation) and 2,000 test images",
        bn_statistics="recomputed",
    ),
    # Tracing a deep network's graph costs more CPU than a few eager batches: smoke runs eagerly.
    "smoke": Profile(
        "smoke", 0.04, 160, 100,
        "seconds: 1/25 of every epoch budget (1 or 2 epochs), 160 training and 100 test images, eager (tests)",
        max_epochs=2, run_eagerly=True, bn_statistics="recomputed",
    ),
}


def get_profile(name: str) -> Profile:
    if name not in PROFILES:
        raise StudyError(f"unknown profile {name!r}; allowed: {', '.join(PROFILES)}")
    return PROFILES[name]


# ---------------------------------------------------------------------------------------------
# Study files.


@dataclass(frozen=True)
class Step:
    """One run of a study: a name, what changed, its config and the source's reported accuracy."""

    name: str
    description: str
    config: Config
    reported_test_accuracy: float | None = None
    is_baseline: bool = False
    compare_to: str | None = None  # a baseline's `from_step`: the step its change is tested against


@dataclass(frozen=True)
class SearchParam:
    name: str
    type: str  # int | float | categorical
    low: float | None = None
    high: float | None = None
    log: bool = False
    choices: tuple = ()


@dataclass(frozen=True)
class SearchSpace:
    base_step: str
    params: tuple[SearchParam, ...]
    monitor: str = "val_accuracy"  # the per-epoch metric fed to the pruner
    direction: str = "maximize"


@dataclass(frozen=True)
class AttributionComponent:
    """A part of the ladder's changes credited on its own: a ladder step and which of its settings."""

    name: str
    step: str
    fields: tuple[str, ...]  # flat names (Config fields, model knobs) that the step's own table sets


@dataclass(frozen=True)
class Study:
    name: str
    title: str
    source: str
    path: Path
    steps: tuple[Step, ...]
    search: SearchSpace | None = None
    seeds: tuple[int, ...] = (0,)  # the training seeds every step is replicated with (a paired design)
    attribution: tuple[AttributionComponent, ...] = ()  # [attribution]; empty: one component per ladder step
    # The command line's --set values, already put into every step: recorded with the runs.
    overrides: Mapping[str, Any] = field(default_factory=dict, compare=False)

    def overrides_json(self) -> str:
        """The --set values as recorded in a run's tag: JSON, "{}" for none."""
        return json.dumps(dict(self.overrides), sort_keys=True)

    def step(self, name: str) -> Step:
        for step in self.steps:
            if step.name == name:
                return step
        raise StudyError(f"{self.path.name}: no step {name!r}; steps: {', '.join(s.name for s in self.steps)}")


STEP_META_KEYS = {"name", "description", "reported_test_accuracy", "from_step"}
STUDY_KEYS = {"name", "title", "source", "cumulative", "seeds"}
SEARCH_KEYS = {"base_step", "monitor", "direction", "params"}
SEARCH_PARAM_KEYS = {"type", "low", "high", "log", "choices"}
# A study's name is an MLflow experiment and a folder under reports/; a step's name is a run name and a
# table key: plain identifiers only, so that no name can reach outside its folder.
STUDY_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,63}")
STEP_NAME = re.compile(r"[a-z][a-z0-9_]{0,63}")
TEXT = Rule("a string", lambda v: isinstance(v, str))
FRACTION = Rule("a fraction in [0, 1]", lambda v: _finite(v) and 0 <= v <= 1, "float", float)
MAX_SEEDS = 1000


SHIPPED_STUDIES = Path(__file__).resolve().parents[1] / "studies"  # beside the package in a source checkout


def find_study(name_or_path: str | Path) -> Path:
    """A study file: a path (ends in .toml or names a folder), or a name: studies/NAME.toml here, else shipped."""
    text = str(name_or_path)
    if text.endswith(".toml") or "/" in text or "\\" in text:
        return Path(text)
    for folder in (Path("studies"), SHIPPED_STUDIES):
        if (folder / f"{text}.toml").is_file():
            return folder / f"{text}.toml"
    return Path("studies") / f"{text}.toml"


def load_study(name_or_path: str | Path) -> Study:
    """Read and validate a study file (a path, or a shipped study's name); every error names the file and the key."""
    path = find_study(name_or_path)
    data, where = _read_toml(path), path.name
    _check_keys(data, {"study", "base", "steps", "baselines", "search", "attribution"}, where, "top level")
    # [study]: who the study is.
    meta = data.get("study")
    if meta is None:
        raise StudyError(f"{where}: a study needs a [study] table with its name")
    _check_keys(meta, STUDY_KEYS, where, "[study]")
    if "name" not in meta:
        raise StudyError(f"{where}: [study] needs a name (used as the MLflow experiment name)")
    name = check_name(meta["name"], STUDY_NAME, f"{where}: [study] name")
    title, source = (_checked(TEXT, key, meta.get(key, default), f"{where}: [study]")
                     for key, default in (("title", name), ("source", "")))
    cumulative = _checked(FLAG, "cumulative", meta.get("cumulative", True), f"{where}: [study]")
    # [base] and the steps: every config checked field by field.
    if "base" not in data:
        raise StudyError(f"{where}: a study needs a [base] table, the configuration its steps change "
                         "(an empty [base] means the Config defaults)")
    base = _make_config(Config(), data["base"], where, "[base]")
    steps = _make_steps(_entries(data, "steps", where), base, cumulative, where, "steps", baseline=False)
    if not steps:
        raise StudyError(f"{where}: a study needs at least one [[steps]] entry")
    baselines = _make_steps(_entries(data, "baselines", where), base, False, where, "baselines", baseline=True,
                            earlier=steps)
    all_steps = tuple(steps + baselines)
    names = [s.name for s in all_steps]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise StudyError(f"{where}: step names must be unique; repeated: {duplicates}")
    study = Study(name, title, source, path, all_steps, seeds=parse_seeds(meta.get("seeds", 1), f"{where}: [study] seeds"))
    if "search" in data:
        study = dataclasses.replace(study, search=_make_search(data["search"], study, where))
    if "attribution" in data:
        study = dataclasses.replace(study, attribution=_make_attribution(data, study, cumulative, where))
    return study


def _read_toml(path: Path) -> dict:
    """The file's TOML as a dict, or a StudyError saying why it cannot be read."""
    if not path.exists():
        shipped = ", ".join(sorted(p.stem for p in SHIPPED_STUDIES.glob("*.toml")))
        raise StudyError(f"study file {path} not found; the studies shipped are in studies/ "
                         f"(e.g. studies/assignment.toml), or give a name: {shipped}")
    if not path.is_file():
        raise StudyError(f"study file {path} is not a file")
    try:
        return tomllib.loads(path.read_bytes().decode("utf-8"))
    except OSError as error:
        raise StudyError(f"study file {path} cannot be read: {error.strerror}") from None
    except UnicodeDecodeError as error:
        raise StudyError(f"{path}: not UTF-8 text (byte {error.start}); save the study file as UTF-8") from None
    except tomllib.TOMLDecodeError as error:
        raise StudyError(f"{path}: not valid TOML: {error}") from None


def check_name(name, pattern: re.Pattern, where: str) -> str:
    """A study or step name that is a plain identifier, or a StudyError saying what is allowed."""
    if not (isinstance(name, str) and pattern.fullmatch(name)):
        allowed = ("letters, digits, _ and -, starting with a letter" if pattern is STUDY_NAME
                   else "snake_case: lowercase letters, digits and _, starting with a letter")
        raise StudyError(f"{where} must be {allowed} (at most 64 characters), got {_shown(name)}")
    return name


def _entries(data: dict, table: str, where: str) -> list:
    """The [[table]] entries: a list of tables."""
    entries = data.get(table, [])
    if not (isinstance(entries, list) and all(isinstance(entry, dict) for entry in entries)):
        raise StudyError(f"{where}: {table} must be an array of tables ([[{table}]] entries), got {_shown(entries)}")
    return entries


def parse_seeds(value, where: str) -> tuple[int, ...]:
    """`seeds`: a count N (the seeds 0..N-1) or a list of distinct integers."""
    if SEED.accepts(value) and 1 <= value <= MAX_SEEDS:
        return tuple(range(value))
    if (isinstance(value, list) and 1 <= len(value) <= MAX_SEEDS and all(SEED.accepts(v) for v in value)
            and len(set(value)) == len(value)):
        return tuple(value)
    raise StudyError(f"{where} must be a count of seeds (1 to {MAX_SEEDS}) or a list of distinct integers in "
                     f"0..{2**32 - 1}, got {_shown(value)}")


def _make_steps(entries, base, cumulative, where, table, *, baseline, earlier=()):
    steps, previous = [], base
    known = {s.name: s for s in earlier}
    for index, entry in enumerate(entries):
        if "name" not in entry:
            raise StudyError(f"{where}: [[{table}]] #{index + 1} needs a name")
        name = check_name(entry["name"], STEP_NAME, f"{where}: [[{table}]] #{index + 1} name")
        at = f"[[{table}]] {name!r}"
        _check_keys(entry, STEP_META_KEYS | set(CONFIG_FIELDS), where, at)
        description = _checked(TEXT, "description", entry.get("description", ""), f"{where}: {at}")
        start = previous if cumulative else base
        if "from_step" in entry:
            origin = entry["from_step"]
            if not (isinstance(origin, str) and origin in known):
                raise StudyError(f"{where}: {at}: from_step {_shown(origin)} is not an earlier step; "
                                 f"allowed: {sorted(known)}")
            start = known[origin].config
        overrides = {k: v for k, v in entry.items() if k not in STEP_META_KEYS}
        config = _make_config(start, overrides, where, at)
        reported = entry.get("reported_test_accuracy")
        if reported is not None:
            reported = _checked(FRACTION, "reported_test_accuracy", reported, f"{where}: {at}")
        step = Step(name, description, config, reported, baseline, entry.get("from_step") if baseline else None)
        steps.append(step)
        known[step.name] = step
        previous = config
    return steps


def _make_config(start: Config, overrides: dict, where: str, at: str) -> Config:
    """Apply a table of overrides to a config, checking every key, type and value."""
    _check_keys(overrides, set(CONFIG_FIELDS), where, at)
    values = {key: check_field(key, value, f"{where}: {at}") for key, value in overrides.items() if key != "model_args"}
    model = values.get("model", start.model)
    knobs = model_defaults(model)
    # A new model starts from its own defaults; the same model keeps the earlier step's knobs.
    model_args = dict(start.model_args) if model == start.model else {}
    given = overrides.get("model_args", {})
    if not isinstance(given, dict):
        raise StudyError(f"{where}: {at}: model_args must be a table of the model's knobs; allowed: {sorted(knobs)}")
    _check_keys(given, set(knobs), where, f"{at} model_args (model {model})")
    model_args.update({key: check_knob(model, key, value, f"{where}: {at}") for key, value in given.items()})
    return dataclasses.replace(start, **values, model_args=model_args)


def parse_overrides(items, where: str = "--set") -> dict[str, Any]:
    """FIELD=VALUE strings as flat name -> value; VALUE is read as TOML (3, 1e-3, true, [[5, 0.1]]), else as text.

    `none` is None (no subset). Names are Config fields or model knobs; `apply_overrides` checks
    the values with the rules a study file's are checked with.
    """
    knobs = {knob for defaults in MODELS.values() for knob in defaults}
    values = {}
    for item in items:
        name, equals, text = item.partition("=")
        if not equals or not name.strip():
            raise StudyError(f"{where} {_shown(item)}: expected FIELD=VALUE, e.g. {where} epochs=3")
        values[name.strip()] = _toml_value(text.strip())
    _check_keys(values, (set(CONFIG_FIELDS) - {"model_args"}) | knobs, where, "FIELD=VALUE")
    return values


def _toml_value(text: str):
    if text == "none":
        return None
    try:
        return tomllib.loads(f"value = {text}")["value"]
    except tomllib.TOMLDecodeError:
        return text  # a bare word: vgg_like, val_loss, or nothing at all


def apply_overrides(study: Study, values: Mapping[str, Any], where: str = "--set") -> Study:
    """The study with flat values put into every step, checked as a study file's step is, and kept in `overrides`.

    A Config field goes into every step; a knob into the steps whose model has it (at least one must).
    """
    if not values:
        return study
    fields = {k: v for k, v in values.items() if k in CONFIG_FIELDS}
    knobs = {k: v for k, v in values.items() if k not in CONFIG_FIELDS}
    steps = []
    for step in study.steps:
        at = f"step {step.name!r}"
        config = _make_config(step.config, fields, where, at)
        own = {k: v for k, v in knobs.items() if k in config.model_args}
        steps.append(dataclasses.replace(step, config=_make_config(config, {"model_args": own}, where, at)))
    unused = sorted(k for k in knobs if not any(k in s.config.model_args for s in steps))
    if unused:
        models = sorted({s.config.model for s in steps})
        raise StudyError(f"{where}: {unused} are knobs of no model this study runs ({', '.join(models)})")
    return dataclasses.replace(study, steps=tuple(steps), overrides={**study.overrides, **values})


def _make_search(data, study: Study, where: str) -> SearchSpace:
    _check_keys(data, SEARCH_KEYS, where, "[search]")
    base_name = data.get("base_step", [s for s in study.steps if not s.is_baseline][-1].name)
    if not isinstance(base_name, str):
        raise StudyError(f"{where}: [search] base_step must be a step's name, got {_shown(base_name)}")
    base = study.step(base_name).config
    monitor = data.get("monitor", "val_accuracy")
    if monitor not in ("val_accuracy", "val_loss", "accuracy", "loss"):
        raise StudyError(f"{where}: [search] monitor must be one of val_accuracy, val_loss, accuracy, loss; "
                         f"got {_shown(monitor)}")
    direction = data.get("direction", "minimize" if monitor.endswith("loss") else "maximize")
    if direction not in ("maximize", "minimize"):
        raise StudyError(f"{where}: [search] direction must be maximize or minimize, got {_shown(direction)}")
    specs = data.get("params", {})
    if not isinstance(specs, dict):
        raise StudyError(f"{where}: [search] params must be tables [search.params.NAME], got {_shown(specs)}")
    params = tuple(_make_search_param(name, spec, base, where) for name, spec in specs.items())
    if not params:
        raise StudyError(f"{where}: [search] needs at least one [search.params.NAME] table")
    return SearchSpace(base_name, params, monitor, direction)


def _make_search_param(name: str, spec, base: Config, where: str) -> SearchParam:
    """One [search.params.NAME] table: its type, and a range or choices its field or knob accepts."""
    at = f"[search.params.{name}]"
    knobs = model_defaults(base.model)
    allowed = (set(CONFIG_FIELDS) - {"model", "model_args"}) | set(knobs)
    if name not in allowed:
        raise StudyError(f"{where}: {at}: {name!r} is neither a config field nor a knob of model "
                         f"{base.model}; allowed: {sorted(allowed)}")
    _check_keys(spec, SEARCH_PARAM_KEYS, where, at)
    rule = knob_rule(base.model, name) if name in knobs else FIELD_RULES[name]
    kind = spec.get("type")
    fits = {"int": ("int", "float"), "float": ("float",)}  # which rule kinds a sampled number may feed
    if kind not in ("int", "float", "categorical"):
        raise StudyError(f"{where}: {at}: type must be int, float or categorical, got {_shown(kind)}")
    if kind != "categorical" and rule.kind not in fits[kind]:
        raise StudyError(f"{where}: {at}: {name} must be {rule.what}: search it with type = "
                         f"{'int' if rule.kind == 'int' else 'categorical'}")
    if kind == "categorical":
        choices = spec.get("choices")
        if not (isinstance(choices, list) and choices and all(isinstance(c, (str, int, float)) for c in choices)):
            raise StudyError(f"{where}: {at}: a categorical parameter needs a non-empty choices list of "
                             f"strings, numbers or booleans, got {_shown(choices)}")
        return SearchParam(name, kind, choices=tuple(check_setting(base.model, name, c, f"{where}: {at} choices")
                                                     for c in choices))
    low, high, log = spec.get("low"), spec.get("high"), spec.get("log", False)
    number_kind = whole() if kind == "int" else number(-math.inf)
    if not (number_kind.accepts(low) and number_kind.accepts(high) and low < high):
        raise StudyError(f"{where}: {at}: needs {'integers' if kind == 'int' else 'finite numbers'} low < high, "
                         f"got low={_shown(low)}, high={_shown(high)}")
    for bound in (low, high):
        check_setting(base.model, name, bound, f"{where}: {at} low/high")
    if not isinstance(log, bool):
        raise StudyError(f"{where}: {at}: log must be true or false, got {_shown(log)}")
    if log and low <= 0:
        raise StudyError(f"{where}: {at}: a log-scale parameter needs low > 0")
    return SearchParam(name, kind, float(low) if kind == "float" else low, high if kind == "int" else float(high), log)


ATTRIBUTION_KEYS = {"components"}
COMPONENT_KEYS = {"step", "fields"}


def _make_attribution(data, study: Study, cumulative, where: str) -> tuple[AttributionComponent, ...]:
    """[attribution.components]: each names a ladder step after the first and some of the settings its table sets.

    Together they must cover every such setting exactly once, so that all components applied to the
    ladder's first step rebuild its last step (and its runs are reused).
    """
    table = data["attribution"]
    _check_keys(table, ATTRIBUTION_KEYS, where, "[attribution]")
    if not cumulative:
        raise StudyError(f"{where}: [attribution] needs a cumulative ladder ([study] cumulative = true): "
                         "the components are changes applied one over another")
    settings = _step_settings(data, study)
    components = table.get("components", {})
    if not isinstance(components, dict) or not components:
        raise StudyError(f"{where}: [attribution] needs at least one [attribution.components.NAME] table")
    owner, out = {}, []
    for name, spec in components.items():
        at = f"[attribution.components.{name}]"
        if not (name.replace("_", "").isalnum() and name == name.lower()):
            raise StudyError(f"{where}: {at}: component names are snake_case (letters, digits, _)")
        _check_keys(spec, COMPONENT_KEYS, where, at)
        step = spec.get("step")
        if not isinstance(step, str) or step not in settings:
            raise StudyError(f"{where}: {at}: step must be a ladder step after the first (the first is the base), "
                             f"got {step!r}; allowed: {list(settings)}")
        fields = spec.get("fields", settings[step])
        if not (isinstance(fields, list) and fields and all(isinstance(f, str) for f in fields)):
            raise StudyError(f"{where}: {at}: fields must be a non-empty list of setting names, got {fields!r}")
        unknown = sorted(set(fields) - set(settings[step]))
        if unknown:
            raise StudyError(f"{where}: {at}: fields {unknown} are not set by step {step!r}; "
                             f"allowed: {settings[step]}")
        if "model" in settings[step] and sorted(fields) != sorted(settings[step]):
            raise StudyError(f"{where}: {at}: step {step!r} changes the model, so its settings stay in one component "
                             "(leave out fields)")
        taken = sorted(f for f in fields if (step, f) in owner)
        if taken:
            raise StudyError(f"{where}: {at}: fields {taken} of step {step!r} are already in component "
                             f"{owner[step, taken[0]]!r}; each setting belongs to one component")
        owner.update({(step, f): name for f in fields})
        out.append(AttributionComponent(name, step, tuple(fields)))
    missing = [f"{step}.{f}" for step, names in settings.items() for f in names if (step, f) not in owner]
    if missing:
        raise StudyError(f"{where}: [attribution.components] must cover every setting of the ladder's steps after "
                         f"the first (together they rebuild the last step); not covered: {missing}")
    return tuple(out)


def _step_settings(data, study: Study) -> dict[str, list[str]]:
    """Per ladder step after the first: the flat names (fields, model knobs) its own table sets."""
    entries = {entry["name"]: entry for entry in data.get("steps", [])}
    ladder = [s.name for s in study.steps if not s.is_baseline]
    return {name: [k for k in entries[name] if k not in STEP_META_KEYS | {"model_args"}]
            + list(entries[name].get("model_args", {})) for name in ladder[1:]}


def _check_keys(table, allowed, where, at):
    if not isinstance(table, dict):
        raise StudyError(f"{where}: {at} must be a table, got {_shown(table)}")
    unknown = sorted(set(table) - set(allowed))
    if unknown:
        raise StudyError(f"{where}: {at}: unknown key(s) {unknown}; allowed: {sorted(allowed)}")

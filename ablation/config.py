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
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Mapping

from ablation.models import MODELS, model_defaults  # the registry: read from source, no Keras


class StudyError(ValueError):
    """A study file or option that cannot be used; the message names the file and the key."""


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

    def __post_init__(self):
        # Frozen all the way down: model_args cannot be mutated behind the config's back.
        object.__setattr__(self, "model_args", MappingProxyType(dict(self.model_args)))
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
        """Stable short hash of everything that determines the run's work."""
        text = json.dumps(self.to_dict(), sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:12]


def _plain(value):
    return list(value) if isinstance(value, tuple) else value


CONFIG_FIELDS = {f.name: f for f in dataclasses.fields(Config)}
EPOCH_METRICS = ("loss", "accuracy", "val_loss", "val_accuracy", "learning_rate")  # what training logs per epoch


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
CHOICES = {
    "optimizer": ("adam", "sgd"),
    "normalization": ("scale", "per_pixel_mean"),
    "early_stopping_monitor": ("", "val_accuracy", "val_loss"),
    "reduce_lr_monitor": ("", "val_accuracy", "val_loss"),
    "restore_best_weights": ("always", "on_stop", "never"),
}


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
        )


MIN_SCALED_PATIENCE = 5  # epochs


def _smaller(a, b):
    return b if a is None else a if b is None else min(a, b)


PROFILES = {
    "full": Profile("full", 1.0, None, None, "the recipe exactly: all 50,000 images, every epoch (for a GPU)"),
    "quick": Profile(
        "quick", 0.2, 4000, 2000,
        "a faithful miniature: 1/5 of every epoch budget (patience too, but at least 5), 4,000 training and 2,000 test images",
    ),
    # Tracing a deep network's graph costs more CPU than a few eager batches: smoke runs eagerly.
    "smoke": Profile(
        "smoke", 0.04, 160, 100,
        "seconds: 1/25 of every epoch budget (1 or 2 epochs), 160 training and 100 test images, eager (tests)",
        max_epochs=2, run_eagerly=True,
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

    def step(self, name: str) -> Step:
        for step in self.steps:
            if step.name == name:
                return step
        raise StudyError(f"{self.path.name}: no step {name!r}; steps: {', '.join(s.name for s in self.steps)}")


STEP_META_KEYS = {"name", "description", "reported_test_accuracy", "from_step"}
STUDY_KEYS = {"name", "title", "source", "cumulative", "seeds"}
SEARCH_KEYS = {"base_step", "monitor", "direction", "params"}
SEARCH_PARAM_KEYS = {"type", "low", "high", "log", "choices"}


def load_study(path: str | Path) -> Study:
    """Read and validate a study file; every error names the file and the key."""
    path = Path(path)
    if not path.is_file():
        raise StudyError(f"study file {path} not found; the studies shipped are in studies/ (e.g. studies/assignment.toml)")
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as error:
        raise StudyError(f"{path}: not valid TOML: {error}") from None
    where = path.name
    _check_keys(data, {"study", "base", "steps", "baselines", "search", "attribution"}, where, "top level")
    meta = data.get("study", {})
    _check_keys(meta, STUDY_KEYS, where, "[study]")
    if "name" not in meta:
        raise StudyError(f"{where}: [study] needs a name (used as the MLflow experiment name)")
    base = _make_config(Config(), data.get("base", {}), where, "[base]")
    cumulative = meta.get("cumulative", True)
    steps = _make_steps(data.get("steps", []), base, cumulative, where, "steps", baseline=False)
    if not steps:
        raise StudyError(f"{where}: a study needs at least one [[steps]] entry")
    baselines = _make_steps(data.get("baselines", []), base, False, where, "baselines", baseline=True, earlier=steps)
    all_steps = tuple(steps + baselines)
    names = [s.name for s in all_steps]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise StudyError(f"{where}: step names must be unique; repeated: {duplicates}")
    study = Study(meta["name"], meta.get("title", meta["name"]), meta.get("source", ""), path, all_steps,
                  seeds=parse_seeds(meta.get("seeds", 1), f"{where}: [study] seeds"))
    if "search" in data:
        study = dataclasses.replace(study, search=_make_search(data["search"], study, where))
    if "attribution" in data:
        study = dataclasses.replace(study, attribution=_make_attribution(data, study, cumulative, where))
    return study


def parse_seeds(value, where: str) -> tuple[int, ...]:
    """`seeds`: a count N (the seeds 0..N-1) or a list of distinct integers."""
    whole = lambda v: isinstance(v, int) and not isinstance(v, bool)  # noqa: E731
    if whole(value) and value >= 1:
        return tuple(range(value))
    if isinstance(value, list) and value and all(whole(v) and v >= 0 for v in value) and len(set(value)) == len(value):
        return tuple(value)
    raise StudyError(f"{where} must be a count of seeds (1 or more) or a list of distinct non-negative integers, "
                     f"got {value!r}")


def _make_steps(entries, base, cumulative, where, table, *, baseline, earlier=()):
    steps, previous = [], base
    known = {s.name: s for s in earlier}
    for index, entry in enumerate(entries):
        at = f"[[{table}]] #{index + 1}"
        if "name" not in entry:
            raise StudyError(f"{where}: {at} needs a name")
        at = f"[[{table}]] {entry['name']!r}"
        _check_keys(entry, STEP_META_KEYS | set(CONFIG_FIELDS), where, at)
        _check_name(entry["name"], where, at)
        start = previous if cumulative else base
        if "from_step" in entry:
            if entry["from_step"] not in known:
                raise StudyError(f"{where}: {at}: from_step {entry['from_step']!r} is not an earlier step; "
                                 f"allowed: {sorted(known)}")
            start = known[entry["from_step"]].config
        overrides = {k: v for k, v in entry.items() if k not in STEP_META_KEYS}
        config = _make_config(start, overrides, where, at)
        reported = entry.get("reported_test_accuracy")
        if reported is not None and not (isinstance(reported, (int, float)) and 0 <= reported <= 1):
            raise StudyError(f"{where}: {at}: reported_test_accuracy must be a fraction in [0, 1], got {reported!r}")
        step = Step(entry["name"], entry.get("description", ""), config, reported, baseline,
                    entry.get("from_step") if baseline else None)
        steps.append(step)
        known[step.name] = step
        previous = config
    return steps


def _check_name(name, where, at):
    if not (isinstance(name, str) and name.replace("_", "").isalnum() and name == name.lower()):
        raise StudyError(f"{where}: {at}: step names are snake_case (letters, digits, _), got {name!r}")


def _make_config(start: Config, overrides: dict, where: str, at: str) -> Config:
    """Apply a table of overrides to a config, checking every key, type and value."""
    _check_keys(overrides, set(CONFIG_FIELDS), where, at)
    values = {}
    for key, value in overrides.items():
        if key == "model_args":
            continue
        values[key] = _check_value(key, value, where, at)
    model = values.get("model", start.model)
    if model not in MODELS:
        raise StudyError(f"{where}: {at}: model {model!r} is not registered; allowed: {sorted(MODELS)}")
    knobs = model_defaults(model)
    # A new model starts from its own defaults; the same model keeps the earlier step's knobs.
    model_args = dict(start.model_args) if model == start.model else {}
    given = overrides.get("model_args", {})
    if not isinstance(given, dict):
        raise StudyError(f"{where}: {at}: model_args must be a table of the model's knobs; allowed: {sorted(knobs)}")
    _check_keys(given, set(knobs), where, f"{at} model_args (model {model})")
    for key, value in given.items():
        default = knobs[key]
        if default is not None and not _same_kind(value, default):
            raise StudyError(f"{where}: {at}: model_args.{key} must be {type(default).__name__} like its "
                             f"default {default!r}, got {value!r}")
        model_args[key] = tuple(value) if isinstance(value, list) else value
    return dataclasses.replace(start, **values, model_args=model_args)


def _same_kind(value, default) -> bool:
    if isinstance(default, bool) or isinstance(value, bool):
        return isinstance(value, bool) and isinstance(default, bool)
    if isinstance(default, float):
        return isinstance(value, (int, float))
    if isinstance(default, (tuple, list)):
        return isinstance(value, (tuple, list))
    return isinstance(value, type(default))


def _check_value(key, value, where, at):
    """Type and range of one Config field."""
    default = getattr(Config(), key)
    bad = lambda what: StudyError(f"{where}: {at}: {key} must be {what}, got {value!r}")  # noqa: E731
    if key in CHOICES:
        if value not in CHOICES[key]:
            raise bad(f"one of {list(CHOICES[key])}")
    elif key == "lr_schedule":
        if not (isinstance(value, list) and all(
                isinstance(p, list) and len(p) == 2 and isinstance(p[0], int) and p[0] >= 0
                and isinstance(p[1], (int, float)) and p[1] > 0 for p in value)):
            raise bad("a list of [epoch, multiplier] pairs, e.g. [[80, 0.1], [120, 0.01]]")
    elif key in ("train_subset", "test_subset"):
        if not (isinstance(value, int) and not isinstance(value, bool) and value > 0):
            raise bad("a positive integer")
    elif key == "model":
        if not isinstance(value, str):
            raise bad("a model name")
    elif isinstance(default, bool):
        if not isinstance(value, bool):
            raise bad("true or false")
    elif isinstance(default, int):
        if not (isinstance(value, int) and not isinstance(value, bool) and (value > 0 or key == "seed")):
            raise bad("a positive integer" if key != "seed" else "an integer")
    elif isinstance(default, float):
        if not (isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0):
            raise bad("a non-negative number")
        if key == "validation_split" and not 0 < value < 1:
            raise bad("a fraction strictly between 0 and 1")
        if key in ("reduce_lr_factor",) and not 0 < value < 1:
            raise bad("a fraction strictly between 0 and 1")
        value = float(value)
    return value


def _make_search(data, study: Study, where: str) -> SearchSpace:
    _check_keys(data, SEARCH_KEYS, where, "[search]")
    base_name = data.get("base_step", [s for s in study.steps if not s.is_baseline][-1].name)
    base = study.step(base_name).config
    allowed = (set(CONFIG_FIELDS) - {"model", "model_args"}) | set(model_defaults(base.model))
    monitor = data.get("monitor", "val_accuracy")
    if monitor not in ("val_accuracy", "val_loss", "accuracy", "loss"):
        raise StudyError(f"{where}: [search] monitor must be one of val_accuracy, val_loss, accuracy, loss; got {monitor!r}")
    direction = data.get("direction", "minimize" if monitor.endswith("loss") else "maximize")
    if direction not in ("maximize", "minimize"):
        raise StudyError(f"{where}: [search] direction must be maximize or minimize, got {direction!r}")
    params = []
    for name, spec in data.get("params", {}).items():
        at = f"[search.params.{name}]"
        if name not in allowed:
            raise StudyError(f"{where}: {at}: {name!r} is neither a config field nor a knob of model "
                             f"{base.model}; allowed: {sorted(allowed)}")
        _check_keys(spec, SEARCH_PARAM_KEYS, where, at)
        kind = spec.get("type")
        if kind not in ("int", "float", "categorical"):
            raise StudyError(f"{where}: {at}: type must be int, float or categorical, got {kind!r}")
        if kind == "categorical":
            choices = spec.get("choices")
            if not (isinstance(choices, list) and choices):
                raise StudyError(f"{where}: {at}: a categorical parameter needs a non-empty choices list")
            params.append(SearchParam(name, kind, choices=tuple(choices)))
            continue
        low, high = spec.get("low"), spec.get("high")
        if not (isinstance(low, (int, float)) and isinstance(high, (int, float)) and low < high):
            raise StudyError(f"{where}: {at}: needs numbers low < high, got low={low!r}, high={high!r}")
        if kind == "int" and not (isinstance(low, int) and isinstance(high, int)):
            raise StudyError(f"{where}: {at}: an int parameter needs integer low and high")
        if spec.get("log") and low <= 0:
            raise StudyError(f"{where}: {at}: a log-scale parameter needs low > 0")
        params.append(SearchParam(name, kind, low, high, bool(spec.get("log", False))))
    if not params:
        raise StudyError(f"{where}: [search] needs at least one [search.params.NAME] table")
    return SearchSpace(base_name, tuple(params), monitor, direction)


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
        raise StudyError(f"{where}: {at} must be a table")
    unknown = sorted(set(table) - set(allowed))
    if unknown:
        raise StudyError(f"{where}: {at}: unknown key(s) {unknown}; allowed: {sorted(allowed)}")

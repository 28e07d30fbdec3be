"""Study files: a base config, the steps as deltas, baselines, the source's numbers, a search space.

A study file (`studies/*.toml`) holds a base config, the steps as deltas, baselines, the numbers the
source reported, an optional search space and attribution components. The loader rejects unknown
keys and bad values, naming the file, the key and what is allowed (the rules of `ablation.core.config`).
"""

import dataclasses
import json
import math
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from ablation.core.config import (CONFIG_FIELDS, FIELD_RULES, FLAG, SEED, Config, Rule, StudyError,
                                  check_combination, check_field, check_knob, check_setting, checked, finite,
                                  inferred_rule, knob_rule, number, shown, whole)
from ablation.models import MODELS, model_defaults
from ablation.models.imported import ModelError, is_import_path, read_source


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
    model_rules: Mapping[str, Rule] = field(default_factory=dict, compare=False)  # [model_rules], checked on --set too
    metric: str = "test_accuracy"  # what the verdicts compare, paired by seed ([study] metric)

    def overrides_json(self) -> str:
        """The --set values as recorded in a run's tag: JSON, "{}" for none."""
        return json.dumps(dict(self.overrides), sort_keys=True)

    def step(self, name: str) -> Step:
        for step in self.steps:
            if step.name == name:
                return step
        raise StudyError(f"{self.path.name}: no step {name!r}; steps: {', '.join(s.name for s in self.steps)}")


STEP_META_KEYS = {"name", "description", "reported_test_accuracy", "from_step"}
STUDY_KEYS = {"name", "title", "source", "cumulative", "seeds", "metric"}
# What the verdicts compare ([study] metric): a test fraction every run logs (top-5: with more than 5 classes).
VERDICT_METRIC = Rule("test_accuracy or test_top5_accuracy", lambda v: v in ("test_accuracy", "test_top5_accuracy"))
SEARCH_KEYS = {"base_step", "monitor", "direction", "params"}
SEARCH_PARAM_KEYS = {"type", "low", "high", "log", "choices"}
# A study's name is an MLflow experiment and a folder under reports/; a step's name is a run name and a
# table key: plain identifiers only, so that no name can reach outside its folder.
STUDY_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,63}")
STEP_NAME = re.compile(r"[a-z][a-z0-9_]{0,63}")
TEXT = Rule("a string", lambda v: isinstance(v, str))
FRACTION = Rule("a fraction in [0, 1]", lambda v: finite(v) and 0 <= v <= 1, "float", float)
MAX_SEEDS = 1000


# The shipped studies: inside the package once installed (setup.py ships studies/ as ablation/studies/), beside
# it in a source checkout or an editable install.
SHIPPED_STUDIES = Path(__file__).resolve().parents[1] / "studies"  # ablation/studies/
if not SHIPPED_STUDIES.is_dir():
    SHIPPED_STUDIES = SHIPPED_STUDIES.parents[1] / "studies"


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
    _check_keys(data, {"study", "base", "steps", "baselines", "search", "attribution", "model_rules"}, where,
                "top level")
    # [study]: who the study is.
    meta = data.get("study")
    if meta is None:
        raise StudyError(f"{where}: a study needs a [study] table with its name")
    _check_keys(meta, STUDY_KEYS, where, "[study]")
    if "name" not in meta:
        raise StudyError(f"{where}: [study] needs a name (used as the MLflow experiment name)")
    name = check_name(meta["name"], STUDY_NAME, f"{where}: [study] name")
    title, source = (checked(TEXT, key, meta.get(key, default), f"{where}: [study]")
                     for key, default in (("title", name), ("source", "")))
    cumulative = checked(FLAG, "cumulative", meta.get("cumulative", True), f"{where}: [study]")
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
    study = Study(name, title, source, path, all_steps, seeds=parse_seeds(meta.get("seeds", 1), f"{where}: [study] seeds"),
                  metric=checked(VERDICT_METRIC, "metric", meta.get("metric", "test_accuracy"), f"{where}: [study]"))
    if "search" in data:
        study = dataclasses.replace(study, search=_make_search(data["search"], study, where))
    if "attribution" in data:
        study = dataclasses.replace(study, attribution=_make_attribution(data, study, cumulative, where))
    if "model_rules" in data:
        study = dataclasses.replace(study, model_rules=_make_model_rules(data["model_rules"], study, where))
        check_model_rules(study, where)
    return study


def _read_toml(path: Path) -> dict:
    """The file's TOML as a dict, or a StudyError saying why it cannot be read."""
    if not path.exists():
        shipped = ", ".join(sorted(p.stem for p in SHIPPED_STUDIES.glob("*.toml")))
        raise StudyError(f"study file {path} not found; give a study file's path, or a shipped study's name: {shipped}")
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
        raise StudyError(f"{where} must be {allowed} (at most 64 characters), got {shown(name)}")
    return name


def _entries(data: dict, table: str, where: str) -> list:
    """The [[table]] entries: a list of tables."""
    entries = data.get(table, [])
    if not (isinstance(entries, list) and all(isinstance(entry, dict) for entry in entries)):
        raise StudyError(f"{where}: {table} must be an array of tables ([[{table}]] entries), got {shown(entries)}")
    return entries


def parse_seeds(value, where: str) -> tuple[int, ...]:
    """`seeds`: a count N (the seeds 0..N-1) or a list of distinct integers."""
    if SEED.accepts(value) and 1 <= value <= MAX_SEEDS:
        return tuple(range(value))
    if (isinstance(value, list) and 1 <= len(value) <= MAX_SEEDS and all(SEED.accepts(v) for v in value)
            and len(set(value)) == len(value)):
        return tuple(value)
    raise StudyError(f"{where} must be a count of seeds (1 to {MAX_SEEDS}) or a list of distinct integers in "
                     f"0..{2**32 - 1}, got {shown(value)}")


def _make_steps(entries, base, cumulative, where, table, *, baseline, earlier=()):
    steps, previous = [], base
    known = {s.name: s for s in earlier}
    for index, entry in enumerate(entries):
        if "name" not in entry:
            raise StudyError(f"{where}: [[{table}]] #{index + 1} needs a name")
        name = check_name(entry["name"], STEP_NAME, f"{where}: [[{table}]] #{index + 1} name")
        at = f"[[{table}]] {name!r}"
        _check_keys(entry, STEP_META_KEYS | set(CONFIG_FIELDS), where, at)
        description = checked(TEXT, "description", entry.get("description", ""), f"{where}: {at}")
        start = previous if cumulative else base
        if "from_step" in entry:
            origin = entry["from_step"]
            if not (isinstance(origin, str) and origin in known):
                raise StudyError(f"{where}: {at}: from_step {shown(origin)} is not an earlier step; "
                                 f"allowed: {sorted(known)}")
            start = known[origin].config
        overrides = {k: v for k, v in entry.items() if k not in STEP_META_KEYS}
        config = _make_config(start, overrides, where, at)
        reported = entry.get("reported_test_accuracy")
        if reported is not None:
            reported = checked(FRACTION, "reported_test_accuracy", reported, f"{where}: {at}")
        step = Step(name, description, config, reported, baseline, entry.get("from_step") if baseline else None)
        steps.append(step)
        known[step.name] = step
        previous = config
    return steps


def _make_config(start: Config, overrides: dict, where: str, at: str) -> Config:
    """Apply a table of overrides to a config, checking every key, type and value."""
    _check_keys(overrides, set(CONFIG_FIELDS), where, at)
    values = {key: check_field(key, value, f"{where}: {at}") for key, value in overrides.items() if key != "model_args"}
    model = check_model(values["model"], f"{where}: {at}") if "model" in values else start.model
    knobs = model_defaults(model)
    # A new model starts from its own defaults; the same model keeps the earlier step's knobs.
    model_args = dict(start.model_args) if model == start.model else {}
    given = overrides.get("model_args", {})
    if not isinstance(given, dict):
        raise StudyError(f"{where}: {at}: model_args must be a table of the model's knobs; allowed: {sorted(knobs)}")
    _check_keys(given, set(knobs), where, f"{at} model_args (model {model})")
    model_args.update({key: check_knob(model, key, value, f"{where}: {at}") for key, value in given.items()})
    config = dataclasses.replace(start, **values, model_args=model_args)
    check_combination(config, f"{where}: {at}")
    return config


def check_model(value, where: str) -> str:
    """A `model` value: a registered name, or an import path whose function is found and whose every knob has
    a rule (from its default's type, `config.inferred_rule`); else a StudyError naming `where`."""
    model = check_field("model", value, where)
    if not is_import_path(model):
        return model
    try:
        knobs = read_source(model).knobs
    except ModelError as error:
        raise StudyError(f"{where}: {error}") from None
    for knob, default in knobs.items():
        if knob in CONFIG_FIELDS:
            raise StudyError(f"{where}: model {model!r}: knob {knob!r} is named like a Config field; rename it")
        try:
            inferred_rule(default)
        except ValueError as error:
            raise StudyError(f"{where}: model {model!r}: knob {knob!r}: {error}") from None
    return model


def _make_model_rules(table, study: Study, where: str) -> dict[str, Rule]:
    """[model_rules]: narrower rules for knobs of the study's import-path models: `knob = { low = 1, high = 64 }`
    (a number, or each item of a list; either bound may be left out) or `knob = { choices = [...] }`."""
    knobs = {knob for step in study.steps if is_import_path(step.config.model) for knob in step.config.model_args}
    _check_keys(table, knobs, where, "[model_rules] (knobs of the study's import-path models)")
    rules = {}
    for knob, spec in table.items():
        at = f"[model_rules] {knob}"
        _check_keys(spec, {"low", "high", "choices"}, where, at)
        choices, low, high = spec.get("choices"), spec.get("low"), spec.get("high")
        if choices is not None and len(spec) == 1 and isinstance(choices, list) and choices:
            rules[knob] = Rule(f"one of {choices}",
                               lambda v, c=tuple(choices): any(type(v) is type(x) and v == x for x in c))
        elif choices is None and spec and all(finite(b) for b in spec.values()) and (len(spec) == 1 or low <= high):
            bounds = " and ".join(f"{sign} {bound}" for sign, bound in ((">=", low), ("<=", high)) if bound is not None)
            rules[knob] = Rule(f"{bounds} (for a list: each item)", lambda v, lo=low, hi=high: all(
                                   finite(x) and (lo is None or x >= lo) and (hi is None or x <= hi)
                                   for x in (v if isinstance(v, (list, tuple)) else [v])))
        else:
            raise StudyError(f"{where}: {at}: give low and/or high (finite numbers, low <= high) or choices "
                             f"(a non-empty list), not both; got {shown(spec)}")
    return rules


def check_model_rules(study: Study, where: str):
    """The knobs of the study's import-path models, in every step and the search's bounds, pass its [model_rules]."""
    for step in study.steps:
        for knob, rule in study.model_rules.items():
            if is_import_path(step.config.model) and knob in step.config.model_args:
                checked(rule, f"model_args.{knob} ([model_rules])", step.config.model_args[knob],
                        f"{where}: step {step.name!r}")
    if study.search is not None:
        base = study.step(study.search.base_step).config
        for param in study.search.params:
            if param.name in study.model_rules and is_import_path(base.model) and param.name in base.model_args:
                for value in param.choices or (param.low, param.high):
                    checked(study.model_rules[param.name], f"{param.name} ([model_rules])", value,
                            f"{where}: [search.params.{param.name}]")


def parse_overrides(items, where: str = "--set") -> dict[str, Any]:
    """FIELD=VALUE strings as flat name -> value; VALUE is read as TOML (3, 1e-3, true, [[5, 0.1]]), else as text.

    `none` is None (no subset). Names are Config fields or model knobs; `apply_overrides` checks
    them, and the values with the rules a study file's are checked with.
    """
    values = {}
    for item in items:
        name, equals, text = item.partition("=")
        if not equals or not name.strip():
            raise StudyError(f"{where} {shown(item)}: expected FIELD=VALUE, e.g. {where} epochs=3")
        values[name.strip()] = _toml_value(text.strip())
    if "model_args" in values:
        raise StudyError(f"{where} model_args: unknown key; set a model's knobs by name, e.g. {where} dropout_rate=0.3")
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
    # Knobs of any registered model, or of the import-path models this study (or the override) runs.
    models = {*MODELS, *(s.config.model for s in study.steps)}
    if "model" in values:
        models.add(check_model(values["model"], where))
    known = {knob for model in models for knob in model_defaults(model)}
    _check_keys(values, (set(CONFIG_FIELDS) - {"model_args"}) | known, where, "FIELD=VALUE")
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
    study = dataclasses.replace(study, steps=tuple(steps), overrides={**study.overrides, **values})
    check_model_rules(study, where)
    return study


def _make_search(data, study: Study, where: str) -> SearchSpace:
    _check_keys(data, SEARCH_KEYS, where, "[search]")
    base_name = data.get("base_step", [s for s in study.steps if not s.is_baseline][-1].name)
    if not isinstance(base_name, str):
        raise StudyError(f"{where}: [search] base_step must be a step's name, got {shown(base_name)}")
    base = study.step(base_name).config
    monitor = data.get("monitor", "val_accuracy")
    if monitor not in ("val_accuracy", "val_loss", "accuracy", "loss"):
        raise StudyError(f"{where}: [search] monitor must be one of val_accuracy, val_loss, accuracy, loss; "
                         f"got {shown(monitor)}")
    direction = data.get("direction", "minimize" if monitor.endswith("loss") else "maximize")
    if direction not in ("maximize", "minimize"):
        raise StudyError(f"{where}: [search] direction must be maximize or minimize, got {shown(direction)}")
    specs = data.get("params", {})
    if not isinstance(specs, dict):
        raise StudyError(f"{where}: [search] params must be tables [search.params.NAME], got {shown(specs)}")
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
        raise StudyError(f"{where}: {at}: type must be int, float or categorical, got {shown(kind)}")
    if kind != "categorical" and rule.kind not in fits[kind]:
        raise StudyError(f"{where}: {at}: {name} must be {rule.what}: search it with type = "
                         f"{'int' if rule.kind == 'int' else 'categorical'}")
    if kind == "categorical":
        choices = spec.get("choices")
        if not (isinstance(choices, list) and choices and all(isinstance(c, (str, int, float)) for c in choices)):
            raise StudyError(f"{where}: {at}: a categorical parameter needs a non-empty choices list of "
                             f"strings, numbers or booleans, got {shown(choices)}")
        return SearchParam(name, kind, choices=tuple(check_setting(base.model, name, c, f"{where}: {at} choices")
                                                     for c in choices))
    low, high, log = spec.get("low"), spec.get("high"), spec.get("log", False)
    number_kind = whole() if kind == "int" else number(-math.inf)
    if not (number_kind.accepts(low) and number_kind.accepts(high) and low < high):
        raise StudyError(f"{where}: {at}: needs {'integers' if kind == 'int' else 'finite numbers'} low < high, "
                         f"got low={shown(low)}, high={shown(high)}")
    for bound in (low, high):
        check_setting(base.model, name, bound, f"{where}: {at} low/high")
    if not isinstance(log, bool):
        raise StudyError(f"{where}: {at}: log must be true or false, got {shown(log)}")
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
        raise StudyError(f"{where}: {at} must be a table, got {shown(table)}")
    unknown = sorted(set(table) - set(allowed))
    if unknown:
        raise StudyError(f"{where}: {at}: unknown key(s) {unknown}; allowed: {sorted(allowed)}")

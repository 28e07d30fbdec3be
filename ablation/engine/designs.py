"""Order-free credit for a ladder's changes: leave-one-out, add-one-in and Shapley designs over its components.

A component is a part of the ladder's changes: by default one per step after the first (the settings
in which the step differs from the step before it), or the study's `[attribution]` grouping. A subset
of components is a config: the ladder's first step (the base) with the chosen components' settings
applied in ladder order, so a setting two components change takes the later one's value when both are
in (a conflict, listed before anything trains). The empty subset is the first step and the full one the
last step, to the byte (the same config hash): a design is a list of `units.Unit`s (subset x seed)
run through `units.run_units`, which reuses the finished run of the same work, so nothing is trained
twice across the ladder, the designs, seeds or invocations. The statistics are `ablation.analysis.stats`'s,
computed per training seed and summarized over seeds (docs/statistics.md). `search_game` attributes
the search's best trial against its base step the same way, one component per knob it changed.
"""

import dataclasses
import json
import math
import shutil
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import optuna
from optuna.trial import TrialState

from ablation import tracking
from ablation.analysis import stats
from ablation.core.config import CONFIG_FIELDS, Config, StudyError, with_values
from ablation.data import LazySplits
from ablation.engine.units import Unit, run_units, work_key
from ablation.models import model_defaults
from ablation.tracking import Kind, Tag

MEASURES = ("ladder_gain", "leave_one_out", "add_one_in", "shapley")
LADDER, SEARCH = "ladder", "search"  # what a result attributes: the ladder, or the search's best trial
MAX_ORDERS = 200  # sampled Shapley: orders drawn at most, however large the budget
ORDERS_SEED = 0  # the sampled orders are the same on every invocation, so a re-run reuses every subset


@dataclass(frozen=True)
class Component:
    """One player of the ablation game: its name, the step it comes from and the settings it applies."""

    name: str
    step: str  # the ladder step whose change it is (the search's best trial: "search_best")
    settings: Mapping[str, Any]  # flat name (a Config field or a model knob) -> the step's value


@dataclass(frozen=True)
class Game:
    """What is attributed: the empty subset's config, the components, and the config all of them rebuild."""

    kind: str  # LADDER or SEARCH
    base_name: str
    base: Config
    full_name: str
    full: Config
    components: tuple[Component, ...]
    steps: tuple[tuple[str, Config], ...] = ()  # a ladder game: every ladder step, first to last
    importances: Mapping[str, float] = dataclasses.field(default_factory=dict)  # a search game: Optuna's


@dataclass(frozen=True)
class Plan:
    """The subsets a design trains (each once per seed) and, for sampled Shapley values, the orders visiting them."""

    design: str
    budget: int
    subsets: tuple[frozenset, ...]
    orders: tuple[tuple[int, ...], ...] = ()  # sampled Shapley only


# ---------------------------------------------------------------------------------------------
# Components, and the config of a subset of them.


def ladder_game(study) -> Game:
    """The study's ladder as a game: its first step the base, its changes (or `[attribution]`) the components."""
    ladder = [step for step in study.steps if not step.is_baseline]
    if len(ladder) < 2:
        raise StudyError(f"{study.path.name}: attribution needs a ladder of two steps or more (a base and a change)")
    index = {step.name: i for i, step in enumerate(ladder)}
    if study.attribution:
        # Ladder order; components of one step keep the order the study file gives them (their settings differ).
        specs = sorted(study.attribution, key=lambda spec: index[spec.step])
        components = [Component(spec.name, spec.step, _settings(ladder[index[spec.step]].config, spec.fields))
                      for spec in specs]
    else:
        components = [Component(after.name, after.name, _settings(after.config, _changed(before.config, after.config)))
                      for before, after in zip(ladder, ladder[1:])]
    game = Game(LADDER, ladder[0].name, ladder[0].config, ladder[-1].name, ladder[-1].config, tuple(components),
                tuple((step.name, step.config) for step in ladder))
    _check_rebuilds(game, f"{study.path.name}: the components")
    return game


def _changed(before: Config, after: Config) -> list[str]:
    """Flat names whose value differs from `before` to `after` (a new model: all its knobs)."""
    same = lambda a, b: type(a) is type(b) and a == b  # noqa: E731  (1 == 1.0, but their hashes differ)
    names = [f for f in CONFIG_FIELDS if f != "model_args" and not same(getattr(before, f), getattr(after, f))]
    return names + [knob for knob, value in after.model_args.items()
                    if after.model != before.model or not same(before.model_args.get(knob), value)]


def _settings(config: Config, names) -> dict[str, Any]:
    """The config's values of flat `names`; a changed model brings all its knobs (it starts from its own)."""
    names = list(dict.fromkeys([*names, *(config.model_args if "model" in names else ())]))
    return {name: getattr(config, name) if name in CONFIG_FIELDS else config.model_args[name] for name in names}


def compose(game: Game, subset) -> Config:
    """The base with the settings of the components in `subset` applied in ladder order (a later one wins)."""
    config = game.base
    for index, component in enumerate(game.components):
        if index not in subset:
            continue
        fields = {k: v for k, v in component.settings.items() if k in CONFIG_FIELDS}
        knobs = {k: v for k, v in component.settings.items() if k not in CONFIG_FIELDS}
        kept = {} if fields.get("model", config.model) != config.model else dict(config.model_args)
        config = dataclasses.replace(config, **fields, model_args={**kept, **knobs})
    foreign = sorted(set(config.model_args) - set(model_defaults(config.model)))
    if foreign:
        raise StudyError(f"subset {subset_label(game, subset)!r}: knobs {foreign} are not knobs of model {config.model}")
    return config


def _check_rebuilds(game: Game, what: str):
    """All components applied to the base must give the full config to the byte, or its runs are not reused."""
    full = compose(game, frozenset(range(len(game.components))))
    if full.hash() != game.full.hash():
        wanted = game.full.params()
        differing = sorted(k for k, v in full.params().items() if wanted.get(k) != v)
        raise StudyError(f"{what} applied to {game.base_name} do not rebuild {game.full_name} (differing: {differing}); "
                         "only a cumulative ladder without from_step can be attributed")


def conflicts(game: Game) -> list[dict]:
    """Settings that several components set to different values, each (component, value) in ladder order."""
    setters = {}
    for component in game.components:
        for name, value in component.settings.items():
            setters.setdefault(name, []).append([component.name, json.loads(json.dumps(value))])
    return [{"setting": name, "values": pairs} for name, pairs in setters.items()
            if len({json.dumps(value) for _, value in pairs}) > 1]


def subset_label(game: Game, subset) -> str:
    """A run name for a subset: the base's or the full config's name, without-X, or with-X+Y."""
    k, subset = len(game.components), sorted(subset)
    if not subset:
        return game.base_name
    if len(subset) == k:
        return game.full_name
    if len(subset) == k - 1 and k > 2:
        return "without-" + next(c.name for i, c in enumerate(game.components) if i not in subset)
    return "with-" + "+".join(game.components[i].name for i in subset)


# ---------------------------------------------------------------------------------------------
# The search's best trial as a game.


def search_game(study, profile, storage=None, optuna_name=None) -> Game:
    """The search's best trial against its base step: one component per knob the trial changed."""
    if study.search is None:
        raise StudyError(f"{study.path.name}: no [search] table, so no search to attribute")
    space = study.search
    base = study.step(space.base_step).config
    name = optuna_name or f"{study.name}-{profile.name}"
    storage_obj, _, where = tracking.open_storage(storage)
    if name not in optuna.get_all_study_names(storage_obj):
        raise StudyError(f"no Optuna study {name!r} in {where}: run python -m ablation.search --profile {profile.name} "
                         "first, or name it with --study-name")
    found = optuna.load_study(study_name=name, storage=storage_obj)
    complete = found.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not complete:
        raise StudyError(f"Optuna study {name!r} in {where} has no complete trial yet")
    best = found.best_trial
    full = with_values(base, best.params)
    now = full.params()
    changed = [param for param in best.params if base.params().get(param) != now[param]]
    if not changed:
        raise StudyError(f"the best trial ({best.number}) of {name!r} changes nothing in {space.base_step}")
    # Optuna's importances need several complete trials that differ; fewer, and there is nothing to rank.
    with warnings.catch_warnings():  # with few trials Optuna warns that the importances come out equal: they do
        warnings.simplefilter("ignore", UserWarning)
        importances = optuna.importance.get_param_importances(found) if len(complete) >= 2 else {}
    game = Game(SEARCH, space.base_step, base, f"search_best-trial{best.number}", full,
                tuple(Component(param, "search_best", {param: best.params[param]}) for param in changed),
                importances=dict(importances))
    _check_rebuilds(game, "the best trial's changed knobs")
    return game


# ---------------------------------------------------------------------------------------------
# Designs: the subsets to train, and the units (subset x seed) that train them.


def make_plan(design: str, k: int, budget: int) -> Plan:
    """The subsets of a design of k components; Shapley is exact when 2**k fits in `budget`, else sampled."""
    full = frozenset(range(k))
    if design == "leave-one-out":
        return Plan(design, budget, (full, *(full - {i} for i in range(k))))
    if design == "add-one-in":
        return Plan(design, budget, (frozenset(), *(frozenset({i}) for i in range(k))))
    if design != "shapley":
        raise ValueError(f"unknown design {design!r}")
    if 2 ** k <= budget:
        return Plan(design, budget, tuple(stats.subsets(k)))
    orders = _orders_within(k, budget)
    visited = sorted(stats.subsets_of_orders(orders), key=lambda subset: (len(subset), sorted(subset)))
    return Plan(design, budget, tuple(visited), tuple(orders))


def _orders_within(k: int, budget: int) -> list[tuple[int, ...]]:
    """The most antithetic pairs of orders (up to MAX_ORDERS orders) whose prefix subsets fit in `budget`."""
    visits = lambda count: len(stats.subsets_of_orders(stats.permutation_orders(k, count, ORDERS_SEED)))  # noqa: E731
    if visits(2) > budget:
        raise StudyError(f"--budget {budget} is below the {visits(2)} subsets that one antithetic pair of orders "
                         f"visits with {k} components; raise it (exact Shapley values need {2 ** k})")
    count = 2
    while count + 2 <= MAX_ORDERS and visits(count + 2) <= budget:
        count += 2
    return stats.permutation_orders(k, count, ORDERS_SEED)


def as_trained(config: Config, profile, seed: int, deterministic: bool) -> Config:
    """A config as the ladder trains it for one training seed: the seed set, then the profile applied."""
    config = dataclasses.replace(config, seed=seed, deterministic=config.deterministic or deterministic)
    return profile.apply(config)


def design_units(study, profile, game: Game, plan: Plan, seeds, deterministic=False) -> list[Unit]:
    """One unit per seed and subset, seed by seed (a whole design per seed), tagged with the subset."""
    units = []
    for seed in seeds:
        for subset in plan.subsets:
            names = [game.components[i].name for i in sorted(subset)]
            label = subset_label(game, subset)
            name = label if len(seeds) == 1 else f"{label}-seed{seed}"
            description = f"{game.base_name} + " + (", ".join(names) if names else "nothing")
            tags = {Tag.KIND: Kind.DESIGN_UNIT, Tag.STUDY: study.name, Tag.PROFILE: profile.name,
                    Tag.DESIGN: plan.design, Tag.SUBSET: json.dumps(names), Tag.DESCRIPTION: description}
            units.append(Unit(name, as_trained(compose(game, subset), profile, seed, deterministic), tags,
                              f"{name}: {description}", {"subset": sorted(subset), "components": names}))
    return units


# ---------------------------------------------------------------------------------------------
# Running a design.


def run_design(study, profile, design: str, *, seeds, budget: int, data_path=None, force=False,
               deterministic=False, search=None, reports="reports", dry_run=False, say=print,
               run_units=run_units, write_files) -> dict | None:
    """Plan a design, say what it will train, run it (reusing finished work) and attribute; None on a dry run.

    `search`: None attributes the ladder; a dict (storage, optuna_name) attributes the search's best trial.
    `run_units`: how the units run, `units.run_units` or the shared queue's (same arguments).
    `write_files(result, folder)`: writes the attribution's files into a folder and returns their paths (the
    report's `attribution_tables.write_outputs`); they are logged on the parent run and copied under `reports`.
    """
    # Phase 1: the game and the plan; every input error is raised here, before the store is touched.
    game = ladder_game(study) if search is None else search_game(study, profile, **search)
    plan = make_plan(design, len(game.components), budget)
    units = design_units(study, profile, game, plan, seeds, deterministic)
    data = LazySplits(data_path, say)
    # Phase 2: what it costs, stated before anything trains.
    say(describe_game(study, profile, game))
    found = {} if force else finished_accuracies(study, {unit.name: unit.config for unit in units}, data)
    say(describe_plan(plan, len(game.components), seeds, len(units), len(found), force))
    if dry_run:
        return None
    # Phase 3: the units under one parent run; the attribution logged on it and written under reports/.
    outcome, files = {}, []

    def summarize(rows):
        outcome.update(attribute(study, profile, game, plan, seeds, rows, data, deterministic))
        outcome["failed"] = [{"components": row["components"], "seed": row["seed"], "error": row["error"]}
                             for row in rows if row["status"] == "failed"]
        files.extend(_write_and_log(write_files, outcome, Path(reports) / study.name))
        return outcome

    parent_tags = {Tag.KIND: Kind.DESIGN, Tag.STUDY: study.name, Tag.PROFILE: profile.name, Tag.DESIGN: design,
                   Tag.SEEDS: list(seeds), Tag.DESCRIPTION: f"{design} of {game.full_name} against {game.base_name}",
                   Tag.OVERRIDES: study.overrides_json()}
    run_units(study, f"{study.name}-{profile.name}-{file_stem(game.kind, design)}", parent_tags, units,
              data_path, force, say, summarize)
    return {**outcome, "files": files}


def file_stem(kind: str, design: str) -> str:
    """attribution-<design> for the ladder, attribution-search-<design> for the search's best trial."""
    return f"attribution-{design}" if kind == LADDER else f"attribution-search-{design}"


def _write_and_log(write_files, result: dict, folder: Path) -> list[str]:
    """The attribution's files (CSV, Markdown, PNG) logged on the active (parent) run and copied under `folder`."""
    with tempfile.TemporaryDirectory() as scratch:
        written = write_files(result, Path(scratch))
        tracking.log_report(Path(scratch), tracking.active_run_id(), "attribution")
        folder.mkdir(parents=True, exist_ok=True)
        return [str(shutil.copy(path, folder)) for path in written]


def describe_game(study, profile, game: Game) -> str:
    """The components, their settings and the conflicts between them, as lines to print."""
    lines = [f"study {study.name!r} ({study.path.name}), profile {profile.name}: {profile.description}",
             f"{len(game.components)} components from {game.base_name} to {game.full_name}:"]
    lines += [f"  {c.name:<20} ({c.step}) {_settings_text(c.settings)}" for c in game.components]
    for conflict in conflicts(game):
        chain = " < ".join(f"{name} {value!r}" for name, value in conflict["values"])
        lines.append(f"  conflict: {conflict['setting']} is set by {chain}; with several in a subset, the last wins")
    return "\n".join(lines)


def _settings_text(settings: Mapping) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in settings.items())


def describe_plan(plan: Plan, k: int, seeds, runs: int, finished: int, force: bool) -> str:
    """How many subsets, seeds and runs the design needs, and how many of them train now."""
    if plan.design != "shapley":
        how = f"{plan.design} of {k} components"
    elif not plan.orders:
        how = f"exact Shapley values: all 2^{k} = {2 ** k} subsets (within --budget {plan.budget})"
    else:
        how = (f"sampled Shapley values: 2^{k} = {2 ** k} subsets exceed --budget {plan.budget}, so "
               f"{len(plan.orders)} random orders ({len(plan.orders) // 2} antithetic pair(s)) visit {len(plan.subsets)}")
    reuse = "--force: every run trains again" if force else \
        f"{finished} already finished in the store (reused), {runs - finished} to train"
    return (f"design: {how}\n{len(plan.subsets)} subsets x {len(seeds)} seed(s) {list(seeds)} = {runs} runs; {reuse}")


def finished_accuracies(study, configs: Mapping, data) -> dict:
    """Test accuracy of the store's finished run of each config's work (same keys as `configs`), where it has one."""
    if study.name not in tracking.experiment_names():
        return {}
    experiment = tracking.experiment_id(study.name)
    found = {}
    for key, config in configs.items():
        run = tracking.find_finished(experiment, work_key(config, data.fingerprint(**config.split_args())))
        accuracy = None if run is None else run.data.metrics.get("test_accuracy")
        if accuracy is not None:  # a pruned search trial finishes without a test accuracy
            found[key] = accuracy
    return found


# ---------------------------------------------------------------------------------------------
# Measures: per component and training seed, from per-(subset, seed) test accuracies.


def attribute(study, profile, game: Game, plan: Plan, seeds, rows, data, deterministic=False) -> dict:
    """Every measure the store can give: the design's rows, the subsets other designs ran, the ladder's own runs."""
    k = len(game.components)
    # A failed unit (diverged, crashed) measured nothing: its subsets count as missing, never as NaN.
    values = {(frozenset(row["subset"]), row["seed"]): row["test_accuracy"] for row in rows if row["status"] == "finished"}
    missing = {(subset, seed): as_trained(compose(game, subset), profile, seed, deterministic)
               for subset in needed_subsets(k, plan) for seed in seeds if (subset, seed) not in values}
    values.update(finished_accuracies(study, missing, data))
    steps = {(name, seed): as_trained(config, profile, seed, deterministic)
             for name, config in game.steps for seed in seeds}
    ladder = ladder_gains(game, finished_accuracies(study, steps, data), seeds)
    return summarize_measures(study.name, profile.name, game, plan, seeds, measure(k, values, seeds, plan.orders, ladder))


def needed_subsets(k: int, plan: Plan) -> set[frozenset]:
    """The subsets any measure reads: leave-one-out's, add-one-in's, every subset when the budget allows, the plan's."""
    full = frozenset(range(k))
    every = set(stats.subsets(k)) if 2 ** k <= plan.budget else set()
    return ({full, frozenset()} | {full - {i} for i in range(k)} | {frozenset({i}) for i in range(k)}
            | every | set(plan.subsets))


def ladder_gains(game: Game, accuracies: Mapping, seeds):
    """(seeds, k x n): each component's step's gain over the step before it, from the ladder's own runs; or None."""
    names = [name for name, _ in game.steps]
    have = [seed for seed in seeds if names and all((name, seed) in accuracies for name in names)]
    if not have:
        return None
    before = {name: names[i - 1] for i, name in enumerate(names) if i}
    # A step split into several components has one gain: on its first component (0 on the others, shown blank),
    # so the column still adds up to the full gain.
    later = _later_of_step(game)
    return have, np.array([[0.0 if i in later else accuracies[c.step, s] - accuracies[before[c.step], s] for s in have]
                           for i, c in enumerate(game.components)])


def _later_of_step(game: Game) -> set[int]:
    """Indices of the components that share their step with an earlier component."""
    return {i for i, c in enumerate(game.components) if any(o.step == c.step for o in game.components[:i])}


def _over_seeds(values: Mapping, seeds, needed, method):
    """(seeds, method's k x n array) over the seeds for which every needed subset has a value; None if no seed has."""
    have = [seed for seed in seeds if all((frozenset(subset), seed) in values for subset in needed)]
    if not have:
        return None
    return have, np.asarray(method(lambda subset: np.array([values[frozenset(subset), seed] for seed in have])))


def measure(k: int, values: Mapping, seeds, orders=(), ladder=None) -> dict:
    """Per measure (seeds, k x n values), or None where the subsets it needs are not all there for any seed."""
    full, empty = frozenset(range(k)), frozenset()
    known = {subset for subset, _ in values}
    exact = len(known) >= 2 ** k and set(stats.subsets(k)) <= known
    shapley = _over_seeds(values, seeds, stats.subsets(k), lambda v: stats.shapley_exact(k, v)) if exact else None
    sampling_se = None
    if shapley is None and orders:
        exact = False
        visited = stats.subsets_of_orders(orders)
        shapley = _over_seeds(values, seeds, visited, lambda v: stats.shapley_sampled(k, v, orders)[0])
        if shapley is not None:
            # The orders' own sampling error, of the estimate averaged over seeds (the interval is over seeds).
            mean = lambda subset: np.mean([values[frozenset(subset), s] for s in shapley[0]])  # noqa: E731
            sampling_se = stats.shapley_sampled(k, mean, orders)[1]
    return {
        "ladder_gain": ladder,
        "leave_one_out": _over_seeds(values, seeds, [full, *(full - {i} for i in range(k))],
                                     lambda v: stats.leave_one_out(k, v)),
        "add_one_in": _over_seeds(values, seeds, [empty, *(frozenset({i}) for i in range(k))],
                                  lambda v: stats.add_one_in(k, v)),
        "shapley": shapley, "shapley_exact": shapley is not None and exact, "sampling_se": sampling_se,
        "full_gain": _over_seeds(values, seeds, [empty, full], lambda v: (v(full) - v(empty))[None]),
    }


def summarize_measures(study: str, profile: str, game: Game, plan: Plan, seeds, measured: dict) -> dict:
    """The attribution as plain data: per measure and component a summary over seeds, their sum, what is left over."""
    full_gain = measured["full_gain"]
    shared = [c.name for c in game.components if sum(other.step == c.step for other in game.components) > 1]
    return {
        "study": study, "profile": profile, "design": plan.design, "game": game.kind, "seeds": list(seeds),
        "base": game.base_name, "full": game.full_name,
        "components": [{"name": c.name, "step": c.step, "settings": json.loads(json.dumps(dict(c.settings)))}
                       for c in game.components],
        "conflicts": conflicts(game),
        "plan": {"subsets": len(plan.subsets), "budget": plan.budget, "orders": len(plan.orders)},
        "full_gain": None if full_gain is None else {"seeds": full_gain[0], **_summary(full_gain[1][0])},
        "measures": {name: _column(measured[name], full_gain, _later_of_step(game) if name == "ladder_gain" else set(),
                                   measured["sampling_se"] if name == "shapley" else None,
                                   stats.sampling_df(plan.orders) if plan.orders else math.inf)
                     for name in MEASURES},
        "shapley_exact": measured["shapley_exact"],
        # Sampled Shapley values get no verdict: the orders' own error is not in a test over seeds.
        "verdicts": {"leave_one_out": _verdicts(measured["leave_one_out"]),
                     "shapley": _verdicts(measured["shapley"]) if measured["shapley_exact"] else None},
        "sampling_se": None if measured["sampling_se"] is None else measured["sampling_se"].tolist(),
        "order_effect": _order_effect(measured, game, shared),
        "shared_step": shared,  # components whose ladder gain is that of a whole step they share with others
        "importances": dict(game.importances),
    }


def _verdicts(measured) -> list[str] | None:
    """Per component, the ladder's verdict on its values over seeds (each a paired contrast), Holm over components."""
    if measured is None:
        return None
    seeds, per = measured
    return [change.verdict for change in stats.with_verdicts([stats.paired_change(np.zeros(len(seeds)), row)
                                                             for row in per])]


def _summary(values, extra_se: float = 0.0, extra_df: float = math.inf) -> dict:
    return dataclasses.asdict(stats.summarize(values, extra_se, extra_df))


def _column(measured, full_gain, blank=frozenset(), sampling_se=None, sampling_df=math.inf) -> dict | None:
    """One measure over seeds: per component (None for those in `blank`), their sum, the full gain minus the sum.

    `sampling_se`: per component, the sampled Shapley orders' own standard error; every seed uses the same orders,
    so the spread over seeds does not show it, and each interval adds it in (with its `sampling_df`).
    """
    if measured is None:
        return None
    seeds, per = measured
    extra = [0.0] * len(per) if sampling_se is None else [float(se) for se in sampling_se]
    column = {"seeds": seeds, "components": [None if i in blank else _summary(row, extra[i], sampling_df) for i, row in enumerate(per)],
              "sum": _summary(per.sum(axis=0)),
              "left_over": None}
    common = [] if full_gain is None else [seed for seed in seeds if seed in full_gain[0]]
    if common:
        column["left_over"] = _summary([full_gain[1][0][full_gain[0].index(seed)] - per[:, seeds.index(seed)].sum()
                                        for seed in common])
    return column


def _order_effect(measured: dict, game: Game, shared) -> list | None:
    """Per component, ladder gain minus Shapley value over the common seeds: what the ladder's order did to it."""
    ladder, shapley = measured["ladder_gain"], measured["shapley"]
    common = [] if ladder is None or shapley is None else [seed for seed in ladder[0] if seed in shapley[0]]
    if not common:
        return None
    at_ladder, at_shapley = [ladder[0].index(s) for s in common], [shapley[0].index(s) for s in common]
    # A component sharing its step with others has only the whole step's ladder gain: no order effect of its own.
    return [None if c.name in shared else _summary(ladder[1][i, at_ladder] - shapley[1][i, at_shapley])
            for i, c in enumerate(game.components)]

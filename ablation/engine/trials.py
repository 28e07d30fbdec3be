"""The search's engine: Optuna studies, trials as nested MLflow runs, the outcome as a ready-to-run step.

`python -m ablation.search` (the command, in ablation/search.py) parses its arguments and calls
`run_search`; its docstring explains storage, workers, the pruner and what MLflow records.
"""

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path

import optuna
from optuna.trial import TrialState

from ablation import tracking
from ablation.core import interrupt
from ablation.core.config import CONFIG_FIELDS, EPOCH_METRICS, Config, StudyError, split_values, with_values
from ablation.core.profiles import get_profile
from ablation.core.console import Display
from ablation.core.study import SearchParam, SearchSpace
from ablation.data import LazySplits, resolve_data_path
from ablation.engine import optuna_internals
from ablation.engine.units import progress_printer, say_ui, train_in_run, work_key
from ablation.tracking import Kind, Tag

MEDIAN_STARTUP_TRIALS = 3  # complete trials before the median pruner prunes
TPE_STARTUP_TRIALS = 5  # random trials before TPE models the space (Optuna's default 10 is most of a CPU budget)
PARENT_ATTR = "parent_run_id"  # a queued trial's user attr: the MLflow parent run of the search that queued it
NOT_STARTED_ATTR = "not_started"  # a queued trial's user attr: failed untrained, its search's --timeout had passed


class TrialSeededTPE(optuna.samplers.BaseSampler):
    """TPE (multivariate, constant liar for parallel workers) with a fresh seed per trial: hash(seed, number).

    One TPESampler(seed=s) per process would make two workers, or a resumed run, sample the same
    configurations again; seeding per trial number keeps a fresh single-worker search repeatable.
    """
    def __init__(self, seed: int):
        self.seed = seed
        self._tpe = self._for_trial(0)

    def _for_trial(self, number: int):
        digest = hashlib.sha256(f"{self.seed}:{number}".encode()).digest()
        return optuna.samplers.TPESampler(seed=int.from_bytes(digest[:4], "little"),
                                          n_startup_trials=TPE_STARTUP_TRIALS, constant_liar=True)

    def before_trial(self, study, trial):
        self._tpe = self._for_trial(trial.number)
        self._tpe.before_trial(study, trial)

    def infer_relative_search_space(self, study, trial):
        return self._tpe.infer_relative_search_space(study, trial)

    def sample_relative(self, study, trial, search_space):
        return self._tpe.sample_relative(study, trial, search_space)

    def sample_independent(self, study, trial, param_name, param_distribution):
        return self._tpe.sample_independent(study, trial, param_name, param_distribution)

    def after_trial(self, study, trial, state, values):
        self._tpe.after_trial(study, trial, state, values)

    def reseed_rng(self):
        self._tpe.reseed_rng()


PRUNERS = ("median", "hyperband", "none")  # --pruner's choices


def make_pruner(name: str, epochs: int):
    """The pruner for --pruner, sized by the trials' epoch budget."""
    if name == "median":
        # Early epochs of augmented training are noisy: judge from a third of the budget on.
        return optuna.pruners.MedianPruner(n_startup_trials=MEDIAN_STARTUP_TRIALS,
                                           n_warmup_steps=max(1, epochs // 3))
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=max(1, epochs), reduction_factor=3)
    return optuna.pruners.NopPruner()


@dataclass(frozen=True)
class Search:
    """A search resolved for its trials: what every process that runs one needs, as the queue carries it.

    `base` is the base step's config with the --set values and --seed in, the profile not yet applied:
    a trial puts its sampled values in, then the profile, as the ladder does with a step.
    """

    study: str  # the study's name: its MLflow experiment
    optuna_study: str
    space: SearchSpace
    base: Config
    profile: str
    pruner: str  # a --pruner name, or the class name of a pruner object (then it cannot be rebuilt elsewhere)

    def to_dict(self) -> dict:
        space = {**dataclasses.asdict(self.space), "params": [dataclasses.asdict(p) for p in self.space.params]}
        return json.loads(json.dumps({"study": self.study, "optuna_study": self.optuna_study, "space": space,
                                      "base": self.base.to_dict(), "base_hash": self.base.hash(),
                                      "profile": self.profile, "pruner": self.pruner}))

    @classmethod
    def from_dict(cls, data: dict) -> "Search":
        """The search `to_dict` wrote; its base config must hash as planned (else this code's Config differs)."""
        base = Config(**data["base"])
        if base.hash() != data["base_hash"]:
            raise StudyError(f"search {data['optuna_study']!r}: its base config hashes to {base.hash()} here, "
                             f"{data['base_hash']} where it was planned: run the same version of ablation everywhere")
        params = tuple(SearchParam(**{**p, "choices": tuple(p["choices"])}) for p in data["space"]["params"])
        space = SearchSpace(**{**data["space"], "params": params})
        return cls(data["study"], data["optuna_study"], space, base, data["profile"], data["pruner"])

    def trial_config(self, params: dict) -> Config:
        """A trial's config: its sampled values in the base, then the profile."""
        return get_profile(self.profile).apply(with_values(self.base, params))

    def make_pruner(self):
        return make_pruner(self.pruner, get_profile(self.profile).apply(self.base).epochs)


# ---------------------------------------------------------------------------------------------
# The search space and a trial's config.


def check_monitor(space, where: str):
    """The monitored metric must be one training reports every epoch, or pruning would silently stop."""
    if space.monitor not in EPOCH_METRICS:
        raise StudyError(f"{where}: [search] monitor {space.monitor!r} is not a metric training reports; "
                         f"allowed: {', '.join(EPOCH_METRICS)}")


def checked_search(study):
    """The study's search space and its base step's config, or a StudyError saying what is wrong with them."""
    if study.search is None:
        raise StudyError(f"{study.path.name}: no [search] table; add one (see studies/assignment.toml)")
    check_monitor(study.search, study.path.name)
    base = study.step(study.search.base_step).config
    check_space(study.search, base, study.path.name)
    return study.search, base


def check_space(space, base, where: str):
    """Every searched name must still be a field or a knob of the base's model (--set may change the model)."""
    unknown = sorted(p.name for p in space.params if p.name not in CONFIG_FIELDS and p.name not in base.model_args)
    if unknown:
        raise StudyError(f"{where}: [search] params {unknown} are not knobs of model {base.model} that the base "
                         f"step {space.base_step!r} runs; allowed: {sorted(base.model_args)} and the Config fields")


def suggest(trial, space) -> dict:
    """Sample every parameter of the search space for `trial`."""
    params = {}
    for p in space.params:
        if p.type == "int":
            params[p.name] = trial.suggest_int(p.name, int(p.low), int(p.high), log=p.log)
        elif p.type == "float":
            params[p.name] = trial.suggest_float(p.name, float(p.low), float(p.high), log=p.log)
        else:
            params[p.name] = trial.suggest_categorical(p.name, list(p.choices))
    return params


def study_identity(study, space, base, profile) -> dict:
    """What an Optuna study's trials must share; a resumed study must match it."""
    return {
        Tag.STUDY: study.name,
        Tag.BASE_STEP: space.base_step,
        # The whole config, not its hash: a Config field added later (at its default) must not block a resume.
        Tag.BASE_CONFIG: json.loads(json.dumps(profile.apply(base).to_dict())),
        Tag.PROFILE: profile.name,
        Tag.MONITOR: f"{space.monitor} ({space.direction})",
        Tag.SEARCH_SPACE: json.dumps([dataclasses.asdict(p) for p in space.params], sort_keys=True),
    }


def open_study(storage, where: str, name: str, direction: str, identity: dict, sampler, pruner):
    """Create the Optuna study, or load it (resume, or another worker's) after checking it is the same search."""
    study = optuna.create_study(storage=storage, study_name=name, direction=direction, sampler=sampler,
                                pruner=pruner, load_if_exists=True)
    stored = study.user_attrs
    for key, value in identity.items():
        if key not in stored:
            study.set_user_attr(key, value)
            continue
        old, what = stored[key], key.removeprefix(Tag.PREFIX)
        if key == Tag.BASE_CONFIG:
            old = {k: old[k] for k in old.keys() & value.keys() if old[k] != value[k]}
            value = {k: value[k] for k in old}
            what = "base config"
        if old != value:
            raise StudyError(f"Optuna study {name!r} in {where} was made with another {what}: {old!r}, now "
                             f"{value!r}; pass --study-name NEW to start a new study")
    if study.direction.name.lower() != direction:
        raise StudyError(f"Optuna study {name!r} in {where} {study.direction.name.lower()}s, the study file says "
                         f"{direction}; pass --study-name NEW to start a new study")
    return study


def sweep_stale_trials(study) -> list[tuple[int, str]]:
    """Fail RUNNING trials whose worker process on this host is dead, and queue a copy of each (params and
    user attrs; at most `tracking.MAX_RETRIES` times), as Optuna's heartbeat retry does on an RDB storage.

    Returns (trial number, its MLflow run id or "") of each trial this process swept.
    """
    swept = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if not tracking.dead_here(trial.user_attrs.get("worker", "")):
            continue  # another machine's worker, or alive: not ours to judge
        if optuna_internals.fail_running(study, trial):  # else another process swept it first
            optuna_internals.requeue(study, trial, tracking.MAX_RETRIES)
            swept.append((trial.number, trial.user_attrs.get("mlflow_run_id", "")))
    return swept


# ---------------------------------------------------------------------------------------------
# A trial: train the sampled config inside its own nested MLflow run.


class Objective:
    """Optuna objective: one nested MLflow run per trial; returns the best epoch's monitored metric.

    The same in every process that runs a search's trials: the search's own, or a queue worker's.
    """
    def __init__(self, search: Search, data, verbose, display, parent_run_id=None):
        self.search, self.space, self.data = search, search.space, data  # data: a LazySplits
        self.experiment = tracking.experiment_id(search.study)
        self.parent_run_id = parent_run_id  # of the process's own search; a queued trial names its planner's
        self.verbose, self.display, self.out = verbose, display, display.say
        self.calls = 0  # trials this invocation ran

    def __call__(self, trial) -> float:
        self.calls += 1
        trial.set_user_attr("worker", tracking.worker_id())
        tags = {Tag.KIND: Kind.SEARCH_TRIAL, Tag.STUDY: self.search.study,
                Tag.PROFILE: self.search.profile, Tag.OPTUNA_STUDY: self.search.optuna_study,
                Tag.OPTUNA_TRIAL: trial.number, Tag.BASE_STEP: self.space.base_step}
        pruned_at = None
        parent = trial.user_attrs.get(PARENT_ATTR, self.parent_run_id)
        with tracking.run(self.experiment, f"trial-{trial.number:04d}", tags, nested=True, system_metrics=True,
                          parent_run_id=parent):
            trial.set_user_attr("mlflow_run_id", tracking.active_run_id())
            try:
                value, pruned_at = self.run_trial(trial)
            except BaseException as error:
                trial.set_user_attr("error", f"{type(error).__name__}: {error}"[:1000])
                tracking.set_tags({Tag.TRIAL_STATE: "failed"})
                raise  # tracking.run ends the run FAILED (KILLED on Ctrl-C) with the error; Optuna marks FAIL
            tracking.set_tags({Tag.TRIAL_STATE: "complete" if pruned_at is None else "pruned"})
        if pruned_at is not None:
            raise optuna.TrialPruned(f"pruned at epoch {pruned_at}")
        return value

    def run_trial(self, trial) -> tuple[float | None, int | None]:
        """(objective value, None), or (None, epoch) when the pruner stopped the trial."""
        params = suggest(trial, self.space)
        config = self.search.trial_config(params)
        splits = self.data.splits(**config.split_args())
        trial.set_user_attr("epochs", config.epochs)
        tracking.set_tags({Tag.SEARCH_PARAMS: json.dumps(params, sort_keys=True),
                           Tag.CONFIG_HASH: config.hash(), Tag.SEED: config.seed,
                           Tag.WORK_KEY: work_key(config, splits.fingerprint),
                           **tracking.data_tags(splits.fingerprint)})
        tracking.set_tags({Tag.NOTE: f"trial {trial.number}: {format_params(params)}"})
        pruning = PruningHook(trial, self.space.monitor)
        begin, end = progress_printer(config.epochs, self.out) if self.verbose else (None, None)
        if self.verbose:
            self.out(f"trial {trial.number}: {format_params(params)}")
        batches = math.ceil(len(splits.y_train) / config.batch_size)
        try:
            with self.display.epoch_bar(config.epochs, batches) as (bar_begin, bar_batch):
                result = train_in_run(config, splits, on_epoch=(pruning, *filter(None, [end])),
                                      on_epoch_begin=(*filter(None, [begin]), *bar_begin), on_batch=bar_batch,
                                      data_file=resolve_data_path(self.data.path))
        except optuna.TrialPruned:
            trial.set_user_attr("epochs_run", pruning.epochs_done)
            tracking.set_tags({Tag.PRUNED_AT_EPOCH: pruning.epochs_done})
            tracking.log_metrics({"epochs_run": pruning.epochs_done})
            return None, pruning.epochs_done
        history = result.history[self.space.monitor]
        value = max(history) if self.space.direction == "maximize" else min(history)
        trial.set_user_attr("epochs_run", result.epochs_run)
        trial.set_user_attr("test_accuracy", result.test_accuracy)
        tracking.log_metrics({f"best_{self.space.monitor}": value})
        return value, None


class PruningHook:
    """An epoch hook reporting the monitored metric to Optuna and raising TrialPruned when told to.

    A metric missing from the epoch's logs is an error: Optuna's own Keras callback only warns,
    which silently turns pruning off.
    """
    def __init__(self, trial, monitor: str):
        self.trial, self.monitor, self.epochs_done = trial, monitor, 0

    def __call__(self, epoch: int, logs: dict):
        self.epochs_done = epoch
        if self.monitor not in logs:
            raise KeyError(f"pruning monitor {self.monitor!r} is not in the epoch's metrics {sorted(logs)}")
        self.trial.report(float(logs[self.monitor]), step=epoch - 1)
        if self.trial.should_prune():
            raise optuna.TrialPruned(f"pruned at epoch {epoch}")


def trial_printer(monitor: str, display):
    """An Optuna callback printing one line per finished trial, and moving the bar of trials on with the best so far."""
    out = display.say

    def report(study, trial):
        state = trial.state.name.lower()
        epochs = f"{trial.user_attrs.get('epochs_run', '?')}/{trial.user_attrs.get('epochs', '?')} epochs"
        seconds = f"{trial.duration.total_seconds():.0f} s" if trial.duration else ""
        if trial.state == TrialState.FAIL:
            detail = trial.user_attrs.get("error", "failed")
        else:
            detail = f"{monitor} {trial.value:.4f}" if trial.value is not None else ""
            best = _best(study)
            if best is not None:
                detail += f"  (best {best.value:.4f}, trial {best.number})"
        out(f"trial {trial.number:>4} {state:<8} {detail}  {epochs}  {seconds}  {format_params(trial.params)}")
        best = _best(study)
        display.update_overall(advance=1, description=f"trials: best {monitor} {best.value:.4f} (trial {best.number})"
                               if best is not None else None)

    return report


def _best(study):
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    return study.best_trial if complete else None


def format_params(params: dict) -> str:
    return " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items())


# ---------------------------------------------------------------------------------------------
# The search.


def run_search(study, profile, *, trials: int, data_path=None, seed=None, storage=None,
               study_name=None, timeout=None, pruner="median", reports="reports", verbose=False,
               out=None, display=None, run_trials=None) -> dict:
    """Add `trials` trials to the study's Optuna search, each a nested MLflow run under one parent run.

    `pruner` is a --pruner name or an Optuna pruner; `out` prints a line, or `display` (bars on a
    terminal) shows the progress. `run_trials`: how the trials run, `run_trials_here` (default: in this
    process) or the shared queue's (`queue.queue_trials`, same arguments). Returns a summary: the Optuna study name,
    storage, the top trials' rows, counts by state, epochs pruned, and the best step's TOML (or None).
    """
    display = display or Display(live=False, out=out)
    out, run_trials = display.say, run_trials or run_trials_here

    # Phase 1: everything that can be wrong is checked before any data is read or any trial trains.
    space, base = checked_search(study)
    base = base if seed is None else dataclasses.replace(base, seed=seed)
    optuna_name = study_name or default_study_name(study, profile, seed)
    tracking.check_storage(storage)
    pruner_obj = make_pruner(pruner, profile.apply(base).epochs) if isinstance(pruner, str) else pruner
    search = Search(study.name, optuna_name, space, base, profile.name, pruner if isinstance(pruner, str)
                    else type(pruner).__name__)

    # Phase 2: the data, read once: a data problem fails before any storage is written.
    data = LazySplits(data_path, out)
    data.splits(**profile.apply(base).split_args())

    # Phase 3: the Optuna study (created, resumed or joined) and stale work from dead workers.
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage_obj, storage_kind, where = tracking.open_storage(storage)
    optuna_study = open_study(storage_obj, where, optuna_name, space.direction,
                              study_identity(study, space, base, profile), TrialSeededTPE(base.seed), pruner_obj)
    tracking.connect()  # parallel workers may open a fresh SQLite store at the same moment
    experiment = tracking.experiment_id(study.name)
    sweep_stale_work(optuna_study, experiment, out)

    # Phase 4: the trials under one parent run, which other processes' trial runs may name as theirs.
    parent_tags = {Tag.KIND: Kind.SEARCH, Tag.STUDY: study.name, Tag.PROFILE: profile.name,
                   Tag.OPTUNA_STUDY: optuna_name, Tag.OPTUNA_STORAGE_KIND: storage_kind,
                   Tag.OPTUNA_STORAGE: where, Tag.BASE_STEP: space.base_step,
                   Tag.PRUNER: type(pruner_obj).__name__, Tag.SEED: base.seed, Tag.OVERRIDES: study.overrides_json(),
                   Tag.NOTE: f"{study.title}: Optuna study {optuna_name}, {profile.name} profile"}
    with tracking.held_run(experiment, f"search-{optuna_name}", parent_tags) as parent_id:
        say_search(study, profile, optuna_study, trials, where, storage_kind, out)
        out(f"tracking: {tracking.tracking_uri()}  experiment {study.name!r}, parent run {parent_id}")
        say_ui(out, experiment, parent_id, tracking.BY_NAME)
        added = run_trials(optuna_study, storage_obj, search, parent_run_id=parent_id, trials=trials, timeout=timeout,
                           data=data, display=display, verbose=verbose)
        with tracking.resumed(parent_id):
            tracking.log_study_file(study.path)
            summary = record_outcome(study, space, profile, optuna_study, where, reports)
    say_ui(out, experiment, parent_id, tracking.BY_NAME)
    summary.update(optuna_study=optuna_name, storage=where, storage_kind=storage_kind, added=added)
    return summary


def say_search(study, profile, optuna_study, trials: int, where: str, storage_kind: str, out):
    """What the search is about to do, in three lines."""
    space, pruner = study.search, type(optuna_study.pruner).__name__
    out(f"study {study.name!r} ({study.path.name}), profile {profile.name}: {profile.description}")
    if study.overrides:
        out(f"overrides (the base step): {study.overrides_json()}")
    out(f"Optuna study {optuna_study.study_name!r} in {where} ({storage_kind}): {len(optuna_study.trials)} trials so "
        f"far; adding {trials}, {space.direction} {space.monitor}, pruner {pruner}")


def run_trials_here(optuna_study, storage, search: Search, *, parent_run_id: str, trials: int, timeout, data, display,
                    verbose: bool) -> int:
    """The trials in this process, one after another (`optuna.Study.optimize`); how many it ran."""
    objective = Objective(search, data, verbose, display, parent_run_id)
    display.start_overall("trials", trials, "trials")
    optuna_study.optimize(objective, n_trials=trials, timeout=timeout, catch=(Exception,),
                          callbacks=[trial_printer(search.space.monitor, display), lambda *_: interrupt.check()])
    return objective.calls


def default_study_name(study, profile, seed) -> str:
    """<study>-<profile>, with -seed<N> for --seed and -set<hash> for --set values: each a search of its own."""
    changed = hashlib.sha256(study.overrides_json().encode()).hexdigest()[:8]
    return (f"{study.name}-{profile.name}" + ("" if seed is None else f"-seed{seed}")
            + (f"-set{changed}" if study.overrides else ""))


def sweep_stale_work(optuna_study, experiment: str, out):
    """Trials and runs a dead worker left RUNNING: failed (and queued again) and KILLED."""
    for number, run_id in sweep_stale_trials(optuna_study):
        out(f"trial {number} was left RUNNING by a dead worker: marked FAIL and queued again")
        if run_id:
            tracking.set_tags({Tag.TRIAL_STATE: "failed", Tag.ERROR: "worker died"}, run_id=run_id)
    for run_id in tracking.sweep_stale_runs(experiment):
        out(f"marked stale run {run_id} KILLED (its process had died)")


def record_outcome(study, space, profile, optuna_study, where: str, reports: str) -> dict:
    """Summary, top-trials table and best step, logged to the parent run; the best step also as a file."""
    summary = summarize(optuna_study, space)
    summary["best_step"] = best_step_toml(study, space, optuna_study, where, profile)
    tracking.log_table(summary["rows"], "search.json")
    tracking.log_metrics({k: summary[k] for k in ("complete", "pruned", "failed", "epochs_saved")})
    if summary["best_step"] is not None:
        tracking.log_metrics({f"best_{space.monitor}": optuna_study.best_value})
        tracking.log_text(summary["best_step"], "best_step.toml")
        path = Path(reports) / study.name / f"best_step-{optuna_study.study_name}.toml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(summary["best_step"])
        summary["best_step_path"] = str(path)
    return summary


def summarize(optuna_study, space) -> dict:
    """Rows for every finished trial, best first (complete ones, then pruned, then failed); counts."""
    order = {TrialState.COMPLETE: 0, TrialState.PRUNED: 1, TrialState.FAIL: 2}
    sign = -1 if space.direction == "maximize" else 1
    finished = [t for t in optuna_study.get_trials(deepcopy=False)
                if t.state in order and not t.user_attrs.get(NOT_STARTED_ATTR)]
    finished.sort(key=lambda t: (order[t.state], sign * t.value if t.value is not None else 0.0, t.number))
    rows = [{"number": t.number, "value": t.value, "state": t.state.name.lower(), "params": t.params,
             "epochs_run": t.user_attrs.get("epochs_run"), "epochs": t.user_attrs.get("epochs"),
             "test_accuracy": t.user_attrs.get("test_accuracy"), "error": t.user_attrs.get("error"),
             "worker": t.user_attrs.get("worker")}
            for t in finished]
    count = lambda state: sum(t.state == state for t in finished)  # noqa: E731
    pruned = [t for t in finished if t.state == TrialState.PRUNED]
    planned = sum(t.user_attrs.get("epochs", 0) for t in finished if t.state != TrialState.FAIL)
    saved = sum(t.user_attrs.get("epochs", 0) - t.user_attrs.get("epochs_run", 0) for t in pruned)
    return {"rows": rows, "complete": count(TrialState.COMPLETE), "pruned": len(pruned),
            "failed": count(TrialState.FAIL), "epochs_saved": saved, "epochs_planned": planned}


def best_step_toml(study, space, optuna_study, where: str, profile) -> str | None:
    """The best trial as a study step: its searched values over `from_step` = the base step."""
    best = _best(optuna_study)
    if best is None:
        return None
    fields, model_args = split_values(study.step(space.base_step).config.model, best.params)
    test = best.user_attrs.get("test_accuracy")
    lines = [
        f"# Best trial of Optuna study {optuna_study.study_name!r} ({where}): trial {best.number},",
        f"# best-epoch {space.monitor} {best.value:.4f}" + (f", test accuracy {test:.4f}" if test is not None else "")
        + f", {profile.name} profile. Append to {study.path} and run the ladder.",
        "[[steps]]",
        'name = "search_best"',
        f"description = {_toml(f'best of Optuna study {optuna_study.study_name} (trial {best.number})')}",
        f"from_step = {_toml(space.base_step)}",
    ]
    lines += [f"{k} = {_toml(v)}" for k, v in fields.items()]
    if model_args:
        lines.append("model_args = { " + ", ".join(f"{k} = {_toml(v)}" for k, v in model_args.items()) + " }")
    return "\n".join(lines) + "\n"


def _toml(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    return json.dumps(value)  # a TOML basic string is a JSON string



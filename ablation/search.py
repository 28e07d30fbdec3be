"""Optuna search over a study's `[search]` space; every trial is a nested MLflow run under one parent.

    python -m ablation.search --profile smoke --trials 6       # seconds per trial: a first look
    python -m ablation.search --trials 20                      # the quick profile (default)
    python -m ablation.search --storage sqlite:///search.db    # any Optuna storage URL, or a journal file

A trial is the search's base step (`[search] base_step`, by default the ladder's last step) with the
sampled values put in: the model's knobs (stage depths, dropout_rate) into `model_args`, every other
name into the Config field of that name. The profile is applied last, as for the ladder's steps, so a
search space is written at the recipe's scale like the rest of the study file. The objective is the
best epoch's `[search] monitor` (val_accuracy by default: the validation set; the test set never
chooses), and the same metric, per epoch, feeds the pruner. The monitor is checked against the metrics
training reports before anything trains: Optuna's Keras callback only warns on a missing metric,
which silently disables pruning.

Storage. By default an Optuna journal file, `optuna.journal` beside the MLflow store (./mlruns/, or
the folder of a sqlite:/// MLFLOW_TRACKING_URI); the Optuna study is named `<study>-<profile>`
(`-seed<N>` added with --seed), so running the same command again resumes it. Why a journal file and
not SQLite, tested here (2 shared cores, Optuna 5.0, 2-4 processes running the same script): in 1 of
22 fresh starts on a new SQLite file, 3 of the 4 processes crashed creating the schema (alembic_version
UNIQUE / "table already exists"); on an existing file no write failed, but 4 x 40 no-op trials took 36 s
(54 s with heartbeats) against 4-7 s on a journal file, which never failed, fresh or not. Optuna's FAQ
says the same: SQLite is not for parallel workers, JournalFileBackend is, on one machine. (The MLflow
SQLite store has that creation race every time: `tracking.connect` serializes it.) `--storage`
also takes any Optuna URL (sqlite:///..., postgresql://..., mysql://...: RDB storages, for several
machines) or a path ending in .journal or .log. optuna-dashboard opens both:
`optuna-dashboard mlruns/optuna.journal`.

Workers. Several processes may run the same command on one storage at once: they share the study.
`--trials N` is what THIS invocation adds, so a second invocation (or a second worker) adds N more
trials to the same study rather than starting over; k workers with --trials N add k*N. The TPE
sampler is seeded per trial from (seed, trial number): a fresh single-worker search repeats its
random draws, while resumed invocations and concurrent workers, whose trial numbers differ, never
replay each other's draws (one TPESampler(seed=s) per process would make two workers, or a resumed
run, sample the same configurations again).

Pruner: MedianPruner by default, after 3 complete trials and a warm-up of a third of the epochs. With
the tens of trials a CPU affords, Hyperband splits them over its brackets (3 for 15 epochs at eta=3)
and each rung compares only a handful; the median pruner compares every trial with all complete ones
at the same epoch from the 4th trial on, and its decision reads plainly in a report ("below the
median at epoch e"). `--pruner hyperband` (min 1 epoch, eta 3) is there for larger budgets; `none`
turns pruning off.

Stale trials. Each trial records its worker (`host:pid`, trial user attr `worker`). At start, RUNNING
trials whose worker on this host is dead are marked FAIL and queued once more with the same params
(user attr `retry_of`). Journal storage has no heartbeat, so this sweep is its only guard; RDB
storages also get Optuna's heartbeat (60 s, stale after 180 s) with RetryHeartbeatStaleTrialCallback
(one retry), which also covers workers on other machines.

MLflow: one parent run per invocation (`ablation.kind` = search, with the Optuna study and storage),
one nested run per trial named `trial-0007`: the whole resolved config as params, per-epoch metrics,
final metrics and artifacts as the ladder logs them, tags `ablation.optuna_study`,
`ablation.optuna_trial`, and `ablation.trial_state` = complete | pruned | failed. A pruned trial's run
ends FINISHED (pruning is a normal outcome and its epochs are valid metrics; KILLED stays meaning an
interrupted or dead process) with `ablation.pruned_at_epoch`; a failed one ends FAILED with
`ablation.error`, and the search goes on.

At the end: a table of the top trials, and the best trial as a ready-to-run study step (a
`[[steps]] name = "search_best"` TOML snippet with the searched values over `from_step` = the base
step), printed, logged as the parent run's `best_step.toml` and written to
`reports/<study>/best_step-<optuna study>.toml`.
"""

import argparse
import dataclasses
import hashlib
import json
import os
import socket
import sys
import time
import warnings
from pathlib import Path

from ablation.ladder import add_common_arguments, progress_printer, work_key

DEFAULT_TRIALS = 10
DEFAULT_REPORTS = "reports"
STATE_TAG = "ablation.trial_state"  # complete | pruned | failed
HEARTBEAT_SECONDS, GRACE_SECONDS = 60, 180  # RDB storages only
MEDIAN_STARTUP_TRIALS = 3  # complete trials before the median pruner prunes
TPE_STARTUP_TRIALS = 5  # random trials before TPE models the space (Optuna's default 10 is most of a CPU budget)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m ablation.search",
        description="Optuna search over a study's [search] space on CIFAR-10; each trial is a nested MLflow run.",
    )
    add_common_arguments(parser)
    parser.add_argument("--trials", type=int, default=DEFAULT_TRIALS,
                        help=f"trials this invocation adds to the study (default {DEFAULT_TRIALS}); "
                             "each worker on the same storage adds its own")
    parser.add_argument("--storage", default=None,
                        help="Optuna storage: a URL (sqlite:///search.db, postgresql://...) or a journal file "
                             "(*.journal, *.log); default: optuna.journal beside the MLflow store (./mlruns)")
    parser.add_argument("--study-name", default=None,
                        help="Optuna study name (default: <study>-<profile>, -seed<N> added with --seed)")
    parser.add_argument("--timeout", type=float, default=None,
                        help="seconds after which no new trial starts (the running one finishes)")
    parser.add_argument("--pruner", default="median", choices=("median", "hyperband", "none"),
                        help="median (default): prune below the median of complete trials at the same epoch; "
                             "hyperband: for larger budgets; none")
    parser.add_argument("--top", type=int, default=10, help="rows of the final table (default 10)")
    parser.add_argument("--reports", default=DEFAULT_REPORTS,
                        help=f"folder for best_step-<study>.toml (default {DEFAULT_REPORTS}/<study>/)")
    parser.add_argument("--verbose", action="store_true", help="also print one line per epoch")
    args = parser.parse_args(argv)
    if args.trials < 1:
        parser.error("--trials must be at least 1")
    return args


# ---------------------------------------------------------------------------------------------
# Storage, sampler, pruner.


def open_storage(spec: str | None):
    """(storage, kind, location) for --storage: a journal file by default, beside the MLflow store."""
    import optuna
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    from ablation import tracking
    from ablation.config import StudyError

    if spec is not None and "://" in spec:
        from sqlalchemy.engine import make_url

        kind = spec.split(":", 1)[0].split("+")[0]
        engine_kwargs = {"connect_args": {"timeout": 60}} if kind == "sqlite" else {}  # wait out a busy writer
        with warnings.catch_warnings():  # heartbeats and the retry callback are marked experimental
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            storage = optuna.storages.RDBStorage(
                spec, engine_kwargs=engine_kwargs, heartbeat_interval=HEARTBEAT_SECONDS, grace_period=GRACE_SECONDS,
                heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=1))
        return storage, kind, make_url(spec).render_as_string(hide_password=True)
    if spec is None:
        path = tracking.store_folder() / "optuna.journal"
    elif spec.endswith((".journal", ".log")):
        path = Path(spec)
    else:
        raise StudyError(f"--storage {spec!r}: expected an Optuna storage URL (sqlite:///search.db, "
                         "postgresql://user@host/db) or a journal file path ending in .journal or .log")
    path.parent.mkdir(parents=True, exist_ok=True)
    return JournalStorage(JournalFileBackend(str(path))), "journal", str(path.resolve())


def make_sampler(seed: int):
    """TPE (multivariate, constant liar for parallel workers) whose random stream is seeded per trial."""
    import optuna

    class TrialSeededTPE(optuna.samplers.BaseSampler):
        """A fresh TPESampler(seed=hash(seed, trial number)) for each trial; see the module docstring."""

        def __init__(self):
            self._tpe = self._for_trial(0)

        def _for_trial(self, number: int):
            digest = hashlib.sha256(f"{seed}:{number}".encode()).digest()
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

    return TrialSeededTPE()


def make_pruner(name: str, epochs: int):
    """The pruner for --pruner, sized by the trials' epoch budget."""
    import optuna

    if name == "median":
        # Early epochs of augmented training are noisy: judge from a third of the budget on.
        return optuna.pruners.MedianPruner(n_startup_trials=MEDIAN_STARTUP_TRIALS,
                                           n_warmup_steps=max(1, epochs // 3))
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=max(1, epochs), reduction_factor=3)
    return optuna.pruners.NopPruner()


# ---------------------------------------------------------------------------------------------
# The search space and a trial's config.


def check_monitor(space, where: str):
    """The monitored metric must be one training reports every epoch, or pruning would silently stop."""
    from ablation.config import StudyError
    from ablation.train import HISTORY_KEYS

    if space.monitor not in HISTORY_KEYS:
        raise StudyError(f"{where}: [search] monitor {space.monitor!r} is not a metric training reports; "
                         f"allowed: {', '.join(HISTORY_KEYS)}")


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


def apply_params(base, params: dict):
    """The base config with sampled values: model knobs into model_args, other names as Config fields."""
    from ablation.models import model_defaults

    knobs = model_defaults(base.model)
    model_args = {**base.model_args, **{k: v for k, v in params.items() if k in knobs}}
    fields = {k: v for k, v in params.items() if k not in knobs}
    return dataclasses.replace(base, **fields, model_args=model_args)


def study_identity(study, space, base, profile) -> dict:
    """What an Optuna study's trials must share; a resumed study must match it."""
    return {
        "ablation.study": study.name,
        "ablation.base_step": space.base_step,
        # The whole config, not its hash: a Config field added later (at its default) must not block a resume.
        "ablation.base_config": json.loads(json.dumps(profile.apply(base).to_dict())),
        "ablation.profile": profile.name,
        "ablation.monitor": f"{space.monitor} ({space.direction})",
        "ablation.search_space": json.dumps([dataclasses.asdict(p) for p in space.params], sort_keys=True),
    }


def open_study(storage, where: str, name: str, direction: str, identity: dict, sampler, pruner):
    """Create the Optuna study, or load it (resume, or another worker's) after checking it is the same search."""
    import optuna

    from ablation.config import StudyError

    study = optuna.create_study(storage=storage, study_name=name, direction=direction, sampler=sampler,
                                pruner=pruner, load_if_exists=True)
    stored = study.user_attrs
    for key, value in identity.items():
        if key not in stored:
            study.set_user_attr(key, value)
            continue
        old, what = stored[key], key.split(".", 1)[1]
        if key == "ablation.base_config":
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
    """Fail RUNNING trials whose worker process on this host is dead, and queue each once more.

    Returns (trial number, its MLflow run id or "") of each trial swept.
    """
    import optuna
    from optuna.trial import TrialState

    from ablation import tracking

    swept = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        host, _, pid = trial.user_attrs.get("worker", "").rpartition(":")
        if host != socket.gethostname() or not pid.isdigit() or tracking.process_alive(int(pid)):
            continue  # another machine's worker, or alive: not ours to judge
        try:
            study.tell(trial.number, state=TrialState.FAIL)
        except optuna.exceptions.UpdateFinishedTrialError:
            continue  # another worker swept it first
        if "retry_of" not in trial.user_attrs:
            study.enqueue_trial(trial.params, user_attrs={"retry_of": trial.number})
        swept.append((trial.number, trial.user_attrs.get("mlflow_run_id", "")))
    return swept


def worker_id() -> str:
    """This process, as recorded on its trials: host:pid."""
    return f"{socket.gethostname()}:{os.getpid()}"

# ---------------------------------------------------------------------------------------------
# A trial: train the sampled config inside its own nested MLflow run.


class Objective:
    """Optuna objective: one nested MLflow run per trial; returns the best epoch's monitored metric."""

    def __init__(self, *, study, space, base, profile, data, experiment, optuna_name, verbose, out):
        self.study, self.space, self.base, self.profile = study, space, base, profile
        self.data, self.experiment, self.optuna_name = data, experiment, optuna_name  # data: a LazySplits
        self.verbose, self.out = verbose, out
        self.calls = 0  # trials this invocation ran

    def __call__(self, trial) -> float:
        import optuna

        from ablation import tracking

        self.calls += 1
        trial.set_user_attr("worker", worker_id())
        tags = {"ablation.kind": "search_trial", "ablation.study": self.study.name,
                "ablation.profile": self.profile.name, "ablation.optuna_study": self.optuna_name,
                "ablation.optuna_trial": trial.number, "ablation.base_step": self.space.base_step}
        pruned_at = None
        with tracking.run(self.experiment, f"trial-{trial.number:04d}", tags, nested=True):
            trial.set_user_attr("mlflow_run_id", tracking.active_run_id())
            try:
                value, pruned_at = self.run_trial(trial)
            except BaseException as error:
                trial.set_user_attr("error", f"{type(error).__name__}: {error}"[:1000])
                tracking.set_tags({STATE_TAG: "failed"})
                raise  # tracking.run ends the run FAILED (KILLED on Ctrl-C) with the error; Optuna marks FAIL
            tracking.set_tags({STATE_TAG: "complete" if pruned_at is None else "pruned"})
        if pruned_at is not None:
            raise optuna.TrialPruned(f"pruned at epoch {pruned_at}")
        return value

    def run_trial(self, trial) -> tuple[float | None, int | None]:
        """(objective value, None), or (None, epoch) when the pruner stopped the trial."""
        import optuna

        from ablation import tracking
        from ablation.train import train

        params = suggest(trial, self.space)
        config = self.profile.apply(apply_params(self.base, params))
        splits = self.data.splits(**config.split_args())
        trial.set_user_attr("epochs", config.epochs)
        tracking.set_tags({"ablation.search_params": json.dumps(params, sort_keys=True),
                           "ablation.config_hash": config.hash(), "ablation.seed": config.seed,
                           "ablation.work_key": work_key(config, splits.fingerprint),
                           **tracking.data_tags(splits.fingerprint)})
        tracking.log_config(config, {})
        if self.verbose:
            self.out(f"trial {trial.number}: {_format_params(params)}")
        pruning = pruning_callback(trial, self.space.monitor)
        callbacks = [tracking.epoch_logger(), pruning]
        if self.verbose:
            callbacks.append(progress_printer(config.epochs, self.out))
        try:
            result = train(config, splits, callbacks=callbacks)
        except optuna.TrialPruned:
            trial.set_user_attr("epochs_run", pruning.epochs_done)
            tracking.set_tags({"ablation.pruned_at_epoch": pruning.epochs_done})
            tracking.log_metrics({"epochs_run": pruning.epochs_done})
            return None, pruning.epochs_done
        tracking.log_result(result, splits.class_names)
        history = result.history[self.space.monitor]
        value = max(history) if self.space.direction == "maximize" else min(history)
        trial.set_user_attr("epochs_run", result.epochs_run)
        trial.set_user_attr("test_accuracy", result.test_accuracy)
        tracking.log_metrics({f"best_{self.space.monitor}": value})
        return value, None


def pruning_callback(trial, monitor: str):
    """optuna_integration's KerasPruningCallback that counts epochs and raises, not warns, on a missing metric."""
    from optuna_integration import KerasPruningCallback

    class StrictPruning(KerasPruningCallback):
        epochs_done = 0

        def on_epoch_end(self, epoch, logs=None):
            self.epochs_done = epoch + 1
            if monitor not in (logs or {}):
                raise KeyError(f"pruning monitor {monitor!r} is not in the epoch's metrics {sorted(logs or {})}")
            super().on_epoch_end(epoch, logs)

    return StrictPruning(trial, monitor)


def trial_printer(monitor: str, out):
    """An Optuna callback printing one line per finished trial."""
    from optuna.trial import TrialState

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
        out(f"trial {trial.number:>4} {state:<8} {detail}  {epochs}  {seconds}  {_format_params(trial.params)}")

    return report


def _best(study):
    from optuna.trial import TrialState

    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    return study.best_trial if complete else None


def _format_params(params: dict) -> str:
    return " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items())


# ---------------------------------------------------------------------------------------------
# The search.


def run_search(study, profile, *, trials=DEFAULT_TRIALS, data_path=None, seed=None, storage=None,
               study_name=None, timeout=None, pruner="median", reports=DEFAULT_REPORTS, verbose=False,
               out=None) -> dict:
    """Add `trials` trials to the study's Optuna search, each a nested MLflow run under one parent run.

    `pruner` is a --pruner name or an Optuna pruner. Returns a summary: the Optuna study name,
    storage, the top trials' rows, counts by state, epochs pruned, and the best step's TOML (or None).
    """
    import optuna

    from ablation import tracking
    from ablation.config import StudyError
    from ablation.data import LazySplits

    out = out or (lambda text: print(text, flush=True))  # flushed: progress shows through `| tee` and in logs

    # Phase 1: everything that can be wrong is checked before any data is read or any trial trains.
    if study.search is None:
        raise StudyError(f"{study.path.name}: no [search] table; add one (see studies/assignment.toml)")
    space = study.search
    check_monitor(space, study.path.name)
    base = study.step(space.base_step).config
    base = base if seed is None else dataclasses.replace(base, seed=seed)
    optuna_name = study_name or f"{study.name}-{profile.name}" + ("" if seed is None else f"-seed{seed}")

    # Phase 2: the Optuna study (created, resumed or joined) and stale work from dead workers.
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage_obj, storage_kind, where = open_storage(storage)
    epochs = profile.apply(base).epochs
    pruner_obj = make_pruner(pruner, epochs) if isinstance(pruner, str) else pruner
    optuna_study = open_study(storage_obj, where, optuna_name, space.direction,
                              study_identity(study, space, base, profile), make_sampler(base.seed), pruner_obj)
    tracking.connect()  # parallel workers may open a fresh SQLite store at the same moment
    experiment = tracking.experiment_id(study.name)
    for number, run_id in sweep_stale_trials(optuna_study):
        out(f"trial {number} was left RUNNING by a dead worker: marked FAIL and queued again")
        if run_id:
            tracking.set_tags({STATE_TAG: "failed", "ablation.error": "worker died"}, run_id=run_id)
    for run_id in tracking.sweep_stale_runs(experiment):
        out(f"marked stale run {run_id} KILLED (its process had died)")

    # Phase 3: data once, then the trials under one parent run.
    data = LazySplits(data_path, out)
    data.splits(**profile.apply(base).split_args())  # read now: a data problem fails before the first trial
    parent_tags = {"ablation.kind": "search", "ablation.study": study.name, "ablation.profile": profile.name,
                   "ablation.optuna_study": optuna_name, "ablation.optuna_storage_kind": storage_kind,
                   "ablation.optuna_storage": where, "ablation.base_step": space.base_step,
                   "ablation.pruner": type(pruner_obj).__name__, "ablation.seed": base.seed}
    objective = Objective(study=study, space=space, base=base, profile=profile, data=data,
                          experiment=experiment, optuna_name=optuna_name, verbose=verbose, out=out)
    with tracking.stop_on_sigterm(), tracking.run(experiment, f"search-{optuna_name}", parent_tags) as parent:
        tracking.log_study_file(study.path)
        out(f"study {study.name!r} ({study.path.name}), profile {profile.name}: {profile.description}")
        out(f"Optuna study {optuna_name!r} in {where} ({storage_kind}): {len(optuna_study.trials)} trials so far; "
            f"adding {trials}, {space.direction} {space.monitor}, pruner {type(pruner_obj).__name__}")
        out(f"tracking: {tracking.tracking_uri()}  experiment {study.name!r}, parent run {parent.info.run_id}")
        optuna_study.optimize(objective, n_trials=trials, timeout=timeout, catch=(Exception,),
                              callbacks=[trial_printer(space.monitor, out)])
        summary = record_outcome(study, space, profile, optuna_study, where, reports)
    summary.update(optuna_study=optuna_name, storage=where, storage_kind=storage_kind, added=objective.calls)
    return summary


def record_outcome(study, space, profile, optuna_study, where: str, reports: str) -> dict:
    """Summary, top-trials table and best step, logged to the parent run; the best step also as a file."""
    from ablation import tracking

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
    from optuna.trial import TrialState

    order = {TrialState.COMPLETE: 0, TrialState.PRUNED: 1, TrialState.FAIL: 2}
    sign = -1 if space.direction == "maximize" else 1
    finished = [t for t in optuna_study.get_trials(deepcopy=False) if t.state in order]
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


def format_table(summary: dict, monitor: str, top: int = 10) -> str:
    """The top trials as a text table, and a line on pruning."""
    header = f"{'trial':>6}  {'state':<9}{monitor:>13}{'test acc':>10}{'epochs':>8}  params"
    lines = [header, "-" * len(header)]
    for row in summary["rows"][:top]:
        value = "" if row["value"] is None else f"{row['value']:.4f}"
        test = "" if row["test_accuracy"] is None else f"{row['test_accuracy']:.4f}"
        epochs = f"{row['epochs_run'] if row['epochs_run'] is not None else '-'}/{row['epochs'] or '-'}"
        detail = _format_params(row["params"]) + (f"  [{row['error']}]" if row["error"] else "")
        lines.append(f"{row['number']:>6}  {row['state']:<9}{value:>13}{test:>10}{epochs:>8}  {detail}")
    lines.append(f"{summary['complete']} complete, {summary['pruned']} pruned, {summary['failed']} failed; "
                 f"pruning saved {summary['epochs_saved']} of {summary['epochs_planned']} planned epochs")
    return "\n".join(lines)


def best_step_toml(study, space, optuna_study, where: str, profile) -> str | None:
    """The best trial as a study step: its searched values over `from_step` = the base step."""
    from ablation.models import model_defaults

    best = _best(optuna_study)
    if best is None:
        return None
    knobs = model_defaults(study.step(space.base_step).config.model)
    fields = {k: v for k, v in best.params.items() if k not in knobs}
    model_args = {k: v for k, v in best.params.items() if k in knobs}
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


def main(argv=None) -> int:
    args = parse_args(argv)
    from ablation.config import StudyError, get_profile, load_study
    from ablation.data import DataError

    try:
        study = load_study(args.study)
        profile = get_profile(args.profile)
        started = time.perf_counter()
        summary = run_search(study, profile, trials=args.trials, data_path=args.data, seed=args.seed,
                             storage=args.storage, study_name=args.study_name, timeout=args.timeout,
                             pruner=args.pruner, reports=args.reports, verbose=args.verbose)
    except (StudyError, DataError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted: finished trials are kept; the running one is marked failed (Optuna) and KILLED "
              "(MLflow); run the same command again to go on", file=sys.stderr)
        return 130
    print(f"\n{study.title}: Optuna study {summary['optuna_study']!r} ({profile.name} profile), "
          f"{summary['added']} trial(s) added in {time.perf_counter() - started:.0f} s\n")
    print(format_table(summary, study.search.monitor, args.top))
    if summary["best_step"] is not None:
        print(f"\nbest trial as a study step ({summary['best_step_path']}):\n\n{summary['best_step']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

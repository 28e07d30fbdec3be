"""The shared work queue: every training a command needs is a trial of an Optuna study that workers anywhere take.

A planner (`python -m ablation.ladder --workers`, `python -m ablation.search --workers`) puts its
units in an Optuna storage; workers (`python -m ablation.worker` on any machine, and the planner
itself) take them, train them under the planner's MLflow parent run and tell Optuna the outcome.
The storage is the queue and its only arbiter, through Optuna's own mechanisms:

- A unit is a WAITING trial (`Study.enqueue_trial`). A unit of the runner (a ladder step and seed,
  a design's subset) carries its spec in its user attrs (config, run name, tags, data digest,
  experiment, parent run): a worker needs no study file. A search's queue carries the search resolved
  (`trials.Search`: the base config with the planner's --set and --seed in, the space, profile and
  pruner), and each planned trial its parent run and --timeout deadline: TPE samples its params when
  a worker runs it (with the constant liar, so concurrent trials spread out), through the same
  objective as a search in one process.
- A worker takes one with the storage's conditional update WAITING -> RUNNING, the step with which
  `Study.ask` pops Optuna's queue (a row lock in an RDB storage, the journal's file lock): two
  workers never get the same trial. It does not call `ask`, which makes a fresh trial when the
  queue is empty: taking nothing leaves nothing behind. (Optuna's private names for this, and for
  heartbeats and retries, are in `optuna_internals`.)
- While a unit trains, Optuna's heartbeat thread keeps its trial alive (RDB storages). Every idle
  process of the queue runs `fail_stale_trials`: a trial whose heartbeat stopped for the grace
  period is failed and a copy queued by RetryHeartbeatStaleTrialCallback (same params and user
  attrs). The copy still names the dead attempt's MLflow run, which its new worker marks KILLED
  before training the unit in a new run (a live worker whose trial was judged dead, starved of
  CPU past the grace period, finds its trial finished when it reports, and marks its own run KILLED). A journal file (one machine) has no heartbeat: there a
  trial whose worker on this host is dead is failed and queued the same way.
- A unit runs through `units.run_unit`, the executor of a ladder in one process (reuse by content,
  the wait for a live run of the same work, checkpoints, tags, system metrics), nested under the
  planner's parent run. Its checkpoint, saved after every epoch beside the worker's store, lets a
  retry taken on the same machine go on from the dead attempt's last epoch, its run given the
  epochs already trained; on another machine it trains again.
- A command's queue is named from its work (its parent's name and a digest of the units' work keys), so
  a second planner of the same work finds the study and joins it instead of queueing the work
  again. Creating a study name is atomic, and only the planner that created it enqueues the units
  (then sets `planned`): enqueueing is idempotent by work key without a lock of our own.

Heartbeat interval and grace period: $ABLATION_HEARTBEAT and $ABLATION_GRACE (`tracking.heartbeat_settings`).
"""

import functools
import hashlib
import json
import time
from dataclasses import dataclass
from typing import Callable

import optuna
from optuna.trial import TrialState

from ablation import tracking
from ablation.core import interrupt
from ablation.core.config import Config, StudyError
from ablation.core.console import Display
from ablation.data import DataError, LazySplits
from ablation.engine import optuna_internals
from ablation.engine.trials import (NOT_STARTED_ATTR, PARENT_ATTR, PRUNERS, Objective, Search, TrialSeededTPE,
                                    sweep_stale_trials)
from ablation.engine.units import (Unit, UnitFailed, predicted_correctly, run_ladder, run_tags, run_unit, unit_row,
                                   work_key)
from ablation.models.imported import ModelError
from ablation.tracking import Tag

# Optuna attributes of a queue. Study: what it is and what its units need.
QUEUE_ATTR = "queue"  # "units" | "search": set last, once a worker has what it needs to run the units
OWNER_ATTR = "planner"  # host:pid of the planner that enqueues (only it does)
PLANNED_ATTR = "planned"  # set once every unit is enqueued
DATA_ATTR = "data"  # the fingerprints of the planner's data splits: a worker's data must match them
SEARCH_ATTR = "search"  # a search resolved for its trials (`trials.Search.to_dict`): no file to read again
# Trial: the unit and its current attempt.
UNIT_ATTR = "unit"  # a unit's spec (`unit_spec`)
# PARENT_ATTR (the search's): a planned search trial's parent run (a unit's is in its spec)
DEADLINE_ATTR = "deadline"  # a planned search trial's: no process starts it after this time (--timeout)
RUN_ATTR = "mlflow_run_id"  # the MLflow run of the trial's latest attempt
POLL_SECONDS = 2.0  # how often an idle worker looks for work again


class WorkError(RuntimeError):
    """Planned work that cannot be done: the planner that created its queue died while queueing it."""


class NotStarted(RuntimeError):
    """A queued search trial taken after its search's --timeout: failed untrained, left out of the outcome."""


@dataclass
class Queue:
    """An opened queue study and how this process runs one of its trials."""

    study: optuna.Study
    execute: Callable  # trial -> objective value; raises optuna.TrialPruned for a pruned trial


# ---------------------------------------------------------------------------------------------
# Units as plain data: what travels through the storage.


def unit_spec(unit: Unit, fingerprint: dict, experiment_name: str, parent_run_id: str, force: bool) -> dict:
    """Everything a worker needs to rebuild and run a unit, as JSON-ready data."""
    return {"name": unit.name, "config": unit.config.to_dict(), "config_hash": unit.config.hash(),
            "tags": json.loads(json.dumps(unit.tags)), "label": unit.label, "row": unit.row,
            "work_key": work_key(unit.config, fingerprint), "data_digest": fingerprint["digest"],
            "experiment": experiment_name, "parent_run_id": parent_run_id, "force": force, "log_model": unit.log_model}


def unit_from_spec(spec: dict) -> Unit:
    """The unit a spec describes; its config must hash as planned (else this code's Config differs)."""
    config = Config(**spec["config"])
    if config.hash() != spec["config_hash"]:
        raise StudyError(f"unit {spec['name']!r}: its config hashes to {config.hash()} here, {spec['config_hash']} "
                         "where it was planned: run the same version of ablation on every machine")
    return Unit(spec["name"], config, spec["tags"], spec["label"], spec["row"], spec["log_model"])


def queue_name(study_name: str, parent_name: str, specs: list[dict]) -> str:
    """The queue of a command's units, named from their content: the same work gets the same queue."""
    content = "\n".join(sorted(f"{spec['work_key']} {spec['name']}" for spec in specs))
    return f"units-{parent_name}-{hashlib.sha256(content.encode()).hexdigest()[:12]}"


def split_args_of(fingerprint: dict) -> dict:
    """The split arguments a data fingerprint was made with (`Config.split_args` names)."""
    return {"data": fingerprint.get("dataset", "cifar10"), "image_size": fingerprint.get("image_size"),
            "validation_split": fingerprint["validation_split"], "seed": fingerprint["seed"],
            "train_subset": fingerprint["subset_train"], "test_subset": fingerprint["subset_test"]}


def check_data(expected: list[dict], data: LazySplits, where: str):
    """This machine's data must give the planner's splits, digest for digest."""
    for planned in expected:
        found = data.fingerprint(**split_args_of(planned))
        if found["digest"] != planned["digest"]:
            raise DataError(f"{where}: the data here ({found['source']}) gives digest {found['digest']} for split "
                            f"{split_args_of(planned)}, the planner's ({planned['source']}) gave {planned['digest']}: "
                            "point --data or $ABLATION_DATA at the same data as the planner")


# ---------------------------------------------------------------------------------------------
# Planning.


def plan_units(storage, name: str, specs: list[dict], fingerprints: list[dict], say) -> optuna.Study:
    """Create the queue and enqueue every unit once, or join the queue another planner of this work made."""
    try:
        study = optuna.create_study(storage=storage, study_name=name, direction="maximize",
                                    sampler=optuna.samplers.RandomSampler())
    except optuna.exceptions.DuplicatedStudyError:
        study = optuna.load_study(study_name=name, storage=storage, sampler=optuna.samplers.RandomSampler())
        say(f"queue {name!r} exists: joining the planner that made it")
        wait_until_planned(study, say)
        return study
    study.set_user_attr(OWNER_ATTR, tracking.worker_id())
    study.set_user_attr(DATA_ATTR, fingerprints)
    study.set_user_attr(QUEUE_ATTR, "units")
    unique = {spec["work_key"]: spec for spec in specs}  # two units of one work are trained once
    for spec in unique.values():
        study.enqueue_trial({}, user_attrs={UNIT_ATTR: spec})
    study.set_user_attr(PLANNED_ATTR, len(unique))
    return study


def wait_until_planned(study: optuna.Study, say):
    """Wait for the planner that created the queue to finish enqueueing (it takes a moment)."""
    told = False
    while PLANNED_ATTR not in study.user_attrs:
        planner = study.user_attrs.get(OWNER_ATTR, "")
        if tracking.dead_here(planner):
            raise WorkError(f"queue {study.study_name!r}: its planner ({planner}) died before it had queued every "
                            f"unit; delete it (optuna delete-study --study-name {study.study_name} --storage URL) "
                            "and plan again")
        if not told:
            say(f"waiting for planner {planner} to finish queueing the units")
            told = True
        time.sleep(POLL_SECONDS / 4)


# ---------------------------------------------------------------------------------------------
# Working: take a unit, run it with a heartbeat, tell the outcome; until no work is left.


def work(storage, data: LazySplits, say, names=None, idle_seconds: float = 0.0, train: bool = True) -> int:
    """Run units of the queues in `storage` (those in `names`, else all) until none is waiting or running
    and `idle_seconds` have passed so; returns how many this process ran. `train=False` (a planner with
    --plan-only) takes none: it waits for the workers to do them, releasing dead workers' units meanwhile."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    opened: dict[str, Queue] = {}
    ran, idle_since = 0, time.monotonic()
    pending_states = (TrialState.RUNNING,) if train else (TrialState.RUNNING, TrialState.WAITING)
    while True:
        interrupt.check()  # a stop asked for by a signal, between units
        took, pending = False, False
        for queue in open_queues(storage, names, opened, data, say):
            release_dead(queue.study)
            trial = optuna_internals.take_waiting(queue.study) if train else None
            if trial is not None:
                run_taken(queue, trial, say)
                ran, took = ran + 1, True
                break
            # A unit running elsewhere may still lose its worker: wait, to take its retry.
            pending = pending or bool(queue.study.get_trials(deepcopy=False, states=pending_states))
        if took or pending:
            idle_since = time.monotonic()
            if took:
                continue
        elif time.monotonic() - idle_since >= idle_seconds:
            return ran
        time.sleep(POLL_SECONDS)


def open_queues(storage, names, opened: dict, data: LazySplits, say) -> list[Queue]:
    """The queue studies of the storage (those in `names`, else all), each opened once."""
    queues = []
    for summary in storage.get_all_studies():
        kind = summary.user_attrs.get(QUEUE_ATTR)
        if kind is None or (names and summary.study_name not in names):
            continue
        if summary.study_name not in opened:
            check_data(summary.user_attrs.get(DATA_ATTR, []), data, f"queue {summary.study_name!r}")
            opener = open_units_queue if kind == "units" else open_search_queue
            try:
                opened[summary.study_name] = opener(storage, summary, data, say)
            except ModelError as error:  # a model's module, by import path, that this machine lacks
                raise StudyError(f"queue {summary.study_name!r}: {error}") from None
        queues.append(opened[summary.study_name])
    return queues


def open_units_queue(storage, summary, data: LazySplits, say) -> Queue:
    study = optuna.load_study(study_name=summary.study_name, storage=storage, sampler=optuna.samplers.RandomSampler())
    for trial in study.get_trials(deepcopy=False, states=(TrialState.WAITING, TrialState.RUNNING)):
        Config(**trial.user_attrs[UNIT_ATTR]["config"])  # its model found here (an import path: its module)
    return Queue(study, lambda trial: train_unit(trial, data, say))


def open_search_queue(storage, summary, data: LazySplits, say) -> Queue:
    """A search's study with its sampler and pruner, and the search's own objective over the resolved search
    the queue carries (the base config with the planner's --set and --seed in)."""
    spec = summary.user_attrs[SEARCH_ATTR]
    if "base" not in spec:
        raise StudyError(f"queue {summary.study_name!r} was planned by another version of ablation: run the same "
                         "version on every machine")
    search = Search.from_dict(spec)
    study = optuna.load_study(study_name=summary.study_name, storage=storage,
                              sampler=TrialSeededTPE(search.base.seed), pruner=search.make_pruner())
    objective = Objective(search, data, verbose=False, display=Display(live=False, out=say))

    def execute(trial: optuna.Trial) -> float:
        deadline = trial.user_attrs.get(DEADLINE_ATTR)
        if deadline is not None and time.time() > deadline:
            trial.set_user_attr(NOT_STARTED_ATTR, True)
            raise NotStarted("not started: its search's --timeout had passed")
        return objective(trial)

    return Queue(study, execute)


def release_dead(study: optuna.Study):
    """Fail the trials of dead workers and queue each again (up to `tracking.MAX_RETRIES` times).

    RDB storages: Optuna's heartbeat judges, on every machine. A journal file has none: a trial
    whose worker was on this host and is gone is released the same way (the search's own sweep).
    """
    optuna_internals.fail_stale(study)
    if not optuna_internals.has_heartbeat(study):
        sweep_stale_trials(study)


def run_taken(queue: Queue, trial: optuna.Trial, say) -> TrialState | None:
    """Run a taken trial with Optuna's heartbeat and tell its outcome; None when another attempt replaced it."""
    study = queue.study
    trial.set_user_attr("worker", tracking.worker_id())
    earlier = trial.user_attrs.get(RUN_ATTR)  # a retried trial names the run of the attempt it replaces
    if earlier and tracking.supersede(earlier, f"its trial was judged dead and retried as trial {trial.number}"):
        say(f"marked run {earlier} KILLED: trial {trial.number} retries the unit its dead worker left")
    state, value, error = attempt(queue, trial)
    try:
        if error:
            trial.set_user_attr("error", error)
            say(f"trial {trial.number} of {study.study_name!r} failed: {error}")
        if state is not None:
            study.tell(trial, value if state == TrialState.COMPLETE else None, state=state)
    except optuna.exceptions.UpdateFinishedTrialError:
        state = None
    if state is None:
        # Its heartbeat was judged stopped (a starved or cut-off worker) and the unit queued again: the
        # retry's run is the unit's record, so this attempt's run must not stay FINISHED beside it.
        if trial.user_attrs.get(RUN_ATTR):
            tracking.supersede(trial.user_attrs[RUN_ATTR], "its trial was judged dead (heartbeat) and retried")
        say(f"trial {trial.number} of {study.study_name!r} was judged dead meanwhile and retried: this attempt is dropped")
        return None
    say(f"trial {trial.number} of {study.study_name!r}: {state.name.lower()}")
    return state


def attempt(queue: Queue, trial: optuna.Trial) -> tuple[TrialState | None, float | None, str]:
    """(state, value, error) of running the trial under Optuna's heartbeat; state None when its trial was
    finished by another process meanwhile. Interrupted, the trial fails and goes back to the queue."""
    with optuna_internals.heartbeat(queue.study, trial):
        try:
            return TrialState.COMPLETE, queue.execute(trial), ""
        except optuna.TrialPruned:
            return TrialState.PRUNED, None, ""
        except optuna.exceptions.UpdateFinishedTrialError:
            return None, None, ""
        except KeyboardInterrupt:  # a stop request: the unit goes back in its place, not counted as a retry
            queue.study.tell(trial, state=TrialState.FAIL)
            optuna_internals.requeue_stopped(queue.study, trial)
            raise
        except Exception as error:  # noqa: BLE001 - a unit that fails is recorded, and the worker goes on
            return TrialState.FAIL, None, f"{type(error).__name__}: {error}"[:1000]


def train_unit(trial: optuna.Trial, data: LazySplits, say) -> float:
    """A unit's trial: `units.run_unit` (reuse finished work, else train it, checkpointed beside this machine's
    store) under the planner's parent run; the trial names the unit's run as soon as it exists."""
    spec = trial.user_attrs[UNIT_ATTR]
    unit = unit_from_spec(spec)
    say(f"\n{unit.label or unit.name}  (trial {trial.number} of queue {trial.study.study_name!r})")
    tags = run_tags(unit, data.fingerprint(**unit.config.split_args()))
    row = run_unit(tracking.experiment_id(spec["experiment"]), unit, tags, data, spec["force"], say,
                   parent_run_id=spec["parent_run_id"],
                   on_run=lambda run_id: trial.set_user_attr(RUN_ATTR, run_id))
    if row["status"] == "failed":  # its run ended FAILED saying why; the trial fails with the same words
        raise UnitFailed(row["error"])
    return row["test_accuracy"]


# ---------------------------------------------------------------------------------------------
# The planners: put the work in the queue, work on it, wait for all of it, summarize.


def run_ladder_shared(study, profile, steps, data_path=None, force=False, storage=None, say=print,
                      log_models="final", plan_only=False, **verdicts) -> list[dict]:
    """`units.run_ladder` (the same parent, units and summary) through the shared queue at `storage`: plan its
    units (or join the same plan), work on them (with `plan_only` only wait for the workers); its rows."""
    queue = functools.partial(run_units_shared, storage=storage, plan_only=plan_only)
    return run_ladder(study, profile, steps, data_path, force, say, log_models=log_models, queue=queue,
                      **verdicts)  # rope, alpha


def run_units_shared(study, parent_name, parent_tags, units, data_path=None, force=False, say=print, summarize=None,
                     storage=None, plan_only=False, keep_checkpoints=False, stop_on_failure=False) -> list[dict]:
    """`units.run_units` through the shared queue (same arguments, and the queue's `storage`): the units are
    queued (or the same plan joined), this process works on them beside the workers (with `plan_only` it
    only waits for them), and returns their rows once every one is done. Each worker removes a unit's
    checkpoint as the unit ends, and every unit is done whatever another's outcome: `keep_checkpoints` and
    `stop_on_failure` are for one process."""
    if keep_checkpoints or stop_on_failure:
        raise StudyError("--keep-checkpoints and --stop-on-failure are for a ladder in one process, not with --workers")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    data = LazySplits(data_path, say)
    fingerprints = [data.fingerprint(**unit.config.split_args()) for unit in units]
    storage_obj, kind, where = tracking.open_storage(storage)
    experiment = tracking.experiment_id(study.name)
    parent_tags = {**parent_tags, Tag.OPTUNA_STORAGE: where, Tag.OPTUNA_STORAGE_KIND: kind}
    with tracking.held_run(experiment, parent_name, parent_tags) as parent_id:
        specs = [unit_spec(unit, fingerprint, study.name, parent_id, force)
                 for unit, fingerprint in zip(units, fingerprints, strict=True)]
        name = queue_name(study.name, parent_name, specs) + (f"-{parent_id[:8]}" if force else "")
        say(f"tracking: {tracking.tracking_uri()}  experiment {study.name!r}, parent run {parent_id}")
        queue = plan_units(storage_obj, name, specs, list({f["digest"]: f for f in fingerprints}.values()), say)
        say(f"queue {name!r} in {where} ({kind}): {len(specs)} units; workers join with "
            f"python -m ablation.worker --storage URL")
        ran = work(storage_obj, data, say, names=[name], train=not plan_only)
        rows = queue_rows(queue, units, fingerprints)
        say(f"\nall {len(rows)} units of queue {name!r} are done ({ran} run by this process)")
        with tracking.resumed(parent_id):
            tracking.log_study_file(study.path)
            tracking.log_table([{k: v for k, v in row.items() if k != "correct"} for row in rows], "units.json")
            if summarize is not None:
                tracking.log_dict(summarize(rows), "summary.json")
    return rows


def queue_rows(queue: optuna.Study, units: list[Unit], fingerprints: list[dict]) -> list[dict]:
    """Each unit's row, read from the run its complete trial names; a unit whose trials failed is a failed row."""
    trials = queue.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.FAIL))
    done = {t.user_attrs[UNIT_ATTR]["work_key"]: t for t in trials if t.state == TrialState.COMPLETE}
    errors = {t.user_attrs[UNIT_ATTR]["work_key"]: t.user_attrs.get("error", "its worker died") for t in trials
              if t.state == TrialState.FAIL}
    rows = []
    for unit, fingerprint in zip(units, fingerprints, strict=True):
        key = work_key(unit.config, fingerprint)
        if key not in done:
            rows.append(unit_row(unit, key, {}, None, reused=False, error=errors.get(key, "not run")))
            continue
        run = tracking.get_run(done[key].user_attrs[RUN_ATTR])
        rows.append(unit_row(unit, key, run.data.metrics, predicted_correctly(run.info.run_id),
                             reused=Tag.REUSED_FROM in run.data.tags))
    return rows


def queue_trials(optuna_study: optuna.Study, storage, search: Search, *, parent_run_id: str, trials: int,
                 timeout, data: LazySplits, display, verbose: bool, plan_only: bool = False) -> int:
    """`trials.run_trials_here` through the shared queue (same arguments): the search, resolved, goes into its
    Optuna study with `trials` planned trials; this process works on them beside the workers (with `plan_only`
    it waits for them) until all are done. Returns how many of them started before `timeout` seconds."""
    if search.pruner not in PRUNERS:
        raise StudyError(f"a queued search takes its pruner by name ({', '.join(PRUNERS)}), not "
                         f"{search.pruner}: its workers build it again")
    say, deadline = display.say, None if timeout is None else time.time() + timeout
    fingerprint = data.fingerprint(**search.trial_config({}).split_args())
    optuna_study.set_user_attr(SEARCH_ATTR, search.to_dict())
    optuna_study.set_user_attr(DATA_ATTR, [fingerprint])
    optuna_study.set_user_attr(QUEUE_ATTR, "search")
    for _ in range(trials):
        optuna_study.enqueue_trial({}, user_attrs={PARENT_ATTR: parent_run_id, DEADLINE_ATTR: deadline})
    optuna_study.set_user_attr(PLANNED_ATTR, trials)  # by the latest planner of the study
    say(f"{trials} trial(s) queued; workers join with python -m ablation.worker --storage URL"
        + (" (--plan-only: this process trains none)" if plan_only else ""))
    work(storage, data, say, names=[search.optuna_study], train=not plan_only)
    mine = optuna_study.get_trials(deepcopy=False)
    return trials - sum(t.user_attrs.get(PARENT_ATTR) == parent_run_id and bool(t.user_attrs.get(NOT_STARTED_ATTR))
                        for t in mine)

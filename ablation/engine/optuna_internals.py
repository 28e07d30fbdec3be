"""Every use of Optuna's private API, behind one door: taking a queued trial, failing and retrying one, heartbeats.

Optuna 5 has no public call for "move a WAITING trial to RUNNING for me, or give me nothing"
(`Study.ask` makes a fresh trial when its queue is empty), none to fail a trial only if it is still
running (`Study.tell` reads, then writes), and keeps its heartbeat thread private. The functions here
use `Study._storage`, `Study._study_id`, `FrozenTrial._trial_id`, `Trial._trial_id` and
`optuna.storages._heartbeat` as Optuna 5 has them; tests/test_optuna_internals.py holds them to that
contract against the installed Optuna, and pyproject.toml allows the major version tested (optuna<6).
"""

import warnings

import optuna
from optuna.storages._heartbeat import get_heartbeat_thread, is_heartbeat_enabled
from optuna.trial import FrozenTrial, TrialState


def take_waiting(study: optuna.Study) -> optuna.Trial | None:
    """A WAITING trial, now RUNNING for this caller only; None when none is waiting (and nothing is created).

    `Study._pop_waiting_trial_id` without its fallback of creating a fresh trial: the storage's
    conditional update WAITING -> RUNNING (a row lock in an RDB storage, the journal's file lock).
    """
    storage = study._storage
    waiting_trials = storage.get_all_trials(study._study_id, deepcopy=False, states=(TrialState.WAITING,))
    # A queued-again copy keeps its place: it goes before the units queued after the one it copies.
    for waiting in sorted(waiting_trials, key=lambda t: (t.system_attrs.get("failed_trial", t.number), t.number)):
        try:
            if storage.set_trial_state_values(waiting._trial_id, state=TrialState.RUNNING):
                return optuna.Trial(study, waiting._trial_id)
        except optuna.exceptions.UpdateFinishedTrialError:
            continue  # another worker took and finished it meanwhile
    return None


def fail_running(study: optuna.Study, trial: FrozenTrial | optuna.Trial) -> bool:
    """Mark a running trial FAIL; False when another process finished it first (only one caller wins)."""
    try:
        return bool(study._storage.set_trial_state_values(trial._trial_id, state=TrialState.FAIL))
    except optuna.exceptions.UpdateFinishedTrialError:
        return False


def requeue(study: optuna.Study, trial: FrozenTrial | optuna.Trial, max_retry: int):
    """Queue a copy of a failed trial (its params, user attrs and retry history), as Optuna's heartbeat
    retry does, unless it was retried `max_retry` times already."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        retry = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=max_retry)
        retry(study, study._storage.get_trial(trial._trial_id))


def requeue_stopped(study: optuna.Study, trial: FrozenTrial | optuna.Trial):
    """Queue a copy of a trial its worker was asked to stop (a budget, Ctrl-C): as `requeue` does, in the
    original's place, but not counted as a retry, so a unit stopped any number of times is never given up."""
    frozen = study._storage.get_trial(trial._trial_id)
    study.add_trial(optuna.create_trial(
        state=TrialState.WAITING, params=frozen.params, distributions=frozen.distributions,
        user_attrs=frozen.user_attrs,
        system_attrs={**frozen.system_attrs, "failed_trial": frozen.system_attrs.get("failed_trial", frozen.number)}))


def fail_stale(study: optuna.Study):
    """Optuna's own judgement (RDB storages): fail the trials whose heartbeat stopped, and retry them as the
    storage's callback says."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)


def has_heartbeat(study: optuna.Study) -> bool:
    """Whether the study's storage keeps heartbeats (an RDB storage made with `heartbeat_interval`)."""
    return is_heartbeat_enabled(study._storage)


def heartbeat(study: optuna.Study, trial: optuna.Trial):
    """A context manager that beats for `trial` while it runs (nothing on a storage without heartbeats)."""
    return get_heartbeat_thread(trial._trial_id, study._storage)

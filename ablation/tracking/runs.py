"""Runs' lifecycle: opening, holding, resuming and ending them; which process owns one; finding finished work."""

import contextlib
import os
import socket
import subprocess
import tempfile
from pathlib import Path

import mlflow
import psutil

import ablation
from ablation.tracking.record import has_logged_model
from ablation.tracking.store import connect, store_folder
from ablation.tracking.tags import Tag


def code_version() -> str:
    """Package version and git commit (with +dirty) of the code that ran."""
    root = Path(ablation.__file__).resolve().parents[1]
    try:
        commit = subprocess.run(["git", "describe", "--always", "--dirty=+dirty"], cwd=root,
                                capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    return f"{ablation.__version__}" + (f"@{commit}" if commit else "")


def process_tags() -> dict[str, str]:
    """Who runs this: lets a later sweep tell a live run from one whose process died."""
    return {Tag.HOST: socket.gethostname(), Tag.PID: str(os.getpid()), Tag.CODE_VERSION: code_version()}


def sweep_stale_runs(experiment: str) -> list[str]:
    """Mark KILLED the RUNNING runs whose process on this host no longer exists (SIGKILL, power loss)."""
    client = connect()
    stale = []
    for run in client.search_runs([experiment], "attributes.status = 'RUNNING'", max_results=5000):
        pid = local_pid(run.data.tags)
        if pid is not None and not process_alive(pid):
            client.set_tag(run.info.run_id, Tag.ERROR, "process died without closing the run")
            client.set_terminated(run.info.run_id, "KILLED")
            stale.append(run.info.run_id)
    return stale


def live_run_of(experiment: str, work_key: str):
    """A RUNNING run doing this work in another live process of this host, or None.

    Runs of other hosts are not judged: a plain command cannot tell a live one from a dead one there
    (the shared queue's heartbeats can, and hand each unit to one worker).
    """
    client = connect()
    query = f"tags.`{Tag.WORK_KEY}` = '{work_key}' and attributes.status = 'RUNNING'"
    for run in client.search_runs([experiment], query, max_results=100):
        pid = local_pid(run.data.tags)
        if pid is not None and pid != os.getpid() and process_alive(pid):
            return run
    return None


def local_pid(tags: dict) -> int | None:
    """The pid of the process that ran a run, when it ran on this host (see `process_tags`); else None."""
    return _pid_here(tags.get(Tag.HOST, ""), tags.get(Tag.PID, ""))


def _pid_here(host: str, pid: str) -> int | None:
    """`pid` as a number when `host` is this host and the pid is readable; else None."""
    return int(pid) if host == socket.gethostname() and pid.isdigit() else None


def worker_id() -> str:
    """This process, as recorded on the trials it runs and the queues it plans: host:pid."""
    return f"{socket.gethostname()}:{os.getpid()}"


def dead_here(worker: str) -> bool:
    """Whether `worker` (as `worker_id` writes it) was a process of this host that is gone; another
    host's process, or an unreadable value, is not ours to judge (False)."""
    host, _, pid = worker.rpartition(":")
    pid = _pid_here(host, pid)
    return pid is not None and not process_alive(pid)


def process_alive(pid: int) -> bool:
    """Whether a process of this host with that pid exists (on every OS: no signal is sent)."""
    return psutil.pid_exists(pid)


@contextlib.contextmanager
def run(experiment: str, name: str, tags: dict, nested: bool = False, resume: str | None = None,
        system_metrics: bool = False, parent_run_id: str | None = None):
    """An MLflow run that always ends: FINISHED, KILLED on Ctrl-C/SIGTERM, FAILED with the error.

    `resume`: the id of an earlier, unfinished run of the same work, set RUNNING again and continued.
    `parent_run_id` nests a new run under a run of another process (a worker's unit under its planner's parent).
    `system_metrics`: sample CPU, memory (and GPU) while it runs, if MLflow's switch is on
    (`MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING`: the commands turn it on unless --no-system-metrics).
    """
    tags = {**{k: str(v) for k, v in tags.items()}, **process_tags()}
    sampling = None if system_metrics else False  # None: as MLflow's switch says
    if resume is None:
        active = mlflow.start_run(experiment_id=experiment, run_name=name, nested=nested, parent_run_id=parent_run_id,
                                  tags=tags, log_system_metrics=sampling)
    else:
        active = mlflow.start_run(run_id=resume, nested=nested, tags=tags, log_system_metrics=sampling)
        if Tag.ERROR in active.data.tags:  # why it stopped last time is no longer true
            connect().delete_tag(resume, Tag.ERROR)
    try:
        yield active
    except KeyboardInterrupt:
        mlflow.set_tag(Tag.ERROR, "interrupted")
        mlflow.end_run("KILLED")
        raise
    except BaseException as error:
        mlflow.set_tag(Tag.ERROR, f"{type(error).__name__}: {error}"[:5000])
        mlflow.end_run("FAILED")
        raise
    else:
        mlflow.end_run("FINISHED")


@contextlib.contextmanager
def held_run(experiment: str, name: str, tags: dict):
    """A parent run for other processes' runs, kept off this process's active-run stack; yields its id.

    MLflow nests a new run under the active one only, so a planner whose parent were active could
    not train a unit planned by another planner. Ends as `run` does: FINISHED, KILLED, FAILED.
    """
    client = connect()
    tags = {**{k: str(v) for k, v in tags.items()}, **process_tags()}
    run_id = client.create_run(experiment, run_name=name, tags=tags).info.run_id
    try:
        yield run_id
    except KeyboardInterrupt:
        client.set_tag(run_id, Tag.ERROR, "interrupted")
        client.set_terminated(run_id, "KILLED")
        raise
    except BaseException as error:
        client.set_tag(run_id, Tag.ERROR, f"{type(error).__name__}: {error}"[:5000])
        client.set_terminated(run_id, "FAILED")
        raise
    else:
        client.set_terminated(run_id, "FINISHED")


@contextlib.contextmanager
def resumed(run_id: str):
    """Make a held run the active one for a while (to log its summary with the `log_*` functions)."""
    connect()
    mlflow.start_run(run_id=run_id)
    try:
        yield
    finally:
        mlflow.end_run()  # FINISHED; an error propagating to `held_run` ends it FAILED or KILLED after


def get_run(run_id: str):
    """A run by id (params, metrics, tags, status)."""
    return connect().get_run(run_id)


def supersede(run_id: str, reason: str) -> bool:
    """Mark KILLED the run of an attempt that another attempt replaces (its worker died, or was judged
    dead), whatever state it ended in; whether it was not KILLED already."""
    client = connect()
    if client.get_run(run_id).info.status == "KILLED":
        return False
    client.set_tag(run_id, Tag.ERROR, reason)
    client.set_terminated(run_id, "KILLED")
    return True


def find_finished(experiment: str, work_key: str):
    """The newest FINISHED run that did exactly this work, or None."""
    client = connect()
    found = client.search_runs(
        [experiment],
        f"tags.`{Tag.WORK_KEY}` = '{work_key}' and attributes.status = 'FINISHED'",
        order_by=["attributes.start_time DESC"], max_results=1,
    )
    return found[0] if found else None


RESULT_TAGS = (Tag.STOPPED_EARLY,)  # tags that describe a run's result, so a copy of the result keeps them


def copy_run(source, experiment: str, name: str, tags: dict, parent_run_id: str | None = None):
    """A nested run that repeats a finished one (params, metrics with their history, artifacts).

    Its tags are the new unit's, a link to the source and the result's own (RESULT_TAGS): none of the
    source's other tags, which describe what the source was run for, not what this run is.
    """
    client = connect()
    result = {k: source.data.tags[k] for k in RESULT_TAGS if k in source.data.tags}
    with run(experiment, name, {**tags, **result, Tag.REUSED_FROM: source.info.run_id}, nested=True,
             parent_run_id=parent_run_id):
        mlflow.log_params(source.data.params)
        run_id = mlflow.active_run().info.run_id
        metrics = []
        for key in source.data.metrics:
            metrics.extend(client.get_metric_history(source.info.run_id, key))
        for start in range(0, len(metrics), 1000):
            client.log_batch(run_id, metrics=metrics[start:start + 1000])
        # The same datasets, and the source's logged model (if any) as this run's output too.
        if source.inputs and source.inputs.dataset_inputs:
            client.log_inputs(run_id, datasets=source.inputs.dataset_inputs)
        if has_logged_model(source):
            client.log_outputs(run_id, models=source.outputs.model_outputs)
        with tempfile.TemporaryDirectory() as folder:
            local = client.download_artifacts(source.info.run_id, "", folder)
            mlflow.log_artifacts(local)
        return client.get_run(run_id)


def find_interrupted(experiment: str, tags: dict):
    """The newest KILLED run carrying all of `tags` (e.g. a parent with this plan key), or None."""
    client = connect()
    query = " and ".join([f"tags.`{k}` = '{v}'" for k, v in tags.items()] + ["attributes.status = 'KILLED'"])
    found = client.search_runs([experiment], query, order_by=["attributes.start_time DESC"], max_results=1)
    return found[0] if found else None


def child_runs(experiment: str, parent_run_id: str) -> dict:
    """The runs nested under a parent, by run name (the newest of a name wins)."""
    client = connect()
    found = client.search_runs([experiment], f"tags.`mlflow.parentRunId` = '{parent_run_id}'",
                               order_by=["attributes.start_time ASC"], max_results=5000)
    return {r.data.tags.get("mlflow.runName", ""): r for r in found}


def logged_epochs(run_id: str) -> int:
    """How many epochs a run has logged (its last `loss` step; 0 for none)."""
    return max((m.step for m in connect().get_metric_history(run_id, "loss")), default=0)


def checkpoint_folder(work: str) -> Path:
    """Where a unit of work keeps its training checkpoints: with the store, keyed by the work, so a re-run finds them."""
    return store_folder() / "checkpoints" / work

"""Writing to runs: the config, each epoch, the result, the datasets, the model, tags, tables and files."""

import importlib.metadata
import json
import tempfile
from pathlib import Path

import mlflow
import mlflow.data
from mlflow.data.code_dataset_source import CodeDatasetSource
from mlflow.data.sources import HTTPDatasetSource, LocalArtifactDatasetSource
from mlflow.entities import Metric, Param
from mlflow.models import infer_signature

from ablation.tracking.store import connect
from ablation.tracking.tags import Tag


KERAS_CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"  # what Keras downloads
KERAS_URLS = {"cifar10": KERAS_CIFAR10_URL, "cifar100": "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
              "mnist": "https://storage.googleapis.com/tensorflow/tf-keras-datasets/mnist.npz",
              "fashion_mnist": "https://storage.googleapis.com/tensorflow/tf-keras-datasets/"}  # by the config's data

def log_config(config, extra_tags: dict):
    """Params (the whole resolved config, flat) and the config as a JSON artifact."""
    params = {k: _param(v) for k, v in config.params().items()}
    mlflow.log_params(params)
    mlflow.set_tags({k: str(v) for k, v in extra_tags.items()})
    mlflow.log_dict(config.to_dict(), "config.json")


def _param(value) -> str:
    return json.dumps(value) if isinstance(value, (list, tuple, dict)) else str(value)


def data_tags(fingerprint: dict) -> dict[str, str]:
    """The data fingerprint as tags: source, sizes, subsets, seed, digest."""
    return {Tag.DATA_PREFIX + k: str(v) for k, v in fingerprint.items()}


def log_epoch(epoch: int, logs: dict):
    """One epoch's metrics in one call, the epoch (from 1) as the step: an epoch hook of `train`."""
    values = {k: float(v) for k, v in logs.items() if isinstance(v, (int, float))}
    mlflow.log_metrics(values, step=epoch)


def log_result(result, class_names):
    """Final metrics, the per-epoch history as CSV and the test-set predictions."""
    mlflow.log_metrics({k: float(v) for k, v in result.metrics().items()})
    mlflow.set_tag(Tag.STOPPED_EARLY, str(result.stopped_early))
    with tempfile.TemporaryDirectory() as folder:
        history = Path(folder) / "history.csv"
        keys = [k for k, v in result.history.items() if v]
        rows = ["epoch," + ",".join(keys)]
        for i in range(result.epochs_run):
            rows.append(",".join([str(i + 1)] + [repr(result.history[k][i]) for k in keys]))
        history.write_text("\n".join(rows) + "\n")
        mlflow.log_artifact(str(history))
    mlflow.log_dict({"class_names": list(class_names), "labels": result.test_labels.tolist(),
                     "predictions": result.test_predictions.tolist()}, "test_predictions.json")


def dataset_source(data: str, data_file: Path | None):
    """Where the images of the config's `data` come from, as an MLflow dataset source."""
    if ":" in data:  # a loader package.module:function: its code makes the arrays, whatever --data says
        return CodeDatasetSource({"loader": data})
    if data_file is not None:
        return LocalArtifactDatasetSource(data_file.resolve().as_uri())
    return HTTPDatasetSource(KERAS_URLS[data])


def log_datasets(splits, data_file: Path | None):
    """The images a run trained, validated and was tested on, as MLflow dataset inputs.

    Named by part, with the split's fingerprint digest (runs on the same images group together) and
    their source: a loader's import path, the data file or folder, or the URL Keras downloads from.
    """
    fingerprint = splits.fingerprint
    source = dataset_source(fingerprint.get("dataset", "cifar10"), data_file)
    parts = (("train", splits.x_train, splits.y_train, "training"),
             ("validation", splits.x_val, splits.y_val, "validation"),
             ("test", splits.x_test, splits.y_test, "evaluation"))
    for part, images, labels, context in parts:
        name = f"{fingerprint.get('dataset', 'cifar10')}-{part}"  # cifar10-train, images-test, mnist-validation
        dataset = mlflow.data.from_numpy(images, targets=labels, source=source, name=name,
                                         digest=fingerprint["digest"])
        try:
            mlflow.log_input(dataset, context=context)
        except mlflow.exceptions.MlflowException as error:
            # SQLite: "UNIQUE constraint failed"; PostgreSQL: "duplicate key value violates unique constraint".
            if "unique constraint" not in str(error).lower():
                raise
            # Another worker inserted the same dataset (experiment, name, digest) between MLflow's look-up
            # and its insert: the row exists now, and a second call links it.
            mlflow.log_input(dataset, context=context)


def log_keras_model(network, sample_inputs, metadata: dict) -> str:
    """The trained network as the active run's MLflow logged model (Keras format); returns its models:/ URI.

    `mlflow.keras.load_model(uri)` reloads it with only MLflow and Keras installed (the runner saves it
    with Keras' own layers). Requirements are pinned from the installed packages: MLflow's
    own inference would import the model again in a subprocess.
    """
    import mlflow.keras  # imports TensorFlow: only once a network has been trained, so it is loaded already

    signature = infer_signature(sample_inputs, network.predict(sample_inputs, verbose=0))
    requirements = [f"{name}=={importlib.metadata.version(name)}" for name in ("keras", "tensorflow", "numpy")]
    info = mlflow.keras.log_model(network, name="model", signature=signature, pip_requirements=requirements,
                                  metadata=metadata)
    return info.model_uri


def has_logged_model(run) -> bool:
    """Whether a run logged (or took over) a trained model."""
    return bool(run.outputs and run.outputs.model_outputs)


def log_study_file(path: Path):
    """Keep the study file with the results it produced."""
    mlflow.log_artifact(str(path))


def log_dict(data: dict, name: str):
    """A JSON artifact of the active run."""
    mlflow.log_dict(data, name)


def log_table(rows: list[dict], name: str):
    """A summary table (list of rows) as a JSON artifact of the active run."""
    mlflow.log_dict({"rows": rows}, name)


def write_run(experiment: str, name: str, *, tags: dict, params: dict, metrics: list[tuple[str, float, int]],
              parent_run_id: str | None = None, status: str = "FINISHED") -> str:
    """A whole run written at once, not from a live process (the benchmark fills a store so)."""
    client = connect()
    tags = {**{k: str(v) for k, v in tags.items()}, "mlflow.runName": name,
            **({"mlflow.parentRunId": parent_run_id} if parent_run_id else {})}
    run_id = client.create_run(experiment, run_name=name, tags=tags).info.run_id
    stamp = client.get_run(run_id).info.start_time
    entries = [Metric(key, float(value), stamp + step, step) for key, value, step in metrics]
    for start in range(0, len(entries), 1000):  # MLflow's batch limits: 1,000 metrics, 100 params
        client.log_batch(run_id, metrics=entries[start:start + 1000])
    params = [Param(k, _param(v)) for k, v in params.items()]
    for start in range(0, len(params), 100):
        client.log_batch(run_id, params=params[start:start + 100])
    client.set_terminated(run_id, status)
    return run_id


def active_run_id() -> str:
    return mlflow.active_run().info.run_id


def set_tags(tags: dict, run_id: str | None = None):
    """Tags on the active run, or on run `run_id` (e.g. one whose process died)."""
    tags = {k: str(v) for k, v in tags.items()}
    if run_id is None:
        mlflow.set_tags(tags)
        return
    client = connect()
    for key, value in tags.items():
        client.set_tag(run_id, key, value)


def log_metrics(metrics: dict, step: int | None = None):
    """Metrics of the active run in one call."""
    mlflow.log_metrics({k: float(v) for k, v in metrics.items()}, step=step)


def log_text(text: str, artifact_file: str):
    """A text artifact of the active run (e.g. the search's best step as TOML)."""
    mlflow.log_text(text, artifact_file)


def log_report(folder: Path, run_id: str, artifact_path: str = "report") -> str:
    """Log a report folder as artifacts of a run (finished or not); returns the artifact URI."""
    client = connect()
    client.log_artifacts(run_id, str(folder), artifact_path)
    return f"{client.get_run(run_id).info.artifact_uri}/{artifact_path}"

"""The project's MLflow tags and run kinds, each named once (also the Optuna study attributes of a search)."""


class Tag:
    """The project's MLflow tags (and the Optuna study attributes of a search), each named once."""

    PREFIX = "ablation."
    DATA_PREFIX = "data."  # the data fingerprint: data.source, data.digest, data.train_size, ...
    # Who a run is.
    KIND = PREFIX + "kind"  # one of the Kind values
    STUDY = PREFIX + "study"
    PROFILE = PREFIX + "profile"
    DESCRIPTION = PREFIX + "description"
    NOTE = "mlflow.note.content"  # MLflow's own description of a run, shown on its page and in the list
    OVERRIDES = PREFIX + "overrides"  # the --set values a command ran with (JSON), "{}" for none
    # A ladder step.
    STEP = PREFIX + "step"
    STEP_INDEX = PREFIX + "step_index"
    ORDER = PREFIX + "order"  # "003-seed00001": as text (the UI sorts tags so) it sorts a ladder's runs in its order
    BASELINE = PREFIX + "baseline"
    REPORTED_TEST_ACCURACY = PREFIX + "reported_test_accuracy"
    # The work a run did, and where it came from.
    CONFIG_HASH = PREFIX + "config_hash"
    WORK_KEY = PREFIX + "work_key"
    SEED = PREFIX + "seed"  # the training seed of a run; a ladder parent lists all of them in SEEDS
    SPLIT_SEED = PREFIX + "split_seed"  # which images were train / validation / test subset
    SEEDS = PREFIX + "seeds"  # on a ladder parent: the JSON list of training seeds every step ran with
    COMPARE_TO = PREFIX + "compare_to"  # on a baseline: the step its change is tested against
    # On a ladder parent: the equivalence margin (accuracy, 0.01 = 1 point) and the family-wise level its
    # verdicts used, so that the report judges the changes as the ladder did.
    ROPE = PREFIX + "rope"
    ALPHA = PREFIX + "alpha"
    METRIC = PREFIX + "metric"  # on a ladder parent: what its verdicts compared ([study] metric)
    REUSED_FROM = PREFIX + "reused_from"
    MIGRATED_FROM = PREFIX + "migrated_from"  # on a run copied by python -m ablation.migrate: its id in the source
    PLAN_KEY = PREFIX + "plan_key"  # on a parent: its units' work, so that the same command resumes it
    RESUMED_AT_EPOCH = PREFIX + "resumed_at_epoch"  # the epoch a killed run's checkpoint took it on from
    STOPPED_EARLY = PREFIX + "stopped_early"
    BN_STATISTICS = PREFIX + "bn_statistics"  # which BatchNormalization statistics evaluation used (moving | recomputed)
    ERROR = PREFIX + "error"
    # The process that ran it (the stale-run sweep reads these).
    HOST = PREFIX + "host"
    PID = PREFIX + "pid"
    CODE_VERSION = PREFIX + "code_version"
    # The search.
    OPTUNA_STUDY = PREFIX + "optuna_study"
    OPTUNA_STORAGE = PREFIX + "optuna_storage"
    OPTUNA_STORAGE_KIND = PREFIX + "optuna_storage_kind"
    OPTUNA_TRIAL = PREFIX + "optuna_trial"
    BASE_STEP = PREFIX + "base_step"
    PRUNER = PREFIX + "pruner"
    TRIAL_STATE = PREFIX + "trial_state"  # complete | pruned | failed
    PRUNED_AT_EPOCH = PREFIX + "pruned_at_epoch"
    SEARCH_PARAMS = PREFIX + "search_params"
    # Optuna study attributes that identify a search (a resumed study must match them).
    BASE_CONFIG = PREFIX + "base_config"
    MONITOR = PREFIX + "monitor"
    SEARCH_SPACE = PREFIX + "search_space"
    # An attribution design (python -m ablation.attribute).
    DESIGN = PREFIX + "design"  # leave-one-out | add-one-in | shapley, on the parent and its runs
    SUBSET = PREFIX + "subset"  # on a design's run: the JSON list of the components applied


class Kind:
    """Values of Tag.KIND."""

    LADDER = "ladder"  # a ladder invocation: the parent run
    LADDER_STEP = "ladder_step"
    SEARCH = "search"  # a search invocation: the parent run
    SEARCH_TRIAL = "search_trial"
    DESIGN = "design"  # an attribution design's invocation: the parent run
    DESIGN_UNIT = "design_unit"  # one subset of components, one seed

"""Generated inputs: study files mutated at random and random command lines either run or fail with one line.

A study file that loads must be runnable as far as the rules can say: every field and knob of every
step passes its rule under every profile. One that does not load raises StudyError, one line naming
the file. A command line either parses and passes the command's input checks, or ends with exit code 2
and one `error:` line; nothing else (no other exception, no traceback) is allowed.
"""

import json
import math
import re
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ablation import attribute, calibration, ladder, migrate, search, worker
from ablation.cli import one_line
from ablation.core.config import CONFIG_FIELDS, FIELD_RULES, StoreError, StudyError, knob_rule
from ablation.core.profiles import PROFILES
from ablation.core.study import load_study
from ablation.data import DataError
from ablation.models import MODELS
from ablation.report import __main__ as report_command

VALID = {
    "study": {"name": "fuzz", "title": "generated", "seeds": 1},
    "base": {"model": "template_resnet", "epochs": 4, "learning_rate": 0.001,
             "model_args": {"stage2_blocks": 1, "dropout_rate": 0.1}},
    "steps": [{"name": "one", "reported_test_accuracy": 0.5}, {"name": "two", "rotation_range": 10.0,
                                                                "lr_schedule": [[2, 0.1]]}],
    "baselines": [{"name": "other", "model": "vgg_like", "from_step": "one"}],
    "search": {"params": {"dropout_rate": {"type": "float", "low": 0.0, "high": 0.5}}},
}
KNOBS = sorted({knob for knobs in MODELS.values() for knob in knobs})
NAMES = sorted(set(CONFIG_FIELDS) | set(KNOBS) | {"name", "from_step", "seeds", "cumulative", "params", "type",
                                                  "low", "high", "choices", "log", "base_step", "monitor",
                                                  "attribution", "components", "step", "fields"})
# Places a mutation may write to: tables of the valid study (a list index stands for an array entry).
PLACES = [(), ("study",), ("base",), ("base", "model_args"), ("steps", 0), ("steps", 1), ("baselines", 0),
          ("search",), ("search", "params"), ("search", "params", "dropout_rate")]

scalars = st.one_of(st.booleans(), st.integers(-2**63, 2**63 - 1), st.floats(allow_nan=True, allow_infinity=True),
                    st.text(max_size=12), st.sampled_from(["", "adam", "val_loss", "template_resnet", "../x", "one"]),
                    st.dates())
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                       st.dictionaries(st.sampled_from(NAMES), inner, max_size=3)),
                      max_leaves=6)
mutations = st.lists(st.tuples(st.sampled_from(PLACES), st.sampled_from(NAMES + ["study", "base", "steps"]),
                               st.one_of(values, st.just(None))), max_size=4)  # None: delete the key


def mutated(changes) -> dict:
    """The valid study with each (place, key, value) applied; value None deletes the key."""
    study = json.loads(json.dumps(VALID))
    for place, key, value in changes:
        table = study
        for part in place:
            try:
                table = table[part]
            except (KeyError, IndexError, TypeError):  # an earlier change removed or replaced the place
                table = None
                break
        if isinstance(table, dict) and value is None:
            table.pop(key, None)
        elif isinstance(table, dict):
            table[key] = value
    return study


def toml_value(value) -> str:
    """A value as TOML writes it: inline tables and arrays, so any nesting fits on one line."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf") if math.isinf(value) else repr(value)
    if isinstance(value, (int, str)):
        return json.dumps(value, ensure_ascii=False) if isinstance(value, str) else str(value)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{toml_value(k)} = {toml_value(v)}" for k, v in value.items()) + "}"
    return value.isoformat()  # a date


def toml_document(study: dict) -> str:
    return "".join(f"{toml_value(key)} = {toml_value(value)}\n" for key, value in study.items())


def passes_every_rule(loaded) -> bool:
    """Every field and knob of every step, as every profile trains it, is allowed by its rule."""
    configs = [profile.apply(step.config) for step in loaded.steps for profile in PROFILES.values()]
    return all(FIELD_RULES[name].accepts(getattr(config, name)) for config in configs for name in CONFIG_FIELDS) \
        and all(knob_rule(config.model, knob).accepts(value) for config in configs
                for knob, value in config.model_args.items())


def test_the_valid_study_loads(tmp_path):
    path = tmp_path / "study.toml"
    path.write_text(toml_document(VALID))
    assert [s.name for s in load_study(path).steps] == ["one", "two", "other"]


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(changes=mutations, garbage=st.one_of(st.none(), st.binary(max_size=64)))
def test_a_generated_study_loads_and_passes_the_rules_or_is_one_line(tmp_path, changes, garbage):
    path = tmp_path / "study.toml"
    text = toml_document(mutated(changes)).encode()
    path.write_bytes(text if garbage is None else garbage + text)  # bytes in front: non-UTF-8, broken TOML
    try:
        loaded = load_study(path)
    except StudyError as error:
        assert len(one_line(error).splitlines()) == 1 and "study.toml" in str(error)
    else:
        assert passes_every_rule(loaded)


# Every command, by the function that parses its command line.
COMMANDS = {"ladder": ladder.parse_args, "search": search.parse_args, "attribute": attribute.parse_args,
            "worker": worker.parse_args, "migrate": migrate.parse_args, "report": report_command.parse_args,
            "calibration": calibration.parse_args}
words = st.one_of(st.text(max_size=10), st.sampled_from(
    ["studies/assignment.toml", "assignment", "studies/nope.toml", "smoke", "quick", "-1", "0", "3", "4294967296",
     "nan", "inf", "1e9", "template,augmentation", "template,,", "median", "x.journal", "foo://x", "../x", "",
     "epochs=3", "epochs=0", "dropout_rate=1.5", "learning_rate=inf", "lr_schedule=[[2, 0.1]]", "stage2_blocks=x",
     "train_subset=none", "model_args={}", "=", "nope=1", "0,1", "0,0", "all", "final", "shapley"]))


def options_of(command: str) -> list[str]:
    """Every option the command's --help lists, and one it does not know: an option is fuzzed the day it is added."""
    import contextlib
    import io

    with contextlib.redirect_stdout(io.StringIO()) as text, pytest.raises(SystemExit):
        COMMANDS[command](["--help"])
    return sorted(set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", text.getvalue())) - {"--help"}) + ["--bogus"]


def command_lines(command: str):
    return st.lists(st.tuples(st.sampled_from(options_of(command)), words), max_size=4).map(
        lambda pairs: [part for option, word in pairs for part in (option, word)])


def expect_clean_exit(parse, argv, capsys):
    """Parse `argv`: the arguments, or None after exit code 2 with one `error:` line on stderr."""
    capsys.readouterr()
    try:
        return parse(argv)
    except SystemExit as exit:
        lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
        assert exit.code == 2 and len(lines) == 1 and lines[0].startswith("error: "), lines
        return None


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(argv=command_lines("ladder"))
def test_a_generated_ladder_command_line_passes_its_checks_or_is_one_line(tmp_path, monkeypatch, capsys, argv):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/store/mlflow.db")
    args = expect_clean_exit(ladder.parse_args, argv, capsys)
    if args is None:
        return
    try:
        study, _, steps = ladder.prepare(args)
    except (StudyError, DataError, StoreError) as error:
        assert len(one_line(error).splitlines()) == 1
    else:
        assert steps and {s.name for s in steps} <= {s.name for s in study.steps}
    assert not (tmp_path / "store").exists()  # the checks write nothing


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(argv=command_lines("search"))
def test_a_generated_search_command_line_parses_or_is_one_line(capsys, argv):
    args = expect_clean_exit(search.parse_args, argv, capsys)
    assert args is None or (args.trials >= 1 and args.top >= 1 and (args.timeout is None or args.timeout > 0))


@pytest.mark.parametrize("command", ["attribute", "worker", "migrate", "report", "calibration"])
def test_every_other_commands_generated_command_line_parses_or_is_one_line(command, capsys):
    assert len(options_of(command)) >= 2  # what --help lists was read (one option at least, and --bogus)

    @settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(argv=command_lines(command))
    def parses_or_is_one_line(argv):
        expect_clean_exit(COMMANDS[command], argv, capsys)

    parses_or_is_one_line()


def test_the_generators_reach_both_outcomes(tmp_path):
    # Guards the properties above against passing vacuously: mutations make loadable and refused files.
    outcomes = set()
    for changes in ([], [(("base",), "learning_rate", 0.0)], [(("steps", 0), "name", "../x")]):
        path = tmp_path / "study.toml"
        path.write_text(toml_document(mutated(changes)))
        try:
            load_study(path)
            outcomes.add("loaded")
        except StudyError:
            outcomes.add("refused")
    assert outcomes == {"loaded", "refused"}
    assert Path("studies/assignment.toml").is_file()  # the command-line generators name a real study too

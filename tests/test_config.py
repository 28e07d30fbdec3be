"""The study loader: the shipped studies load; bad files fail naming the file, the key and what is allowed."""

import dataclasses
import json
from pathlib import Path

import pytest

from ablation.core.config import Config, StudyError
from ablation.core.profiles import PROFILES
from ablation.core.study import apply_overrides, load_study, parse_overrides

BASE = """
[study]
name = "t"

[base]
model = "template_resnet"

[[steps]]
name = "one"
"""


def write(tmp_path, text, name="study.toml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_assignment_study_is_the_report_ladder():
    study = load_study("studies/assignment.toml")
    names = [s.name for s in study.steps]
    assert names == ["template", "augmentation", "deeper_early_stopping", "lr_schedule", "deeper_dropout", "vgg_like"]
    steps = {s.name: s for s in study.steps}
    # Each step keeps everything before it.
    assert steps["lr_schedule"].config.rotation_range == 15.0
    assert steps["lr_schedule"].config.model_args["stage2_blocks"] == 7
    final = steps["deeper_dropout"].config
    assert dict(final.model_args) == {"stage2_blocks": 7, "stage3_blocks": 5, "stage4_blocks": 2, "dropout_rate": 0.5,
                                      "block": "post"}
    assert (final.epochs, final.early_stopping_monitor, final.reduce_lr_monitor) == (75, "val_loss", "val_loss")
    vgg = steps["vgg_like"]
    # A new model starts from its own defaults, every knob spelled out.
    assert vgg.is_baseline and vgg.config.model == "vgg_like" and dict(vgg.config.model_args) == {
        "filters": (32, 64, 128), "convs_per_group": 3, "dense_units": 128, "dropout_rate": 0.2}
    assert vgg.config.early_stopping_monitor == "val_accuracy" and vgg.config.horizontal_flip
    assert [s.reported_test_accuracy for s in study.steps] == [0.723, 0.829, 0.834, 0.873, 0.892, 0.879]
    assert study.search.base_step == "deeper_dropout"


# A bad field or knob (name, TOML value, what the error says): the same cases in a study file and in --set.
BAD_VALUES = [
    ("epocs", "3", ["epocs", "allowed", "epochs"]),
    ("dropuot_rate", "0.5", ["dropuot_rate", "dropout_rate"]),
    ("optimizer", "'adamw'", ["optimizer", "adam", "sgd"]),
    ("epochs", "-1", ["epochs", "positive integer"]),
    ("horizontal_flip", "'yes'", ["horizontal_flip", "true or false"]),
    ("model", "'resnet9000'", ["resnet9000", "template_resnet"]),
    ("validation_split", "1.5", ["validation_split", "a number in (0, 1)"]),
    ("lr_schedule", "[[80]]", ["lr_schedule", "[epoch, multiplier]"]),
    ("stage2_blocks", "2.5", ["stage2_blocks", "int"]),
    ("learning_rate", "inf", ["learning_rate", "finite number > 0", "inf"]),
    ("learning_rate", "0", ["learning_rate", "> 0", "got 0"]),
    ("zoom_range", "nan", ["zoom_range", "[0, 1)", "nan"]),
    ("dropout_rate", "1.5", ["model_args.dropout_rate", "[0, 1)", "1.5"]),
    ("stage3_blocks", "-3", ["model_args.stage3_blocks", "0..21", "-3"]),
    ("seed", "4294967296", ["seed", "0..4294967295"]),
    ("train_subset", "0", ["train_subset", "positive integer"]),
]
KNOBS = {"dropuot_rate", "stage2_blocks", "dropout_rate", "stage3_blocks"}  # in a study file, under model_args
IDS = [f"{name}={value}" for name, value, _ in BAD_VALUES]


@pytest.mark.parametrize("name, value, needles", BAD_VALUES, ids=IDS)
def test_bad_value_in_a_study_file_names_file_key_and_allowed(tmp_path, name, value, needles):
    line = f"model_args = {{ {name} = {value} }}" if name in KNOBS else f"{name} = {value}"
    with pytest.raises(StudyError) as error:
        load_study(write(tmp_path, BASE + line + "\n"))
    for needle in ["study.toml", *needles]:
        assert needle in str(error.value)


@pytest.mark.parametrize("name, value, needles", BAD_VALUES, ids=IDS)
def test_bad_value_in_set_names_the_option_key_and_allowed(tmp_path, name, value, needles):
    study = load_study(write(tmp_path, BASE))
    with pytest.raises(StudyError) as error:
        apply_overrides(study, parse_overrides([f"{name}={value}"]))
    for needle in ["--set", *needles]:
        assert needle in str(error.value)


@pytest.mark.parametrize("item", ["epochs", "=3", "", "model_args={dropout_rate = 0.1}"])
def test_set_needs_field_equals_value(item):
    with pytest.raises(StudyError, match="expected FIELD=VALUE|unknown key"):
        parse_overrides([item])


def test_set_changes_every_step_a_knob_where_the_model_has_it():
    study = load_study("assignment")  # a shipped study by name
    values = parse_overrides(["epochs=3", "dropout_rate=0.3", "stage2_blocks=2", "early_stopping_monitor=val_loss",
                              "lr_schedule=[[2, 0.1]]", "horizontal_flip=false", "test_subset=none"])
    assert values["early_stopping_monitor"] == "val_loss" and values["lr_schedule"] == [[2, 0.1]]  # TOML, else text
    overridden = apply_overrides(study, values)
    assert overridden.overrides == values and overridden.overrides_json().startswith('{"dropout_rate": 0.3, "early_stopping_monitor"')
    changed = {s.name: s.config for s in overridden.steps}
    assert len(changed) == 6 and {c.epochs for c in changed.values()} == {3}
    assert {c.model_args["dropout_rate"] for c in changed.values()} == {0.3}  # a knob of both models
    assert changed["deeper_dropout"].model_args["stage2_blocks"] == 2
    assert "stage2_blocks" not in changed["vgg_like"].model_args  # not a knob of the VGG-like network
    assert changed["template"].lr_schedule == ((2, 0.1),) and not changed["augmentation"].horizontal_flip
    assert changed["template"].test_subset is None
    assert changed["template"].hash() != study.step("template").config.hash()
    with pytest.raises(StudyError, match="knobs of no model this study runs"):
        apply_overrides(study, parse_overrides(["depth=20"]))  # a ResNet v1 knob: no step runs that model


def test_a_shipped_study_by_name_and_the_names_when_missing():
    assert load_study("architectures").name == "architectures"
    with pytest.raises(StudyError, match="assignment, keras_resnet"):
        load_study("architecture")


def test_every_knob_is_in_the_config_and_a_default_spelled_out_is_the_same_work():
    assert dict(Config().model_args) == {"stage2_blocks": 5, "stage3_blocks": 3, "stage4_blocks": 1, "dropout_rate": 0.0,
                                         "block": "post"}
    assert Config(model_args={"dropout_rate": 0.0}).hash() == Config().hash()
    assert Config(model_args={"dropout_rate": 0.5}).hash() != Config().hash()
    # A knob added later (the block design) enters the work only when set away from its default.
    assert Config(model_args={"block": "post"}).hash() == Config().hash() != Config(model_args={"block": "pre"}).hash()


@pytest.mark.parametrize("text, needles", [
    (BASE + "reported_test_accuracy = 72.3\n", ["reported_test_accuracy", "fraction"]),
    (BASE + "[[steps]]\nname = 'one'\n", ["unique", "one"]),
    (BASE + "[[steps]]\nname = 'Two Words'\n", ["snake_case"]),
    (BASE + "[extra]\n", ["unknown key", "extra"]),
    (BASE.replace('name = "t"', ''), ["[study] needs a name"]),
    (BASE + "[search]\n[search.params.depth]\ntype = 'int'\nlow = 1\nhigh = 3\n", ["depth", "allowed", "stage2_blocks"]),
    (BASE + "[search]\n[search.params.min_lr]\ntype = 'float'\nlow = 0.0\nhigh = 1.0\nlog = true\n", ["log-scale", "low > 0"]),
    (BASE + "[search]\n[search.params.dropout_rate]\ntype = 'normal'\n", ["type must be int, float or categorical"]),
    ("[study\n", ["not valid TOML"]),
])
def test_bad_study_names_file_key_and_allowed(tmp_path, text, needles):
    with pytest.raises(StudyError) as error:
        load_study(write(tmp_path, text))
    for needle in needles:
        assert needle in str(error.value)


def test_missing_study_file_names_the_shipped_studies(tmp_path):
    with pytest.raises(StudyError, match=r"nope\.toml not found.*shipped study's name: .*assignment"):
        load_study(tmp_path / "nope.toml")


def test_config_is_frozen_and_hash_tracks_every_field():
    config = Config()
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.epochs = 3
    with pytest.raises(TypeError):
        config.model_args["dropout_rate"] = 0.5
    assert config.hash() == Config().hash()
    assert config.hash() != dataclasses.replace(config, seed=1).hash()
    assert config.hash() != dataclasses.replace(config, model_args={"dropout_rate": 0.5}).hash()


def test_profiles_shrink_epochs_patience_and_data_in_proportion():
    config = load_study("studies/assignment.toml").step("lr_schedule").config
    quick = PROFILES["quick"].apply(config)
    # Stopping patience 10 -> 5 (the floor); LR patience 5 would floor to 5 too and collide: it keeps the
    # recipe's ratio instead (5 * 5/10, rounded up), so the rate drops before training stops.
    assert (quick.epochs, quick.early_stopping_patience, quick.reduce_lr_patience) == (10, 5, 3)
    longer = dataclasses.replace(config, early_stopping_patience=40)
    assert PROFILES["quick"].apply(longer).early_stopping_patience == 8  # scaled once above the floor
    assert (quick.train_subset, quick.test_subset) == (4000, 2000)
    assert PROFILES["full"].apply(config) == config
    smoke = PROFILES["smoke"].apply(config)
    assert smoke.epochs >= 1 and smoke.train_subset < quick.train_subset
    # The miniature keeps the recipe's epochs and patiences, on fewer images than quick.
    mini = PROFILES["miniature"].apply(config)
    assert (mini.epochs, mini.early_stopping_patience, mini.reduce_lr_patience) == (50, 10, 5)
    assert (mini.train_subset, mini.test_subset) == (1250, 2000)


SHIPPED = sorted(Path("studies").glob("*.toml"))


@pytest.mark.parametrize("profile", sorted(PROFILES))
@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.stem)
def test_every_shipped_step_lowers_its_rate_before_it_stops(path, profile):
    """Where a recipe drops the LR before stopping (LR patience < stopping patience), every profile keeps that order."""
    steps = [s for s in load_study(path).steps if s.config.early_stopping_monitor and s.config.reduce_lr_monitor
             and s.config.reduce_lr_patience < s.config.early_stopping_patience]
    scaled = [PROFILES[profile].apply(s.config) for s in steps]
    assert all(c.reduce_lr_patience < c.early_stopping_patience for c in scaled), [
        (s.name, c.reduce_lr_patience, c.early_stopping_patience) for s, c in zip(steps, scaled, strict=True)]


def test_the_assignment_study_has_steps_that_both_lower_and_stop():
    # The parametrized test above would pass vacuously on a study without such a step.
    steps = load_study("studies/assignment.toml").steps
    assert any(s.config.early_stopping_monitor and s.config.reduce_lr_monitor for s in steps)


@pytest.mark.parametrize("stopping, lowering, expected", [
    (10, 5, (5, 3)),  # both floor to 5: the LR keeps the recipe's ratio, 5 * 5/10 rounded up
    (10, 9, (5, 4)),  # the ratio rounds up to 5, which would collide again: one below stopping
    (6, 4, (5, 4)),  # floors 5 and 4 keep the order already
    (20, 5, (5, 2)),  # 5 * 5/20 rounded up: the ratio of the recipe, not a fixed gap
])
def test_colliding_patiences_are_corrected_to_the_recipes_order(stopping, lowering, expected):
    config = Config(early_stopping_monitor="val_loss", early_stopping_patience=stopping,
                    reduce_lr_monitor="val_loss", reduce_lr_patience=lowering, epochs=50)
    quick = PROFILES["quick"].apply(config)
    assert (quick.early_stopping_patience, quick.reduce_lr_patience) == expected


@pytest.mark.parametrize("seeds, expected", [(3, (0, 1, 2)), ([4, 7], (4, 7))])
def test_study_seeds_are_a_count_or_a_list(tmp_path, seeds, expected):
    path = tmp_path / "s.toml"
    path.write_text(f'[study]\nname = "s"\nseeds = {json.dumps(seeds)}\n[base]\n[[steps]]\nname = "a"\n')
    assert load_study(path).seeds == expected


@pytest.mark.parametrize("seeds", ["0", "[1, 1]", "[-1]", '"3"', "true"])
def test_bad_seeds_name_the_file_and_key(tmp_path, seeds):
    path = tmp_path / "s.toml"
    path.write_text(f'[study]\nname = "s"\nseeds = {seeds}\n[base]\n[[steps]]\nname = "a"\n')
    with pytest.raises(StudyError, match=r"s\.toml: \[study\] seeds"):
        load_study(path)


# Each malformed study an attacker or a clumsy user wrote, and the words its one-line error must hold.
MALFORMED = {
    "non_utf8_bytes": (b'[study]\nname = "caf\xe9"\n', ["study.toml", "not UTF-8", "byte 19"]),
    "steps_as_a_table": (BASE.replace("[[steps]]", "[steps]"), ["steps must be an array of tables", "[[steps]]"]),
    "steps_as_numbers": ('[study]\nname = "t"\n[base]\nsteps = [1, 2]\n', ["[base]", "unknown key", "steps"]),
    "top_level_steps_as_numbers": ('steps = [1, 2]\n[study]\nname = "t"\n[base]\n', ["steps must be an array of tables"]),
    "search_params_a_number": (BASE + "[search]\nparams = 5\n", ["[search] params", "5"]),
    "numeric_study_name": (BASE.replace('name = "t"', "name = 5"), ["[study] name", "letters, digits", "got 5"]),
    "empty_study_name": (BASE.replace('name = "t"', 'name = ""'), ["[study] name", "got ''"]),
    "study_name_leaving_its_folder": (BASE.replace('name = "t"', 'name = "../../x"'), ["[study] name", "../../x"]),
    "step_name_leaving_its_folder": (BASE.replace('name = "one"', 'name = "../one"'), ["name must be snake_case"]),
    "infinite_learning_rate": (BASE + "learning_rate = inf\n", ["'one'", "learning_rate", "finite number > 0", "inf"]),
    "zero_learning_rate": (BASE + "learning_rate = 0\n", ["learning_rate", "> 0", "got 0"]),
    "nan_zoom": (BASE + "zoom_range = nan\n", ["zoom_range", "[0, 1)", "nan"]),
    "dropout_above_one": (BASE + "model_args = { dropout_rate = 1.5 }\n", ["model_args.dropout_rate", "[0, 1)", "1.5"]),
    "negative_blocks": (BASE + "model_args = { stage2_blocks = -3 }\n", ["model_args.stage2_blocks", "0..21", "-3"]),
    "resnet_depth_off_pattern": (BASE + "model = 'resnet_v1'\nmodel_args = { depth = 21 }\n", ["depth", "6n + 2", "21"]),
    "missing_base": (BASE.replace("[base]\n", "").replace('model = "template_resnet"\n', ""), ["needs a [base] table"]),
    "cumulative_as_a_string": (BASE.replace('name = "t"', 'name = "t"\ncumulative = "false"'),
                               ["[study]", "cumulative must be true or false", "'false'"]),
    "reported_accuracy_true": (BASE + "reported_test_accuracy = true\n", ["reported_test_accuracy", "fraction", "True"]),
    "seed_beyond_32_bits": (BASE + "seed = 4294967296\n", ["seed", "0..4294967295"]),
    "seeds_a_billion": (BASE.replace('name = "t"', 'name = "t"\nseeds = 1000000000'), ["seeds", "1 to 1000"]),
    "from_step_a_list": (BASE + "[[baselines]]\nname = 'b'\nfrom_step = ['one']\n", ["from_step", "['one']"]),
    "search_dropout_range_beyond_one": (
        BASE + "[search]\n[search.params.dropout_rate]\ntype = 'float'\nlow = 0.1\nhigh = 1.5\n",
        ["[search.params.dropout_rate]", "dropout_rate must be a number in [0, 1)", "1.5"]),
    "search_blocks_as_floats": (
        BASE + "[search]\n[search.params.stage2_blocks]\ntype = 'float'\nlow = 1\nhigh = 3\n",
        ["stage2_blocks", "type = int"]),
    "search_choices_of_tables": (
        BASE + "[search]\n[search.params.optimizer]\ntype = 'categorical'\nchoices = [{a = 1}]\n", ["choices"]),
    "search_bounds_as_booleans": (
        BASE + "[search]\n[search.params.epochs]\ntype = 'int'\nlow = true\nhigh = 3\n", ["low < high", "True"]),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_study_is_one_line_naming_file_and_key(tmp_path, case):
    text, needles = MALFORMED[case]
    path = tmp_path / "study.toml"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(StudyError) as error:
        load_study(path)
    message = str(error.value)
    assert "\n" not in message and "study.toml" in message
    for needle in needles:
        assert needle in message, message


def test_an_empty_base_is_the_config_defaults(tmp_path):
    study = load_study(write(tmp_path, '[study]\nname = "t"\n[base]\n[[steps]]\nname = "one"\n'))
    assert study.steps[0].config == Config()


def test_every_default_passes_its_own_rule_and_every_knob_has_one():
    from ablation.core.config import FIELD_RULES, check_field, check_knob, check_rules
    from ablation.models import MODELS

    check_rules(MODELS)  # raises for a knob without a rule or a default its rule refuses
    assert set(FIELD_RULES) == {f.name for f in dataclasses.fields(Config)}
    assert check_field("learning_rate", 1, "--set") == 1.0 and isinstance(check_field("learning_rate", 1, "x"), float)
    assert check_knob("vgg_like", "filters", [8, 16], "x") == (8, 16)
    with pytest.raises(StudyError, match=r"^--set: epochs must be a positive integer, got 0$"):
        check_field("epochs", 0, "--set")

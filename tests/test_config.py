from __future__ import annotations

from pathlib import Path

import pytest

from l2s_gym.config import ConfigError, from_dict, load_config

REPO = Path(__file__).resolve().parent.parent


def base() -> dict:
    return {
        "experiment": "x",
        "task": {"name": "sparse_recovery", "m": 8, "n": 16},
        "predictor": {"name": "lista", "num_layers": 4},
    }


def error_of(data: dict) -> str:
    with pytest.raises(ConfigError) as info:
        from_dict(data)
    msg = str(info.value)
    assert "\n" not in msg
    return msg


def test_bundled_configs_load():
    names = sorted(p.stem for p in (REPO / "configs").glob("*.yaml"))
    assert "sparse_recovery_small" in names and "sparse_recovery" in names
    for name in names:
        load_config(REPO / "configs" / f"{name}.yaml")


def test_paper_scale_config_matches_the_paper():
    cfg = load_config(REPO / "configs" / "sparse_recovery.yaml")
    p = cfg.task.params
    assert (p.m, p.n, p.p, p.snr_db, p.condition_number) == (250, 500, 0.1, [20, 30, 40], 5.0)
    assert cfg.predictor.params.num_layers == 20
    assert cfg.stage1.steps * cfg.stage1.batch_size == 768_000


def test_defaults_fill_in():
    cfg = from_dict(base())
    assert cfg.stage1.steps > 0 and cfg.task.params.p == 0.1 and cfg.device == "auto"


@pytest.mark.parametrize(
    ("mutate", "needle"),
    [
        (
            lambda d: d.update(stage1={"stepz": 3}),
            "stage1.stepz: unknown key (did you mean 'steps'?)",
        ),
        (lambda d: d.update(betta=1), "betta: unknown key"),
        (lambda d: d["task"].update(snr_db=[]), "task.snr_db"),
        (lambda d: d["predictor"].update(num_layers=0), "predictor.num_layers: must be > 0"),
        (lambda d: d.update(beta=0), "beta: must be > 0"),
        (lambda d: d.update(beta=-1.0), "beta: must be > 0"),
        (lambda d: d.update(stage1={"steps": "ten"}), "stage1.steps: expected an int"),
        (lambda d: d.update(stage1={"lr": "fast"}), "stage1.lr: expected a number"),
        (lambda d: d["task"].update(name="sparse"), "task.name: unknown task 'sparse'"),
        (lambda d: d["task"].update(colour=1), "task.colour: unknown key"),
        (lambda d: d.update(device="tpu"), "device"),
        (lambda d: d.update(compare={"learners": ["reverse-kl"]}), "compare.learners"),
        (lambda d: d.pop("experiment"), "experiment: required key missing"),
        (
            lambda d: d.update(rl={"beta_anneal_from": 0.5}),
            "rl.beta_anneal_from: must be >= 1",
        ),
        (
            lambda d: d.update(stage1={"beta_anneal_from": 0.5}),
            "stage1.beta_anneal_from: must be >= 1",
        ),
        (
            lambda d: d.update(stage1={"anneal_fraction": 1.5}),
            "stage1.anneal_fraction: must be in (0, 1]",
        ),
        (
            lambda d: d.update(imitation={"beta": 0}),
            "imitation.beta: must be > 0 (or null",
        ),
        (
            lambda d: d.update(imitation={"anneal_fraction": 0}),
            "imitation.anneal_fraction: must be in (0, 1]",
        ),
        (
            lambda d: d.update(predictor={"name": "toy_counter"}),
            "predictor.name: 'toy_counter' works on task 'toy'",
        ),
    ],
)
def test_bad_values_name_the_key(mutate, needle):
    data = base()
    mutate(data)
    assert needle in error_of(data)


def test_overrides_apply_and_are_checked(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("experiment: x\ntask: {name: sparse_recovery}\npredictor: {name: lista}\n")
    cfg = load_config(path, ["stage1.steps=7", "task.snr_db=[10, 20]"])
    assert cfg.stage1.steps == 7 and cfg.task.params.snr_db == [10.0, 20.0]
    with pytest.raises(ConfigError, match="stage1.stpes: unknown key"):
        load_config(path, ["stage1.stpes=7"])
    with pytest.raises(ConfigError, match="no such file"):
        load_config(tmp_path / "missing.yaml")


# --- numbers as users write them, and the gaps validation closes (issue 13) -----------------


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return path


MINIMAL = "experiment: x\ntask: {name: sparse_recovery, m: 8, n: 16}\npredictor: {name: lista}\n"


def test_float_fields_accept_every_spelling_float_does(tmp_path):
    # PyYAML (YAML 1.1) reads 3e-4 and 1.0e9 as strings; they are numbers all the same.
    path = write(tmp_path, MINIMAL + "beta: 3e-4\nstage1: {lr: 1.0e9}\nimitation: {lr: .5}\n")
    cfg = load_config(path)
    assert (cfg.beta, cfg.stage1.lr, cfg.imitation.lr) == (3e-4, 1e9, 0.5)
    cfg = load_config(path, ["stage1.lr=1e9", "beta=1E-3", "frontier.costs=[0, 1e-2, .3]"])
    assert (cfg.stage1.lr, cfg.beta, cfg.frontier.costs) == (1e9, 1e-3, [0.0, 0.01, 0.3])
    assert isinstance(cfg.frontier.costs[0], float)


@pytest.mark.parametrize("value", [".nan", ".inf", "-.inf", "nan", "inf", "'NaN'", "1e999"])
@pytest.mark.parametrize("key", ["beta", "stage1.lr", "cost"])
def test_non_finite_numbers_are_refused_naming_the_key(tmp_path, key, value):
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, MINIMAL), [f"{key}={value}"])
    assert str(info.value).startswith(f"{key}: expected a finite number")


def test_non_finite_in_a_list_names_the_element(tmp_path):
    with pytest.raises(ConfigError, match=r"frontier.costs\[1\]: expected a finite number"):
        load_config(write(tmp_path, MINIMAL), ["frontier.costs=[0, .inf]"])


def test_ints_stay_strict_but_say_how_to_write_them(tmp_path):
    with pytest.raises(
        ConfigError, match=r"stage1.steps: expected an int, got '1e3' \(write 1000\)"
    ):
        load_config(write(tmp_path, MINIMAL), ["stage1.steps=1e3"])
    with pytest.raises(ConfigError, match=r"stage1.steps: expected an int, got 'lots'$"):
        load_config(write(tmp_path, MINIMAL), ["stage1.steps=lots"])
    assert load_config(write(tmp_path, MINIMAL), ["stage1.steps=1000.0"]).stage1.steps == 1000


@pytest.mark.parametrize(
    ("mutate", "needle"),
    [
        (lambda d: d.update(compare={"learners": []}), "compare.learners: must list at least"),
        (
            lambda d: d.update(compare={"learners": ["reverse_kl", "reverse_kl"]}),
            "compare.learners: 'reverse_kl' is listed twice",
        ),
        (lambda d: d.update(seed=-1), "seed: must be >= 0, got -1"),
        (lambda d: d.update(seeds=[0, -2]), "seeds[1]: must be >= 0, got -2"),
        (lambda d: d.update(threads=-1), "threads: must be >= 0"),
        (lambda d: d.update(predictor={"num_layers": 4}), None),  # name from the task
    ],
)
def test_more_bad_values_name_the_key(mutate, needle):
    data = base()
    mutate(data)
    if needle is None:
        assert from_dict(data).predictor.name == "lista"
    else:
        assert needle in error_of(data)


@pytest.mark.parametrize(
    "name", ["../x", "../../somewhere/x", "a/b", ".", "..", ".hidden", "", "a b", "x" * 129, "é"]
)
def test_experiment_must_be_one_safe_folder_name(name):
    data = base()
    data["experiment"] = name
    assert error_of(data).startswith("experiment: must be a single folder name")


@pytest.mark.parametrize("name", ["x", "sparse_recovery-small.v2", "A1", "_tmp", "-x"])
def test_safe_experiment_names_pass(name):
    data = base()
    data["experiment"] = name
    assert from_dict(data).experiment == name


def test_predictor_name_defaults_to_the_tasks_default_predictor():
    data = base()
    del data["predictor"]
    cfg = from_dict(data)
    assert cfg.predictor.name == "lista"
    assert cfg.to_dict()["predictor"]["name"] == "lista"  # the snapshot says which


def test_yaml_syntax_error_names_file_line_and_column(tmp_path):
    path = write(tmp_path, "experiment: x\ntask: {name: sparse_recovery\nbeta: 0.1\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    msg = str(info.value)
    assert f"{path}:3:" in msg and "invalid YAML" in msg and "\n" not in msg


def test_set_value_that_is_not_yaml_is_one_line(tmp_path):
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, MINIMAL), ["stage1.steps=[1,"])
    msg = str(info.value)
    assert msg.startswith("--set stage1.steps=[1,: the value is not valid YAML") and "\n" not in msg


def test_top_level_list_with_set_is_one_line(tmp_path):
    with pytest.raises(ConfigError, match="expected a mapping .* at the top level, got a list"):
        load_config(write(tmp_path, "- a\n- b\n"), ["beta=1"])


def test_set_fills_a_section_left_empty_and_refuses_empty_keys(tmp_path):
    cfg = load_config(write(tmp_path, MINIMAL + "stage1:\n"), ["stage1.steps=3"])
    assert cfg.stage1.steps == 3
    with pytest.raises(ConfigError, match="expected key=value"):
        load_config(write(tmp_path, MINIMAL), ["stage1..steps=3"])

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

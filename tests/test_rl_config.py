"""The RL learners' hyper-parameters: SB3 blocks as rl-zoo3 writes them, per-task files, merge order."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest
import yaml

import l2s_gym.config as config
from l2s_gym import registry
from l2s_gym.config import (
    SB3_DEFAULTS,
    ConfigError,
    apply_overrides,
    from_dict,
    hyperparams_entry,
    sb3_signature,
)

REPO = Path(__file__).resolve().parent.parent


def base(**rl: object) -> dict:
    return {
        "experiment": "x",
        "task": {"name": "sparse_recovery", "m": 8, "n": 16},
        "predictor": {"name": "lista", "num_layers": 4},
        "rl": rl,
    }


def error_of(data: dict) -> str:
    with pytest.raises(ConfigError) as info:
        from_dict(data)
    assert "\n" not in str(info.value)
    return str(info.value)


@pytest.mark.parametrize(
    ("rl", "needle"),
    [
        ({"ppo": {"n_stepz": 8}}, "rl.ppo.n_stepz: not an argument of stable_baselines3.PPO "),
        ({"ppo": {"n_stepz": 8}}, "(did you mean 'n_steps'?)"),
        ({"a2c": {"learning_rat": 1e-3}}, "rl.a2c.learning_rat: not an argument of"),
        ({"a2c": {"n_epochs": 4}}, "rl.a2c.n_epochs: not an argument of stable_baselines3.A2C"),
        ({"ppo": {"policy_kwargs": {}}}, "rl.ppo.policy_kwargs: set by the learner"),
        ({"ppo": {"seed": 3}}, "rl.ppo.seed: set by the learner"),
        ({"ppo": {"n_epochs": 2.5}}, "rl.ppo.n_epochs: expected an int"),
        ({"ppo": {"normalize_advantage": 1}}, "rl.ppo.normalize_advantage: expected true or"),
        ({"ppo": {"gae_lambda": "high"}}, "rl.ppo.gae_lambda: expected a finite number"),
        ({"ppo": {"learning_rate": "lin_fast"}}, "rl.ppo.learning_rate: expected a finite"),
        ({"ppo": {"vf_coef": float("nan")}}, "rl.ppo.vf_coef: expected a finite number"),
        ({"ppo": [1, 2]}, "rl.ppo: expected a mapping of PPO's arguments"),
        ({"ppo_lr": 0.1}, "rl.ppo_lr: unknown key"),
        ({"a2c_steps": 5}, "rl.a2c_steps: unknown key"),
    ],
)
def test_bad_sb3_blocks_are_config_errors_naming_the_key(rl: dict, needle: str) -> None:
    assert needle in error_of(base(**rl))


def test_every_sb3_argument_is_reachable_from_a_config() -> None:
    from stable_baselines3 import A2C, PPO

    for algorithm, cls in (("ppo", PPO), ("a2c", A2C)):
        names = set(inspect.signature(cls.__init__).parameters) - {"self"}
        reachable = set(sb3_signature(algorithm))
        assert reachable == names - set(config.SB3_OWNED)
    for name in (
        "learning_rate n_steps batch_size n_epochs gae_lambda clip_range clip_range_vf "
        "ent_coef vf_coef max_grad_norm normalize_advantage target_kl"
    ).split():
        assert name in sb3_signature("ppo")
    block = {
        "learning_rate": "lin_3e-3",
        "n_steps": 32,
        "batch_size": 256,
        "n_epochs": 3,
        "gae_lambda": 0.9,
        "clip_range": "lin_0.2",
        "clip_range_vf": 0.5,
        "ent_coef": "5e-1",  # YAML 1.1 leaves exponent floats as strings
        "vf_coef": 0.25,
        "max_grad_norm": 1.0,
        "normalize_advantage": True,
        "target_kl": 0.02,
    }
    cfg = from_dict(base(ppo=block))
    assert cfg.rl.ppo == {**SB3_DEFAULTS["ppo"], **block, "ent_coef": 0.5}
    assert from_dict(base(a2c={"use_rms_prop": False})).rl.a2c["use_rms_prop"] is False


def test_defaults_are_todays_values() -> None:
    cfg = from_dict(base())
    # sparse_recovery's entries in hyperparams/ppo.yml and a2c.yml (their sweeps).
    assert cfg.rl.ppo == {
        "learning_rate": 3e-3,
        "n_steps": 8,
        "batch_size": 4096,
        "n_epochs": 4,
        "gamma": 1.0,
        "ent_coef": 1.0,
        "normalize_advantage": False,
    }
    assert cfg.rl.a2c == {
        "learning_rate": 1e-3,
        "n_steps": 4,
        "gamma": 1.0,
        "ent_coef": 1.0,
        "normalize_advantage": False,
    }
    # REINFORCE's keys: sparse_recovery's entry in hyperparams/reinforce.yml (its sweep).
    rl = cfg.rl
    assert (
        rl.lr,
        rl.rollout_steps,
        rl.reinforce_num_envs,
        rl.reinforce_scale_free,
        rl.entropy_coef,
        rl.gamma,
    ) == (3e-3, 16, 16, True, 1.0, 1.0)


def test_shipped_hyperparams_files_hold_valid_entries_for_registered_tasks() -> None:
    for algorithm in ("ppo", "a2c", "reinforce"):
        path = REPO / "configs" / "hyperparams" / f"{algorithm}.yml"
        tasks = yaml.safe_load(path.read_text())
        assert tasks and set(tasks) <= set(registry.TASKS), path
        for task in tasks:
            assert hyperparams_entry(algorithm, task)  # validated, non-empty
    # Today's values: swept entries (the library's defaults for the keys they leave out).
    assert hyperparams_entry("ppo", "sparse_recovery") == {**SB3_DEFAULTS["ppo"], "n_steps": 8}
    assert hyperparams_entry("a2c", "denoising") == {**SB3_DEFAULTS["a2c"], "n_steps": 4}
    assert hyperparams_entry("ppo", "toy") == {}  # no entry: the library's defaults


def test_merge_order_library_file_config_then_set(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "hyperparams"
    folder.mkdir()
    (folder / "ppo.yml").write_text(
        "sparse_recovery: {n_epochs: 7, gae_lambda: 0.9, clip_range: 0.3}\n"
        "denoising: {n_epochs: 1}\n"
    )
    (folder / "reinforce.yml").write_text("sparse_recovery: {lr: 0.02, rollout_steps: 8}\n")
    monkeypatch.setattr(
        config,
        "hyperparams_path",
        lambda algorithm: (
            folder / f"{algorithm}.yml" if (folder / f"{algorithm}.yml").is_file() else None
        ),
    )
    raw = base(ppo={"gae_lambda": 0.8, "clip_range": 0.25}, lr=0.05)
    raw = apply_overrides(raw, ["rl.ppo.clip_range=lin_0.1"])
    cfg = from_dict(raw)
    assert cfg.rl.ppo["learning_rate"] == 3e-3  # library default
    assert cfg.rl.ppo["n_epochs"] == 7  # the file's entry for the task
    assert cfg.rl.ppo["gae_lambda"] == 0.8  # the experiment config
    assert cfg.rl.ppo["clip_range"] == "lin_0.1"  # --set
    assert cfg.rl.lr == 0.05 and cfg.rl.rollout_steps == 8  # REINFORCE's flat keys
    # A resolved config (as a run folder saves it) reloads to itself: the file cannot
    # override what it sets.
    saved = cfg.to_dict()
    (folder / "ppo.yml").write_text("sparse_recovery: {n_epochs: 2, gae_lambda: 0.5}\n")
    (folder / "reinforce.yml").write_text("sparse_recovery: {lr: 0.9, rollout_steps: 2}\n")
    assert from_dict(saved).rl == cfg.rl
    (folder / "ppo.yml").write_text("sparse_recovery: {n_epochz: 7}\n")
    with pytest.raises(ConfigError, match=r"hyperparams/ppo.yml: sparse_recovery.n_epochz"):
        from_dict(base())
    (folder / "reinforce.yml").write_text("sparse_recovery: {num_envs: 7}\n")
    (folder / "ppo.yml").write_text("")
    with pytest.raises(ConfigError, match=r"reinforce.yml: sparse_recovery.num_envs: not a"):
        from_dict(base())


def test_reinforce_env_count_must_not_be_negative() -> None:
    assert "rl.reinforce_num_envs: must be" in error_of(base(reinforce_num_envs=-1))

"""Unit tests of ``l2s_gym.trials`` on hand-built configs: trial keys, the plan, the
``done`` digest (what a stage-1 trial depends on), ``trial_config``'s copies and the resume
check. No training: every test reads or writes a few small files at most."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import yaml
from conftest import TOY_CONFIG

from l2s_gym.config import ConfigError, from_dict
from l2s_gym.trials import (
    DONE,
    STAGE1_KEYS,
    Trial,
    _mark_done,
    _trial_digest,
    check_resume_config,
    format_cost,
    is_done,
    make_plan,
    trial_config,
)


def toy_dict(**changes) -> dict:
    """The toy config as a full dict (through the schema), with ``section.key`` changes."""
    data = from_dict(yaml.safe_load(TOY_CONFIG)).to_dict()
    for dotted, value in changes.items():
        *parents, last = dotted.split("__")
        node = data
        for part in parents:
            node = node[part]
        node[last] = value
    return data


def test_trial_keys_and_needs() -> None:
    assert format_cost(0.0) == "0" and format_cost(0.3) == "0.3" and format_cost(1e-5) == "1e-05"
    s1 = Trial("stage1", 3)
    s2 = Trial("stage2", 3, "reverse_kl", 1e-5, "gain")
    assert s1.key == "seed-3/stage1" and s1.needs == ()
    assert s2.key == "seed-3/reverse_kl/cost-1e-05"
    assert s2.needs == (s1,)
    assert Trial.from_dict(s2.to_dict()) == s2


def test_make_plan_is_stage1_per_seed_then_seeds_x_learners_x_costs() -> None:
    plan = make_plan([0, 1], ["a", "b"], [0.0, 0.5, 2.0], scale="gain")
    assert [t.key for t in plan[:2]] == ["seed-0/stage1", "seed-1/stage1"]
    stage2 = plan[2:]
    assert len(stage2) == 2 * 2 * 3 and len({t.key for t in stage2}) == 12
    assert {(t.seed, t.learner, t.cost) for t in stage2} == {
        (s, n, c) for s in (0, 1) for n in ("a", "b") for c in (0.0, 0.5, 2.0)
    }
    assert all(t.kind == "stage2" and t.scale == "gain" for t in stage2)
    # Every stage-2 trial comes after the stage-1 trial it needs.
    position = {t: i for i, t in enumerate(plan)}
    assert all(position[need] < position[t] for t in plan for need in t.needs)


def test_stage1_digest_ignores_stage2_keys_but_not_stage1_keys() -> None:
    base = toy_dict()
    stage2_change = toy_dict(imitation__steps=999)
    assert _trial_digest(base, "stage1") == _trial_digest(stage2_change, "stage1")
    assert _trial_digest(base, "stage2") != _trial_digest(stage2_change, "stage2")
    for change in ({"beta": 0.5}, {"task__val_size": 100}, {"stage1__steps": 7}):
        assert _trial_digest(base, "stage1") != _trial_digest(toy_dict(**change), "stage1")
    digest = _trial_digest(base, "stage1")
    assert digest and all(k.split(".")[0] in STAGE1_KEYS for k in digest)


def test_digest_ignores_plan_and_runtime_keys() -> None:
    base = toy_dict()
    other = toy_dict(seeds=[0, 1, 2], threads=3, compare__learners=["forward_kl"])
    for kind in ("stage1", "stage2"):
        assert _trial_digest(base, kind) == _trial_digest(other, kind)
    assert not any(k.startswith(("seeds", "threads", "compare.learners")) for k in _trial_digest(base))  # fmt: skip


def test_one_policy_knobs_and_grid_reach_only_the_one_policy_trial(tmp_path) -> None:
    """``frontier.one_policy_*`` retrain the price-conditioned trial, not the per-price ones;
    the grid ``frontier.costs`` (a plan key) retrains the one policy, which trains over it."""
    base = toy_dict()
    knob = toy_dict(frontier__one_policy_steps=17, frontier__one_policy_draws=2)
    grid = toy_dict(frontier__costs=[0.0, 5.0])
    assert Trial("stage2", 0, "reverse_kl", one_policy=True).digest_kind == "one_policy"
    assert Trial("stage2", 0, "reverse_kl", 0.3).digest_kind == "stage2"
    assert Trial("stage1", 0).digest_kind == "stage1"
    assert (
        _trial_digest(base, "stage2")
        == _trial_digest(knob, "stage2")
        == _trial_digest(grid, "stage2")
    )
    assert _trial_digest(base, "one_policy") != _trial_digest(knob, "one_policy")
    assert _trial_digest(base, "one_policy") != _trial_digest(grid, "one_policy")
    per_price, one = tmp_path / "p", tmp_path / "o"
    per_price.mkdir(), one.mkdir()
    _mark_done(per_price, base, "stage2")
    _mark_done(one, base, "one_policy")
    assert is_done(per_price, knob, "stage2") and is_done(per_price, grid, "stage2")
    assert not is_done(one, knob, "one_policy") and not is_done(one, grid, "one_policy")
    assert is_done(one, toy_dict(seeds=[0, 1]), "one_policy")  # other plan keys: reused
    # A one-policy trial of an older format (no format in its marker) is trained again.
    old = json.loads((one / DONE).read_text())
    del old["config"]["_one_policy_format"]
    (one / DONE).write_text(json.dumps(old))
    assert not is_done(one, base, "one_policy")
    # A per-price marker written before the knobs were left out (it records them) is reused.
    record = json.loads((per_price / DONE).read_text())
    record["config"].update({"frontier.one_policy_steps": 5, "frontier.one_policy_draws": 3})
    (per_price / DONE).write_text(json.dumps(record))
    assert is_done(per_price, base, "stage2")


def test_is_done_reuses_stage1_across_stage2_changes_only(tmp_path) -> None:
    base = toy_dict()
    assert not is_done(tmp_path, base, "stage1")  # no marker
    _mark_done(tmp_path, base, "stage1")
    assert is_done(tmp_path, base, "stage1")
    assert is_done(tmp_path, toy_dict(imitation__steps=999), "stage1")
    assert not is_done(tmp_path, toy_dict(beta=0.5), "stage1")
    (tmp_path / DONE).write_text("{not json")
    assert not is_done(tmp_path, base, "stage1")


def test_is_done_stage2_sees_a_stage2_change(tmp_path) -> None:
    base = toy_dict()
    _mark_done(tmp_path, base, "stage2")
    record = json.loads((tmp_path / DONE).read_text())
    assert "imitation.steps" in record["config"] and "device" not in record["config"]
    assert is_done(tmp_path, toy_dict(device="cuda"), "stage2")  # runtime only
    assert not is_done(tmp_path, toy_dict(imitation__steps=999), "stage2")


def test_trial_config_copies_a_typed_config_deeply() -> None:
    cfg = from_dict({**yaml.safe_load(TOY_CONFIG), "seeds": [0, 1]})
    copy = trial_config(cfg, 7)
    assert copy.seed == 7 and copy.seeds == []
    assert cfg.seed == 0 and cfg.seeds == [0, 1]
    copy.compare.learners.append("mutated")
    copy.task.params.val_size = 1
    assert "mutated" not in cfg.compare.learners
    assert cfg.task.params.val_size == 256


def test_trial_config_from_a_dict_leaves_the_dict_alone() -> None:
    data = toy_dict(seeds=[4, 5])
    snapshot = json.loads(json.dumps(data))
    cfg = trial_config(data, 5)
    assert cfg.seed == 5 and cfg.seeds == []
    assert data == snapshot


def test_resume_check_allows_plan_and_runtime_keys_and_names_the_first_difference(tmp_path) -> None:  # fmt: skip
    saved = toy_dict()
    check_resume_config(saved, toy_dict(seeds=[0, 1], threads=4, compare__learners=["x"]), tmp_path)  # fmt: skip
    with pytest.raises(ConfigError) as err:
        check_resume_config(saved, toy_dict(beta=0.25), tmp_path)
    message = str(err.value)
    assert "differs from the run's at beta" in message
    assert "(run: 0.05, now: 0.25)" in message and str(tmp_path) in message


def test_one_policy_trial_trains_twice_the_steps_and_validates_as_often() -> None:
    """A one-policy trial's ``imitation``: ``ONE_POLICY_STEPS`` x the steps by default (or
    ``frontier.one_policy_steps``), ``val_every`` scaled by as much (as many validations as a
    per-price trial, each over the whole grid); nothing else changes."""

    from l2s_gym.trials import ONE_POLICY_STEPS, one_policy_imitation

    cfg = from_dict(toy_dict())
    cfg = replace(cfg, imitation=replace(cfg.imitation, steps=40, val_every=10))
    icfg = one_policy_imitation(cfg)
    assert (icfg.steps, icfg.val_every) == (ONE_POLICY_STEPS * 40, ONE_POLICY_STEPS * 10)
    assert replace(icfg, steps=40, val_every=10) == cfg.imitation
    chosen = replace(cfg, frontier=replace(cfg.frontier, one_policy_steps=60))
    assert (one_policy_imitation(chosen).steps, one_policy_imitation(chosen).val_every) == (60, 15)


def test_a_one_policy_trial_gets_the_layer_budget_its_steps_need() -> None:
    """An RL learner's one-policy trial runs on ``ONE_POLICY_STEPS`` x the layer budget (its
    episodes are spread over the grid); an imitation learner's on fresh batches on the
    budget scaled as its steps are (so the budget does not cut it back to a per-price
    trial's steps); with a trace buffer, which the budget pays for once, it is unchanged."""
    import l2s_gym.agents  # noqa: F401  (registers the learners)
    from l2s_gym.config import check_layer_budget
    from l2s_gym.trials import ONE_POLICY_STEPS, one_policy_config

    cfg = from_dict(toy_dict(imitation__buffer_size=64))
    budget = cfg.compare.layer_budget
    rl = one_policy_config(cfg, "reinforce")
    assert rl.compare.layer_budget == ONE_POLICY_STEPS * budget
    imitation = one_policy_config(cfg, "reverse_kl")
    assert imitation.compare.layer_budget == budget
    assert imitation.imitation.steps == ONE_POLICY_STEPS * cfg.imitation.steps
    steps, batch = cfg.imitation.steps, cfg.imitation.batch_size
    T = 5  # check_layer_budget takes the depth as given
    fresh = from_dict(toy_dict(imitation__buffer_size=0, compare__layer_budget=steps * batch * T))
    one = one_policy_config(fresh, "forward_kl")
    assert one.compare.layer_budget == ONE_POLICY_STEPS * steps * batch * T
    check_layer_budget(one, T, imitation=True)  # funds every step: no ConfigError
    with pytest.raises(ConfigError, match="imitation.steps"):
        check_layer_budget(replace(one, compare=fresh.compare), T, imitation=True)
    fewer = replace(fresh, frontier=replace(fresh.frontier, one_policy_steps=steps // 2))
    assert one_policy_config(fewer, "reverse_kl").compare.layer_budget == steps * batch * T


def test_a_format_4_one_policy_is_current_where_format_5_changed_nothing(tmp_path) -> None:
    """Format 5 funded the steps of imitation one-policy trials on fresh batches: those of
    format 4 train again; a format-4 trial with a trace buffer, or an RL learner's, is
    reused."""
    import l2s_gym.agents  # noqa: F401  (registers the learners)

    def folder(learner: str, cfg: dict) -> object:
        path = tmp_path / str(cfg["imitation"]["buffer_size"]) / learner / "one-policy"
        path.mkdir(parents=True)
        _mark_done(path, cfg, "one_policy")
        record = json.loads((path / DONE).read_text())
        record["config"]["_one_policy_format"] = 4
        (path / DONE).write_text(json.dumps(record))
        return path

    fresh, buffered = toy_dict(imitation__buffer_size=0), toy_dict(imitation__buffer_size=64)
    assert not is_done(folder("reverse_kl", fresh), fresh, "one_policy")
    assert is_done(folder("ppo", fresh), fresh, "one_policy")
    assert is_done(folder("reverse_kl", buffered), buffered, "one_policy")

"""``embodied-report`` on synthetic runs whose aggregates are computed by hand: IQM, mean,
median, optimality gap, probability of improvement, sample-efficiency curves; and bad input
(no match, missing metric, tasks without a common scale, unequal seeds) as one-line errors
before anything is written."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from embodied.report import make_report

BIN = Path(sys.executable).parent


def fake_run(root: Path, name: str, learner: str, env: str, seed: int, final: dict, curve=(), hydra=True) -> Path:
    """A run folder as embodied-train writes it (or, ``hydra=False``, as a benchmark writes a peer's)."""
    run = root / name
    run.mkdir(parents=True)
    if hydra:
        (run / ".hydra").mkdir()
        (run / ".hydra" / "config.yaml").write_text(
            f"seed: {seed}\nlearner:\n  name: {learner}\n  num_envs: ${{train.num_envs}}\nenv:\n  name: {env}\n"
            f"reward:\n  name: env\ntrain:\n  num_envs: 1\n")
    else:
        (run / "run.json").write_text(json.dumps({"learner": learner, "env": env, "reward": "env", "seed": seed}))
    (run / "result.json").write_text(json.dumps(final))
    (run / "metrics.jsonl").write_text("".join(json.dumps({"step": s, **row}) + "\n" for s, row in curve))
    return run


def test_aggregates_equal_the_hand_computed_ones_and_their_intervals_contain_them(tmp_path):
    # IQM: the middle half 1, 2, 3, 10 -> 4.0; mean 15.75; rliable's median is the median over tasks of
    # each task's mean over runs: one task -> 15.75
    a = [0, 0, 1, 2, 3, 10, 10, 100]
    b = [20, 21, 22, 23, 24, 25, 26, 27]  # IQM 23.5; above every run of `a` but its 100
    for s, v in enumerate(a):
        fake_run(tmp_path / "runs", f"sac_s{s}", "sac", "reach", s, {"eval/return": v})
    for s, v in enumerate(b):
        fake_run(tmp_path / "runs", f"sb3_s{s}", "sb3_sac", "reach", s, {"eval/return": v}, hydra=False)
    data = make_report([str(tmp_path / "runs" / "*")], tmp_path / "out", group_by=["learner"], reps=1000)
    agg = data["aggregates"]
    assert agg["sac"]["iqm"]["value"] == pytest.approx(4.0)
    assert agg["sac"]["mean"]["value"] == pytest.approx(15.75)
    assert agg["sac"]["median"]["value"] == pytest.approx(15.75)
    assert agg["sb3_sac"]["iqm"]["value"] == pytest.approx(23.5)
    for g, want in (("sac", 4.0), ("sb3_sac", 23.5)):
        lo, hi = agg[g]["iqm"]["ci"]
        assert lo <= want <= hi and lo < hi  # a real interval around the point
    lo, hi = agg["sac"]["iqm"]["ci"]
    assert 0 <= lo and hi <= 100 and hi - lo < 50  # the trimmed mean resists the outlier at 100
    assert "optimality_gap" not in agg["sac"]  # raw returns: no threshold to measure a gap to
    pi = data["probability_of_improvement"]
    got = pi["sac > sb3_sac"]  # of the 64 pairs, `a`'s 100 beats the 8 of `b`: 8 / 64
    assert got["value"] == pytest.approx(0.125) and got["ci"][0] <= 0.125 <= got["ci"][1]
    report = (tmp_path / "out" / "report.md").read_text()
    assert "| sac | reach | 8 | 4.00 [" in report and "| sac > sb3_sac | 0.12 [" in report
    for png in ("aggregates.png", "profile.png", "sample_efficiency.png"):
        assert (tmp_path / "out" / png).stat().st_size > 1000
    assert json.loads((tmp_path / "out" / "report.json").read_text())["aggregates"]["sac"]["runs"] == 8


def test_success_rates_pool_tasks_with_an_optimality_gap_and_a_probability_of_improvement(tmp_path):
    scores = {"sac": {"reach": [1.0, 1.0, 0.5, 0.0], "push": [0.5, 0.5, 0.0, 1.0]},
              "ppo": {"reach": [1.0, 0.5, 0.5, 0.5], "push": [0.0, 0.0, 0.5, 0.0]}}
    for learner, tasks in scores.items():
        for env, values in tasks.items():
            for s, v in enumerate(values):
                fake_run(tmp_path / "runs", f"{learner}_{env}_s{s}", learner, env, s, {"eval/success": v})
    data = make_report([str(tmp_path / "runs")], tmp_path / "out", metric="eval/success", group_by=["learner"],
                       compare=["sac:ppo"], reps=1000)
    sac = np.array(scores["sac"]["reach"] + scores["sac"]["push"])
    agg = data["aggregates"]["sac"]
    assert agg["tasks"] == ["push", "reach"] and agg["runs"] == 4
    assert agg["mean"]["value"] == pytest.approx(sac.mean())
    assert agg["optimality_gap"]["value"] == pytest.approx(1 - np.minimum(sac, 1).mean())
    assert agg["iqm"]["value"] == pytest.approx(np.sort(sac)[2:6].mean())  # 8 scores: the middle 4
    # P(sac > ppo) per task by counting pairs (ties count half), then averaged over the tasks
    def p(x, y):
        return np.mean([(a > b) + 0.5 * (a == b) for a in x for b in y])
    want = np.mean([p(scores["sac"][t], scores["ppo"][t]) for t in ("push", "reach")])
    got = data["probability_of_improvement"]["sac > ppo"]
    assert got["value"] == pytest.approx(want) and got["ci"][0] <= want <= got["ci"][1]
    prof = data["performance_profile"]
    assert prof["tau"][0] == 0.0 and prof["tau"][-1] == 1.0
    assert prof["sac"]["fraction"][0] == pytest.approx((sac > 0).mean())


def test_the_sample_efficiency_curve_is_the_iqm_at_each_evaluation_step(tmp_path):
    for s in range(4):  # run s scores s + step / 100 at steps 100, 200, 300 (seed 3 also at 400)
        steps = [100, 200, 300] + ([400] if s == 3 else [])
        fake_run(tmp_path / "runs", f"s{s}", "sac", "reach", s, {"eval/return": s + steps[-1] / 100},
                 curve=[(st, {"eval/return": s + st / 100, "train/return": -1.0}) for st in steps])
    data = make_report([str(tmp_path / "runs")], tmp_path / "out", group_by=["learner"], reps=200)
    curve = data["sample_efficiency"]["sac"]
    assert curve["step"] == [100, 200, 300]  # the steps every run reached
    for i, st in enumerate(curve["step"]):  # 4 runs: IQM = mean of the middle two, 1 and 2, plus step / 100
        assert curve["iqm"][i] == pytest.approx(1.5 + st / 100)
        assert curve["ci"][0][i] <= curve["iqm"][i] <= curve["ci"][1][i]


def test_normalised_returns_pool_tasks(tmp_path):
    for s, (r, p) in enumerate([(10, 100), (20, 200), (30, 300), (40, 400)]):
        fake_run(tmp_path / "runs", f"reach_s{s}", "sac", "reach", s, {"eval/return": r})
        fake_run(tmp_path / "runs", f"push_s{s}", "sac", "push", s, {"eval/return": p})
    data = make_report([str(tmp_path / "runs")], tmp_path / "out", group_by=["learner"],
                       normalize=["reach=0:50", "push=0:500"], reps=200)
    agg = data["aggregates"]["sac"]
    assert agg["per_run"]["reach"] == [0.2, 0.4, 0.6, 0.8] and agg["per_run"]["push"] == [0.2, 0.4, 0.6, 0.8]
    assert agg["mean"]["value"] == pytest.approx(0.5) and agg["optimality_gap"]["value"] == pytest.approx(0.5)


def _cli(*args):
    return subprocess.run([str(BIN / "embodied-report"), *map(str, args)], capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("case", ["no_match", "missing_metric", "mixed_tasks", "unequal_seeds", "bad_compare",
                                  "bad_normalize"])
def test_bad_input_is_a_one_line_error_and_nothing_is_written(tmp_path, case):
    runs = tmp_path / "runs"
    for s in range(3):
        fake_run(runs, f"reach_s{s}", "sac", "reach", s, {"eval/return": s, "eval/success": 1.0})
    args = [runs, "--group", "learner"]
    expect = {"no_match": "matches no run folder", "missing_metric": "no eval/progress",
              "mixed_tasks": "mixes tasks push, reach", "unequal_seeds": "unequal runs per task (push: 1, reach: 3)",
              "bad_compare": "--compare sac:ppo", "bad_normalize": "--normalize reach: write task=low:high"}[case]
    if case == "no_match":
        args = [tmp_path / "nothing_*", *args[1:]]
    elif case == "missing_metric":
        args += ["--metric", "eval/progress"]
    elif case in ("mixed_tasks", "unequal_seeds"):
        fake_run(runs, "push_s0", "sac", "push", 0, {"eval/return": 1, "eval/success": 0.0})
        if case == "unequal_seeds":
            args += ["--metric", "eval/success"]
    elif case == "bad_compare":
        args += ["--compare", "sac:ppo"]
    else:
        args += ["--normalize", "reach"]
    out = tmp_path / "out"
    proc = _cli(*args, "--out", out)
    assert proc.returncode == 2 and expect in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert not out.exists()


def test_the_command_writes_the_report(tmp_path):
    for s in range(3):
        fake_run(tmp_path / "runs", f"s{s}", "sac", "reach", s, {"eval/success": [0.0, 0.5, 1.0][s]},
                 curve=[(100, {"eval/success": 0.0}), (200, {"eval/success": [0.0, 0.5, 1.0][s]})])
    proc = _cli(tmp_path / "runs" / "s*", "--metric", "eval/success", "--out", tmp_path / "out", "--reps", "200")
    assert proc.returncode == 0, proc.stderr
    assert "| sac/env | reach | 3 | 0.50 [" in proc.stdout
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["aggregates.png", "profile.png", "report.json",
                                                                    "report.md", "sample_efficiency.png"]


def test_reports_rerun_to_the_same_figures_and_resumed_runs_count_their_last_evaluation(tmp_path):
    for s in range(4):  # seed 0 was resumed: step 200 logged twice, the later row (1.0) is what stands
        curve = [(100, {"eval/success": 0.0}), (200, {"eval/success": 0.0})]
        curve += [(200, {"eval/success": 1.0})] if s == 0 else []
        curve += [(300, {"eval/success": [1.0, 0.5, 0.5, 0.0][s]})]
        fake_run(tmp_path / "runs", f"s{s}", "sac", "reach", s, {"eval/success": [1.0, 0.5, 0.5, 0.0][s]}, curve=curve)
    first = make_report([str(tmp_path / "runs")], tmp_path / "a", metric="eval/success", group_by=["learner"], reps=300)
    again = make_report([str(tmp_path / "runs")], tmp_path / "b", metric="eval/success", group_by=["learner"], reps=300)
    assert first["aggregates"] == again["aggregates"] and first["performance_profile"] == again["performance_profile"]
    assert first["sample_efficiency"] == again["sample_efficiency"]
    assert first["sample_efficiency"]["sac"]["iqm"][1] == pytest.approx(0.0)  # at 200: 1.0, 0, 0, 0 -> IQM 0


def test_unfinished_runs_are_named_and_default_comparisons_skip_groups_on_other_tasks(tmp_path):
    for s in range(2):
        fake_run(tmp_path / "runs", f"sac_reach_s{s}", "sac", "reach", s, {"eval/success": 1.0})
        fake_run(tmp_path / "runs", f"sac_push_s{s}", "sac", "push", s, {"eval/success": 0.5})
        fake_run(tmp_path / "runs", f"ppo_reach_s{s}", "ppo", "reach", s, {"eval/success": 0.5})
    data = make_report([str(tmp_path / "runs")], tmp_path / "out", metric="eval/success", group_by=["learner", "env"],
                       reps=200)  # sac/reach, sac/push, ppo/reach: only the two reach groups are compared
    assert list(data["probability_of_improvement"]) == ["ppo/reach > sac/reach"]
    (tmp_path / "runs" / "sac_push_s1" / "result.json").unlink()  # a run still going
    with pytest.raises(ValueError, match="sac_push_s1 has no result.json: an unfinished run"):
        make_report([str(tmp_path / "runs")], tmp_path / "out2", metric="eval/success", reps=200)
    assert not (tmp_path / "out2").exists()


def test_a_key_set_to_null_is_a_group_and_a_key_the_config_lacks_is_an_error(tmp_path):
    runs = tmp_path / "runs"
    for s in range(2):
        for address, value in (("null", 0.5 + 0.1 * s), ("local", 0.9 + 0.1 * s)):
            run = fake_run(runs, f"{address}_s{s}", "sac", "reach", s, {"eval/success": value})
            config = run / ".hydra" / "config.yaml"
            config.write_text(config.read_text().replace("train:\n", f"train:\n  ray:\n    address: {address}\n"))
    data = make_report([str(runs)], tmp_path / "out", metric="eval/success", group_by=["train.ray.address"],
                       compare=["local:null"], reps=200)
    assert data["aggregates"]["null"]["per_run"]["reach"] == pytest.approx([0.5, 0.6])
    assert data["aggregates"]["local"]["per_run"]["reach"] == pytest.approx([0.9, 1.0])
    with pytest.raises(ValueError, match="no train.ray.workers to group by"):
        make_report([str(runs)], tmp_path / "out2", metric="eval/success", group_by=["train.ray.workers"], reps=200)

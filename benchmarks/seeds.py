"""Multi-seed studies of the project's documented experiments, reported with ``embodied-report``.

Each study is one ``embodied-train`` command run over seeds 0..N-1 (one thread each, as a user
runs it); each finished run's record (``.hydra/config.yaml``, ``result.json``,
``metrics.jsonl``: what ``embodied-report`` reads, not the checkpoints or videos) is kept in
``benchmarks/results/runs/<study>/<run>/``, and the study's report (rliable IQM with 95 %
stratified-bootstrap CIs, sample-efficiency curve, PNGs) is written to
``benchmarks/results/reports/<study>/`` by the same code as

    embodied-report benchmarks/results/runs/<study> --metric eval/success --out benchmarks/results/reports/<study>

A rerun skips the seeds whose record is there already.

    python -m benchmarks.seeds default --seeds 5       # the README's default run (SAC, reach, 8,000 steps)
    python -m benchmarks.seeds ppo_reach --seeds 5     # PPO on reach (+experiment=ppo_reach)
    python -m benchmarks.seeds push --only 0,2,4 & python -m benchmarks.seeds push --only 1,3   # two at a time
    python -m benchmarks.seeds lift --only 0       # makes its demonstrations first (embodied-make-dataset, seed 0)
"""

from __future__ import annotations

import argparse
import os
import shutil
from pathlib import Path

from benchmarks.runner import BIN, keep_run, run_cli

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results"
STUDIES = {  # name -> (title, embodied-train overrides, metrics reported)
    "default": ("The default run: SAC from state on the built-in reach, 8,000 env steps (make train)",
                [], ["eval/success", "eval/return"]),
    "ppo_reach": ("PPO from state on reach (+experiment=ppo_reach: 1 env x 1024-step rollouts, 16,384 env steps)",
                  ["+experiment=ppo_reach"], ["eval/success", "eval/return"]),
    "push": ("SAC from state on the built-in push, defaults (2x256, 2 LayerNorm critics, UTD 1), 100,000 env steps, "
             "eval on 20 episodes every 10,000", ["env=push", "train.total_steps=100000", "eval.every=10000",
                                                  "eval.episodes=20", "checkpoint.every=20000"],
             ["eval/success", "eval/return"]),
    "push_150k": ("SAC from state on the built-in push, defaults, 150,000 env steps (the push study ran on: its success "
                  "still rose at 100k), eval on 20 episodes every 10,000",
                  ["env=push", "train.total_steps=150000", "eval.every=10000", "eval.episodes=20",
                   "checkpoint.every=50000"], ["eval/success", "eval/return"]),
    "lift": ("SAC from state on robosuite Lift (Panda, OSC_POSE, dense reward, 200-step episodes) with 20 scripted "
             "demonstrations (4,000 transitions, success only) as half of each batch, defaults otherwise, 100,000 env "
             "steps, eval on 20 episodes every 10,000",
             ["env=robosuite_lift", "env.pixels=false", "train.dataset=runs/seeds/_data/lift_demos/scripted",
              "train.total_steps=100000", "eval.every=10000", "eval.episodes=20", "checkpoint.every=20000"],
             ["eval/success", "eval/return"]),
    # SAC vs stable-baselines3 on harder gymnasium tasks: ours here, SB3's side in gym_vs_sb3.py
    "hopper": ("SAC from state on gymnasium Hopper-v5, defaults, 100,000 env steps, eval on 10 episodes every 10,000",
               ["env=gym_hopper", "train.total_steps=100000", "eval.every=10000", "checkpoint.every=50000"],
               ["eval/return"]),
    "halfcheetah": ("SAC from state on gymnasium HalfCheetah-v5, defaults, 100,000 env steps, eval on 10 episodes "
                    "every 10,000", ["env=gym_halfcheetah", "train.total_steps=100000", "eval.every=10000",
                                     "checkpoint.every=50000"], ["eval/return"]),
    # PPO vs stable-baselines3 PPO (CleanRL's continuous defaults on both sides): SB3's side in gym_vs_sb3.py
    "ppo_hopper": ("PPO from state on gymnasium Hopper-v5 (+experiment=ppo_hopper: CleanRL's continuous defaults), "
                   "300,000 env steps, eval on 10 episodes every 50,000", ["+experiment=ppo_hopper",
                                                                           "train.total_steps=300000"], ["eval/return"]),
    "ppo_halfcheetah": ("PPO from state on gymnasium HalfCheetah-v5 (+experiment=ppo_halfcheetah: CleanRL's continuous "
                        "defaults), 300,000 env steps, eval on 10 episodes every 50,000",
                        ["+experiment=ppo_halfcheetah", "train.total_steps=300000"], ["eval/return"]),
    "invpendulum": ("SAC from state on gymnasium InvertedPendulum-v5, defaults, 12,000 env steps, eval on 10 episodes "
                    "every 2,000", ["env=gym", "env.name=gym/InvertedPendulum-v5", "train.total_steps=12000",
                                    "eval.every=2000", "checkpoint.every=12000"], ["eval/return"]),
    "pixels": ("SAC from 64x64 pixels on reach (+experiment=reach_pixels), 25,000 env steps",
               ["+experiment=reach_pixels"], ["eval/success", "eval/return"]),
}
# with Ray rollout workers vs the loop's local envs, on reach (benchmarks/ray_learning.py): the final
# evaluation only, over 20 episodes
_SAC_REACH = ["env=reach", "learner=sac", "train.total_steps=8000", "eval.every=8000", "eval.episodes=20",
              "checkpoint.every=8000"]
_PPO_REACH = ["env=reach", "learner=ppo", "train.num_envs=2", "learner.num_steps=512", "learner.num_minibatches=16",
              "train.total_steps=16384", "eval.every=16384", "eval.episodes=20", "checkpoint.every=16384"]
_RAY = ["train.ray.address=local", "train.ray.workers=2"]
STUDIES.update({
    "ray_sac_local": ("SAC defaults on reach, 8,000 env steps, the loop's local env", _SAC_REACH,
                      ["eval/success", "eval/return"]),
    "ray_sac_workers": ("SAC defaults on reach, 8,000 env steps, 2 Ray rollout workers (one env each)",
                        _SAC_REACH + _RAY, ["eval/success", "eval/return"]),
    "ray_ppo_local": ("PPO on reach, 2 envs x 512-step rollouts, 16 minibatches, 16,384 env steps, local envs",
                      _PPO_REACH, ["eval/success", "eval/return"]),
    "ray_ppo_workers": ("PPO on reach, 2 envs x 512-step rollouts, 16 minibatches, 16,384 env steps, 2 Ray rollout "
                        "workers x 1 env", _PPO_REACH + _RAY, ["eval/success", "eval/return"]),
})
# studies that learn from demonstrations: the dataset their train.dataset override names
# (relative to the repository root), made once with seed 0 by the documented embodied-make-dataset
DATA = {"lift": ("runs/seeds/_data/lift_demos", ["env=robosuite_lift", "env.pixels=false", "kinds=[scripted]",
                                                 "success_only=true", "steps=4000", "seed=0"])}


def run_seed(study: str, seed: int, scratch: Path) -> Path:
    """One seed of ``study``; its record copied under results/runs/<study>/."""
    _, overrides, _ = STUDIES[study]
    record = RESULTS / "runs" / study / f"s{seed}"
    run_dir = scratch / study / f"s{seed}"
    if run_dir.exists():
        shutil.rmtree(run_dir)  # an unfinished earlier attempt: start the seed again
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    cmd = [str(BIN / "embodied-train"), *overrides, f"seed={seed}", "train.threads=1", "eval.video_episodes=0",
           "wandb.mode=disabled", f"run_dir={run_dir}"]
    result = run_cli(cmd, run_dir.with_suffix(".log"))
    keep_run(run_dir, record, seconds=result["seconds"])
    print(f"{study} seed {seed}: success {result.get('eval/success')} return {result.get('eval/return')} "
          f"in {result['seconds']:.0f} s", flush=True)
    return record


def ensure_data(study: str) -> None:
    """The study's demonstrations, generated once (into a folder of this process, renamed into
    place when whole: two processes of one study may start together)."""
    if study not in DATA:
        return
    folder, args = DATA[study]
    folder = ROOT / folder
    if (folder / "generation.json").exists():  # embodied-make-dataset writes it last
        return
    partial = folder.with_name(f".{folder.name}.{os.getpid()}.partial")
    if partial.exists():
        shutil.rmtree(partial)
    partial.parent.mkdir(parents=True, exist_ok=True)
    run_cli([str(BIN / "embodied-make-dataset"), *args, f"output={partial}"], partial.with_suffix(".log"))
    try:
        partial.rename(folder)
    except OSError:  # another process put its copy in place first: the same data (same seed)
        shutil.rmtree(partial)


def check_record(study: str, seed: int) -> bool:
    """True when seed's record is there, made with the study's current overrides (else an error)."""
    record = RESULTS / "runs" / study / f"s{seed}"
    if not (record / "result.json").exists():
        return False
    from omegaconf import OmegaConf

    made = OmegaConf.load(record / ".hydra" / "overrides.yaml")
    want = [o for o in STUDIES[study][1]]
    if [o for o in made if not o.startswith(("seed=", "train.threads=", "eval.video_episodes=", "wandb.mode=",
                                            "run_dir="))] != want:
        raise SystemExit(f"{record} was made with overrides {list(made)}, the study now has {want}: "
                         "delete the old records or keep the study as it was")
    return True


def report(study: str, seeds: int) -> str:
    """The study's report over seeds 0..seeds-1 (the records of other seeds stay out)."""
    from embodied.report import make_report

    title, _, metrics = STUDIES[study]
    runs = [str(RESULTS / "runs" / study / f"s{seed}") for seed in range(seeds)]
    text = []
    for metric in metrics:
        out = RESULTS / "reports" / study / metric.replace("/", "_")
        make_report(runs, out, metric=metric, group_by=["learner", "reward"], title=f"{title}: {metric}")
        text.append((out / "report.md").read_text())
    return "\n".join(text)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("study", choices=sorted(STUDIES))
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--scratch", default="runs/seeds", help="where the full run folders go")
    parser.add_argument("--report-only", action="store_true")
    parser.add_argument("--only", type=lambda s: [int(x) for x in s.split(",")], default=None,
                        help="run just these seeds (e.g. 1,3: two calls side by side); report once all are in")
    args = parser.parse_args(argv)
    if not args.report_only:
        ensure_data(args.study)
        for seed in args.only if args.only is not None else range(args.seeds):
            if not check_record(args.study, seed):
                run_seed(args.study, seed, Path(args.scratch))
    missing = [seed for seed in range(args.seeds) if not check_record(args.study, seed)]
    if missing:
        print(f"{args.study}: seeds {missing} have no record yet; the report waits for all {args.seeds}")
        return
    print(report(args.study, args.seeds))


if __name__ == "__main__":
    main()

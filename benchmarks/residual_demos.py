"""Residual RL demonstrations for the README: BC base vs residual RL vs SAC with the same
demos (RLPD-style), each from 5 seeds, reported with ``embodied-report`` (rliable IQM with 95 %
stratified-bootstrap CIs, probabilities of improvement).

Per task and seed ``s``:

1. scripted demonstrations (``embodied-make-dataset kinds=[scripted] success_only=true``,
   sparse reward ending at success), once per task;
2. a BC base (``learner=bc``, seed ``s``) cloned from them: its success is the "BC base" row;
3. ``learner=residual base_policy=<that base>`` for ``steps`` env steps with the demos as
   half of each batch (``+experiment=residual_<task>``);
4. ``learner=sac`` from scratch with the same demos (``offline_ratio=0.5``) and the same
   critic ensemble, update ratio and budget (``+experiment=rlpd_<task>``).

``push_act`` replaces the BC base by a LeRobot ACT that ``lerobot-train`` fits once (seed 0)
on pixel demonstrations (front camera 64 px + proprio; ``ACT_FLAGS``). Its "base" row is the
residual learner at step 0 (a zero-initialised residual plays the base exactly, tested), so
the base and the residual are scored on the same eval episodes of each seed. It has no SAC
row: SAC on push from state with the same demos is the ``push`` task's.

Every policy is evaluated on the same ``episodes`` episodes (fixed eval seeds). Each finished
run's record (``metrics.jsonl``, ``result.json``, its config, a ``run.json`` naming the method) is
kept in ``benchmarks/results/runs/residual/<task>_<method>/s<seed>/`` (a rerun skips it; a residual
run whose BC base is gone clones it again with the same seed). The report per task goes to
``benchmarks/results/reports/residual/<task>/``, the tables to ``benchmarks/results/residual_demos.md``.

    python -m benchmarks.residual_demos --tasks push lift push_act --seeds 5 --jobs 2
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from benchmarks.runner import BIN, ENV, finished, has_record, keep_run, minutes_per_run, report_section, run_cli

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
RECORDS = RESULTS / "runs" / "residual"

PIXELS = ["env.pixels=true", "env.cameras=[front]", "env.image_size=64"]
TASKS = {
    "push": {"env": "push", "flags": [], "demo_steps": 6000, "bc_updates": 3000, "label": "push (built-in, state)"},
    # The base is a LeRobot ACT (front camera + proprio) trained once by lerobot-train on the
    # demos, seed 0; each seed's "base" row is that ACT under the seed's eval episodes.
    "push_act": {"env": "push", "flags": PIXELS, "demo_steps": 6000, "experiment": "push", "base": "act",
                 "label": "push (built-in), LeRobot ACT base (camera + proprio), residual from state"},
    "lift": {"env": "robosuite_lift", "flags": ["env.pixels=false", "env.cameras=null", "env.max_episode_steps=150"], "demo_steps": 6000,
             "bc_updates": 3000, "label": "robosuite Lift (Panda, state)"},
}
SPARSE = ["env.sparse_reward=true", "env.terminate_on_success=true"]
# LeRobot's ACT at a size that trains on one CPU core in about 45 min (dim 256, 2+2 encoder layers,
# ResNet-18 from scratch, lr 1e-4 instead of 1e-5 for the short run); the README gives the
# full-size command. One queue per env through the chunk executor: chunks of 20, 10 executed.
ACT_STEPS = 4000
ACT_FLAGS = ["--policy.type=act", "--policy.device=cpu", "--policy.push_to_hub=false",
             "--policy.pretrained_backbone_weights=null", "--policy.chunk_size=20", "--policy.n_action_steps=10",
             "--policy.dim_model=256", "--policy.dim_feedforward=1024", "--policy.n_encoder_layers=2",
             "--policy.n_vae_encoder_layers=2", "--policy.optimizer_lr=1e-4", "--policy.optimizer_lr_backbone=1e-4",
             "--batch_size=32", f"--steps={ACT_STEPS}", "--save_freq=2000", "--log_freq=200", "--seed=0",
             "--num_workers=0", "--wandb.enable=false"]


def record(task: str, method: str, seed: int) -> Path:
    return RECORDS / f"{task}_{method}" / f"s{seed}"


def settings(task: str, method: str, steps: int, episodes: int) -> dict:
    spec = TASKS[task]
    return {"demo_steps": spec["demo_steps"], "bc_updates": spec.get("bc_updates"), "episodes": episodes,
            "steps": 0 if method == "bc" else steps, "base": spec.get("base", "bc")}


def demos(task: str, root: Path) -> Path:
    spec = TASKS[task]
    out = root / f"{task}_demos"
    if not (out / "scripted" / "meta" / "info.json").exists():
        env_args = [f"env={spec['env']}", *spec["flags"], *SPARSE]
        run_cli([str(BIN / "embodied-make-dataset"), *env_args, "kinds=[scripted]", "success_only=true",
              f"steps={spec['demo_steps']}", "expert_noise=0.3", f"output={out}"], root / f"{task}_demos.log")
    return out / "scripted"


def act_base(task: str, root: Path, data: Path) -> Path:
    """LeRobot's own trainer on the demos, once per task (reused when its checkpoint exists)."""
    out = root / f"{task}_base"
    model = out / "checkpoints" / "last" / "pretrained_model"
    if not (model / "model.safetensors").exists():
        log = root / f"{task}_base.log"
        with open(log, "w") as f:
            proc = subprocess.run([str(BIN / "lerobot-train"), f"--dataset.repo_id=local/{task}", f"--dataset.root={data}",
                                   f"--output_dir={out}", *ACT_FLAGS], stdout=f, stderr=subprocess.STDOUT,
                                  env={**ENV, "HF_HUB_OFFLINE": "1"})
        if proc.returncode != 0:
            raise RuntimeError(f"lerobot-train failed ({proc.returncode}); see {log}")
    return model


def one(task: str, seed: int, method: str, root: Path, steps: int, episodes: int, data: Path) -> dict:
    spec = TASKS[task]
    flags = [*spec["flags"], *SPARSE, f"seed={seed}", f"eval.episodes={episodes}", "eval.video_episodes=0",
             "wandb.mode=disabled", "train.threads=1", f"train.dataset={data}"]
    experiment = spec.get("experiment", task)
    if spec.get("base") == "act":  # the base row: the residual at step 0 plays the ACT exactly (zero init)
        base = root / f"{task}_base" / "checkpoints" / "last" / "pretrained_model"
        cmd = [f"+experiment=residual_{experiment}", f"base_policy={base}",
               f"train.total_steps={0 if method == 'bc' else steps}", f"eval.every={max(steps, 1)}",
               f"run_dir={root / f'{task}_{method}_s{seed}'}"]
    elif method == "bc":
        base = root / f"{task}_bc_s{seed}"
        cmd = [f"env={spec['env']}", "learner=bc", f"train.offline_updates={spec['bc_updates']}", "train.total_steps=0",
               f"checkpoint.every={spec['bc_updates']}", f"run_dir={base}"]
    elif method == "residual":
        cmd = [f"+experiment=residual_{experiment}", f"base_policy={root / f'{task}_bc_s{seed}'}",
               f"train.total_steps={steps}", f"eval.every={steps}", f"run_dir={root / f'{task}_residual_s{seed}'}"]
    else:
        cmd = [f"+experiment=rlpd_{experiment}", f"train.total_steps={steps}", f"eval.every={steps}",
               f"run_dir={root / f'{task}_sac_s{seed}'}"]
    run_dir = next(Path(c.split("=", 1)[1]) for c in cmd if c.startswith("run_dir="))
    if run_dir.exists():
        shutil.rmtree(run_dir)  # an unfinished earlier attempt: start it again
    result = run_cli([str(BIN / "embodied-train"), *flags, *cmd], root / f"{task}_{method}_s{seed}.log")
    target = record(task, method, seed)
    if not (target / "result.json").exists():  # a BC base cloned again for a residual run keeps its first record
        keep_run(run_dir, target, {"learner": method, "env": spec["env"], "reward": "sparse", "seed": seed,
                                   "settings": settings(task, method, steps, episodes)}, result["seconds"])
    print(f"{task} {method} seed {seed}: success {result['eval/success']:.2f} in {result['seconds'] / 60:.1f} min",
          flush=True)
    return result


NAMES = {"bc": "BC base (frozen)", "residual": "residual RL over it", "sac": "SAC from scratch + same demos"}


def methods(task: str) -> tuple[str, ...]:
    return ("bc", "residual") if TASKS[task].get("base") == "act" else ("bc", "residual", "sac")


def write_table(n: int) -> str:
    """The report of every task whose methods have all of seeds 0..n-1 recorded."""
    from embodied.report import make_report

    lines = ["# Residual RL: BC base vs residual RL vs SAC with the same demos (`residual_demos`)", "",
             "Sparse reward (1 at success, episode ends there), scripted demonstrations (success only) as half of "
             "each batch, the same critic ensemble (10 heads, 128x128, LayerNorm), batch 128 and 4 critic updates "
             "per env step for both RL learners. Success over the same evaluation episodes per seed. Groups: `bc` "
             "the frozen base (for push_act the LeRobot ACT, scored as the residual at step 0), `residual` the "
             "residual RL over it, `sac` SAC from scratch with the same demos. `benchmarks/residual_demos.py`.", ""]
    for task in TASKS:
        runs = [record(task, m, s) for m in methods(task) for s in range(n)]
        if not finished(runs):
            continue
        out = RESULTS / "reports" / "residual" / task
        compare = ["residual:bc"] + (["residual:sac"] if "sac" in methods(task) else [])
        make_report([str(r) for r in runs], out, metric="eval/success", group_by=["learner"], compare=compare,
                    title=f"{TASKS[task]['label']}: eval/success")
        lines += [report_section(out), "", "| method | env steps | minutes per run (mean over seeds) |",
                  "|---|---:|---:|"]
        for m in methods(task):
            made = json.loads((record(task, m, 0) / "run.json").read_text())["settings"]
            minutes = minutes_per_run([record(task, m, s) for s in range(n)])
            name = "LeRobot ACT base (frozen)" if m == "bc" and TASKS[task].get("base") == "act" else NAMES[m]
            lines.append(f"| {name} (`{m}`) | {made['steps']} | {minutes:.1f} |")
        lines.append("")
    text = "\n".join(lines) + "\n"
    (RESULTS / "residual_demos.md").write_text(text)
    return text


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=10_000)
    parser.add_argument("--episodes", type=int, default=50)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--root", default="runs/residual_demos")
    parser.add_argument("--report-only", action="store_true")
    args = parser.parse_args(argv)
    root = Path(args.root)
    for task in [] if args.report_only else args.tasks:
        root.mkdir(parents=True, exist_ok=True)
        done = {(m, s) for m in methods(task) for s in range(args.seeds)
                if has_record(record(task, m, s), settings(task, m, args.steps, args.episodes))}
        todo = [(s, m) for s in range(args.seeds) for m in methods(task) if m != "bc" and (m, s) not in done]
        data = demos(task, root)
        if TASKS[task].get("base") == "act":  # its base row is the residual at step 0: no clone to make
            act_base(task, root, data)
            todo = [(s, m) for s in range(args.seeds) for m in methods(task) if (m, s) not in done]
            bc = []
        else:  # BC first: a seed needs it for its record, or as the base its residual run starts from
            bc = [s for s in range(args.seeds) if ("bc", s) not in done or any(t == s and m == "residual" for t, m in todo)
                  and not (root / f"{task}_bc_s{s}" / "result.json").exists()]
        with ThreadPoolExecutor(args.jobs) as pool:
            list(pool.map(lambda s: one(task, s, "bc", root, args.steps, args.episodes, data), bc))
            list(pool.map(lambda sm: one(task, sm[0], sm[1], root, args.steps, args.episodes, data), todo))
    print(write_table(args.seeds))


if __name__ == "__main__":
    main()

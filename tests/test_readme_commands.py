"""Every command the README shows, run as written with tiny budgets.

The commands are read from the README's code blocks, so a command added there without a
run here fails :func:`test_every_readme_command_is_run_or_exempt`. Each command runs with
only these changes: smaller budgets (steps, updates, episodes, pairs), ``wandb.mode=disabled``,
and three substitutions for what cannot exist on this machine:

- ``reward=clip`` (pretrained CLIP weights from the hub) -> ``reward=clip_tiny``, the same
  code path with a random tiny model;
- ``http://gpu-box:8000/v1`` (a VLM server) -> a real local OpenAI-compatible server whose
  model is the scripted stand-in (it refuses frames it has no ground truth for, so labels
  fail and are counted: the HTTP path still runs end to end);
- ``/data/my_robot`` (a user's dataset) -> a LeRobotDataset written with LeRobot's own API
  for a robot the project does not know (2-d state, one camera, actions in its own units).

Commands that need a physical robot, the test suite itself or the benchmark budget are
listed in ``EXEMPT`` with the reason.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from dataset_helpers import robot_dataset

from real_robot.bridge import transport

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
ENV = {**os.environ, "MUJOCO_GL": "osmesa", "PYOPENGL_PLATFORM": "osmesa", "WANDB_MODE": "disabled",
       "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
PROGRAMS = ("embodied-", "make ", "python ", "lerobot-train ")
EXEMPT = {
    "make train": "set-up + the default run: CI runs the set-up; the run is test_default_experiment_learns_reach",
    "make test": "the test suite itself (CI's command: .ci/run)",
    "embodied-actor robot=so100": "drives a physical SO-100 arm on /dev/ttyACM0 with a gamepad",
}
TRAIN_TINY = ["train.warmup_steps=40", "train.learning_starts=40", "eval.episodes=1", "eval.video_episodes=1",
              "checkpoint.every=60", "log.every=40", "learner.batch_size=16", "learner.hidden=[16,16]",
              "wandb.mode=disabled"]
PPO_TINY = ["learner.num_steps=32", "learner.num_minibatches=4", "learner.update_epochs=1", "learner.hidden=[16,16]",
            "train.total_steps=512", "eval.episodes=1", "eval.video_episodes=0", "checkpoint.every=256",
            "log.every=128", "wandb.mode=disabled"]  # on-policy: 32-step rollouts of every env (<= 8 envs)
WM_TINY = ["learner.sequence_length=10", "learner.batch_size=4", "learner.embed=16", "learner.depth=4",
           "learner.deter=16", "learner.stoch=4", "learner.hidden=16", "learner.head_hidden=[16]",
           "learner.actor_hidden=[16]", "learner.horizon=4", "learner.train_every=4", "learner.model_every=40",
           "learner.model_train_steps=4", "learner.rollout_batch=16", "learner.sac_utd=2", "learner.ensemble=3",
           "learner.elites=2", "learner.model_hidden=[16]", "learner.sac_hidden=[16]", "train.warmup_steps=60",
           "train.learning_starts=60", "train.total_steps=120", "eval.episodes=1", "eval.video_episodes=1",
           "checkpoint.every=60", "log.every=40", "wandb.mode=disabled"]  # both kinds: latent and MBPO sizes
ENV_TINY = ["env.image_size=32", "env.max_episode_steps=60"]  # not for env=none: it has no env settings
LEROBOT_TINY = ["--policy.dim_model=32", "--policy.dim_feedforward=64", "--policy.n_heads=2",
                "--policy.n_encoder_layers=1", "--policy.n_decoder_layers=1", "--policy.latent_dim=4",
                "--batch_size=4", "--steps=4", "--save_freq=4", "--log_freq=2"]
SIMULATORS = ("libero", "robosuite")


# ----------------------------------------------------------------------------- reading
def readme_commands(text: str | None = None) -> list[str]:
    """Shell commands of the README's code blocks (fenced bash and indented), comments dropped."""
    text = text if text is not None else (ROOT / "README.md").read_text()
    lines, fence = [], None
    for line in text.splitlines():
        if line.startswith("```"):
            fence = None if fence is not None else line[3:].strip()
            continue
        if fence == "bash" or (fence is None and line.startswith("    ")):
            lines.append(line.strip())
    joined = "\n".join(lines).replace("\\\n", " ")
    commands = []
    for line in joined.splitlines():
        words = shlex.split(line, comments=True)
        if not words:
            continue
        words[0] = words[0].removeprefix(".venv/bin/")
        command = shlex.join(words)
        if command.startswith(PROGRAMS) or words[0] == "mv":
            commands.append(command)
    return commands


def exemption(command: str) -> str | None:
    return next((why for prefix, why in EXEMPT.items() if command.startswith(prefix)), None)


def runnable() -> list[str]:
    return [c for c in readme_commands() if exemption(c) is None]


# ----------------------------------------------------------------------------- shrinking
def shrink(command: str, subs: dict[str, str]) -> list[str]:
    """The command with tiny budgets and the documented substitutions."""
    for old, new in subs.items():
        command = command.replace(old, new)
    words = shlex.split(command)
    prog, args = words[0], [re.sub(r"^reward=clip$", "reward=clip_tiny", a) for a in words[1:]]
    kv = dict(a.split("=", 1) for a in args if "=" in a and not a.startswith("+"))

    def setv(key, value):
        args[:] = [a for a in args if not a.startswith(key + "=")] + [f"{key}={value}"]

    if prog == "embodied-train" and (kv.get("learner", "").startswith("ppo") or "+experiment=ppo_" in command):
        for key, value in (a.split("=", 1) for a in PPO_TINY + ENV_TINY):
            setv(key, value)
    elif prog == "embodied-train" and kv.get("learner") == "world_model":
        for key, value in (a.split("=", 1) for a in WM_TINY + ENV_TINY):
            setv(key, value)
    elif prog == "embodied-train":
        own = [a for a in ENV_TINY if a.split("=")[0] not in kv]  # a command's own env.image_size stays
        args += TRAIN_TINY + (own if kv.get("env") != "none" else [])
        setv("train.total_steps", 0 if kv.get("train.total_steps") == "0" else 120)
        if int(kv.get("train.offline_updates", 0)):
            setv("train.offline_updates", 30)
    elif prog == "embodied-make-dataset":
        setv("steps", 100)
        args += ["env.image_size=32"] if kv.get("env", "").startswith(SIMULATORS + ("lang_reach",)) else []
        args += ["sac.total_steps=300", "sac.medium_at=150", "sac.warmup_steps=100", "sac.hidden=[16,16]",
                 "sac.batch_size=16"]
    elif prog == "embodied-label":
        if "preference_pairs" in kv:
            setv("preference_pairs", 40)
        args += ["reward.max_epochs=3"] if "rlvlmf" in kv.get("reward", "") else []
    elif prog == "lerobot-train":  # LeRobot's own trainer: a tiny ACT for 4 steps
        args = [a for a in args if not a.startswith(("--steps=", "--batch_size="))] + LEROBOT_TINY
    elif prog == "embodied-eval":
        setv("episodes", 1)
        args += ["env.image_size=32", "env.max_episode_steps=20", "video_episodes=1"]
    elif prog == "embodied-eval-reward":
        setv("episodes", 3)
        args += ["max_steps=20", "image_size=32", "plots=1"]
    return [str(BIN / prog) if (BIN / prog).exists() else prog, *args]


def run(argv: list[str], cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    start = time.monotonic()
    proc = subprocess.run(argv, cwd=cwd, env=ENV, capture_output=True, text=True, timeout=timeout)
    print(f"{time.monotonic() - start:5.1f} s  {shlex.join(argv[:4])} ...")
    assert proc.returncode == 0, f"{shlex.join(argv)}\n{proc.stdout[-1500:]}\n{proc.stderr[-3000:]}"
    return proc


class VLMServer:
    """A local OpenAI-compatible server whose model is the scripted stand-in, in this process."""

    def __init__(self, server, backend):
        self.base_url, self.backend = server.base_url, backend

    def learn_dataset(self, path: Path) -> None:
        """Tell the stand-in the true progress of every frame of a recorded dataset."""
        from embodied.datasets.read import iter_episodes, open_dataset

        for ep in iter_episodes(open_dataset(path)):
            for frames in ep.frames.values():
                self.backend.add_episode(frames, ep.columns["gt.progress"].reshape(-1))


@pytest.fixture(scope="module")
def vlm_server():
    from rewards.backends.local_server import LocalChatServer
    from rewards.backends.scripted import ScriptedBackend

    backend = ScriptedBackend()
    with LocalChatServer(backend) as server:
        yield VLMServer(server, backend)


def substitutions(server: VLMServer, tmp: Path) -> dict[str, str]:
    return {"http://gpu-box:8000/v1": server.base_url, "/data/my_robot": str(tmp / "my_robot")}


# ----------------------------------------------------------------------------- tests
def test_every_readme_command_is_run_or_exempt():
    commands = readme_commands()
    assert len(commands) >= 20, commands
    chains = (CHAIN_ROBOT + CHAIN_OWN_DATA + CHAIN_SIM_DATA + CHAIN_LIBERO + CHAIN_RESIDUAL + CHAIN_VLA + CHAIN_FLOW
              + CHAIN_WM + CHAIN_REPORT)
    assert sorted(chains + INDEPENDENT) == sorted(runnable())
    assert all(exemption(c) for c in commands if c not in runnable())


def test_the_reader_joins_continuations_and_drops_comments():
    text = "```bash\n.venv/bin/embodied-actor a=1 \\\n    b=2   # why\n```\n    embodied-label x=1  # c\nprose\n"
    assert readme_commands(text) == ["embodied-actor a=1 b=2", "embodied-label x=1"]


CHAIN_RESIDUAL = [c for c in runnable() if any(k in c for k in ("push_sparse", "push_front", "runs/push_bc"))]
CHAIN_VLA = [c for c in runnable() if any(k in c for k in ("datasets/lang_reach", "runs/lang_vla_bc"))]
CHAIN_FLOW = [c for c in runnable() if any(k in c for k in ("smolvla_lang_reach", "runs/lang_smolvla_ppo"))]
CHAIN_WM = [c for c in runnable() if "reach_repo" in c]  # a RePo run, then its adaptation to a new background
CHAIN_REPORT = [c for c in runnable() if "study" in c]  # runs over seeds, then embodied-report over them
CHAIN_ROBOT = [c for c in runnable() if c not in CHAIN_RESIDUAL + CHAIN_VLA
               and c.startswith(("embodied-keygen", "mv", "embodied-learner", "embodied-actor"))]
CHAIN_OWN_DATA = [c for c in runnable() if "/data/my_robot" in c]  # label a user's dataset, then env=none
CHAIN_LIBERO = [c for c in runnable() if "datasets/libero_object" in c or "runs/libero_object_iql" in c]
CHAIN_SIM_DATA = [c for c in runnable() if c not in CHAIN_LIBERO + CHAIN_RESIDUAL + CHAIN_VLA and not any(k in c for k in SIMULATORS) and any(
    k in c for k in ("kinds=[scripted]", "datasets/reach/scripted", "datasets/reach_vlmf"))]
INDEPENDENT = [c for c in runnable() if c not in CHAIN_ROBOT + CHAIN_OWN_DATA + CHAIN_SIM_DATA + CHAIN_LIBERO
               + CHAIN_RESIDUAL + CHAIN_VLA + CHAIN_FLOW + CHAIN_WM + CHAIN_REPORT]


@pytest.mark.parametrize("command", INDEPENDENT)
def test_command_runs_as_written(command, tmp_path, vlm_server):
    run(shrink(command, substitutions(vlm_server, tmp_path)), tmp_path)


def test_report_commands_run_as_written_in_order(tmp_path):
    """Two learners over two seeds each, then embodied-report over the four run folders."""
    assert CHAIN_REPORT[-1].startswith("embodied-report") and len(CHAIN_REPORT) == 5
    for command in CHAIN_REPORT:
        proc = run(shrink(command, {}), tmp_path)
    report = json.loads((tmp_path / "reports" / "study" / "report.json").read_text())
    assert sorted(report["aggregates"]) == ["ppo", "sac"] and report["aggregates"]["sac"]["runs"] == 2
    assert "ppo > sac" in report["probability_of_improvement"] and "| sac | reach | 2 |" in proc.stdout
    assert (tmp_path / "reports" / "study" / "sample_efficiency.png").exists()


def test_own_dataset_commands_run_as_written(tmp_path, vlm_server):
    """Label a dataset of a robot the project does not know, then IQL on it with env=none."""
    robot_dataset(tmp_path / "my_robot")
    for command in CHAIN_OWN_DATA:
        run(shrink(command, substitutions(vlm_server, tmp_path)), tmp_path)
    assert (tmp_path / "my_robot_clip" / "meta" / "labeling.json").exists()


def test_sim_dataset_commands_run_as_written_in_order(tmp_path, vlm_server):
    """make-dataset -> label (RL-VLM-F, GVL) -> IQL offline, online resume, BC -> eval-reward on the dataset."""
    order = sorted(CHAIN_SIM_DATA, key=lambda c: (not c.startswith("embodied-make-dataset"),
                                                   c.startswith("embodied-eval-reward")))
    for command in order:
        if command.startswith("embodied-eval-reward"):  # the stand-in VLM answers from the dataset's truth
            vlm_server.learn_dataset(tmp_path / "datasets" / "reach" / "scripted")
        run(shrink(command, substitutions(vlm_server, tmp_path)), tmp_path)
    assert (tmp_path / "datasets" / "reach_vlmf" / "meta" / "labeling.json").exists()


def test_libero_commands_run_as_written_in_order(tmp_path, vlm_server):
    """Scripted LIBERO demos in LeRobot's layout -> label through the key map -> IQL -> embodied-eval."""
    assert [c.split()[0] for c in CHAIN_LIBERO] == ["embodied-make-dataset", "embodied-label", "embodied-train",
                                                    "embodied-eval"], CHAIN_LIBERO
    for command in CHAIN_LIBERO:
        run(shrink(command, substitutions(vlm_server, tmp_path)), tmp_path)
    assert (tmp_path / "datasets" / "libero_object_clip" / "meta" / "labeling.json").exists()
    results = next((tmp_path / "evals").glob("*/results.json"))
    assert json.loads(results.read_text())["overall"]["episodes"] == 1


def test_residual_rl_commands_run_as_written_in_order(tmp_path):
    """Sparse push demos -> BC base -> residual RL and the SAC baseline -> camera demos -> LeRobot's
    ACT trainer -> residual RL over that ACT -> the residual on the robot loop (learner + sim actor)."""
    assert [c.split()[0] for c in CHAIN_RESIDUAL] == [
        "embodied-make-dataset", "embodied-train", "embodied-train", "embodied-train", "embodied-make-dataset",
        "lerobot-train", "embodied-train", "embodied-learner", "embodied-actor"], CHAIN_RESIDUAL
    port = transport.free_port()
    learner = None
    try:
        for command in CHAIN_RESIDUAL:
            argv = shrink(command, {})
            if command.startswith("embodied-learner"):
                argv += [f"bridge.bind=tcp://127.0.0.1:{port}", "train.learning_starts=40",
                         "train.publish_every=5"]
                learner = subprocess.Popen(argv, cwd=tmp_path, env=ENV, stdout=subprocess.DEVNULL,
                                           stderr=open(tmp_path / "learner.log", "wb"))
                ready = tmp_path / "runs" / "push_residual_learner" / "learner_stats.json"
                deadline = time.monotonic() + 180  # demos loaded, base actions relabelled
                while not ready.exists() and time.monotonic() < deadline and learner.poll() is None:
                    time.sleep(0.3)
                assert ready.exists(), (tmp_path / "learner.log").read_text()[-2000:]
            elif command.startswith("embodied-actor"):
                run(argv + [f"connect=tcp://127.0.0.1:{port}", "loop.max_steps=300", "loop.hz=100"], tmp_path)
                stop(learner, tmp_path / "learner.log")
                learner = None
            else:
                run(argv, tmp_path, timeout=900)
    finally:
        if learner is not None:
            learner.kill()
    stats = json.loads((tmp_path / "runs" / "push_residual_actor" / "actor_stats.json").read_text())
    assert stats["steps"] == 300 and stats["link_batches_acked"] > 0
    import policies

    act = tmp_path / "outputs" / "act_push_front" / "checkpoints" / "last" / "pretrained_model"
    assert (act / "model.safetensors").exists() and (act / "policy_preprocessor.json").exists()
    over_act = policies.load_policy(tmp_path / "runs" / "push_act_residual")  # the residual saved with its base
    assert over_act.base.chunk_size == 20 and over_act.spec()["base_policy"] == str(act.resolve())


def test_real_robot_walkthrough_runs_as_written(tmp_path):
    """Keys, the learner, a sim-robot actor over CURVE; then the SO-100 learner command starts and listens."""
    port = transport.free_port()
    procs: list[subprocess.Popen] = []
    try:
        for command in CHAIN_ROBOT:
            argv = shrink(command, {})
            if command.startswith("mv"):
                run(["bash", "-c", command], tmp_path)
            elif command.startswith("embodied-keygen"):
                run(argv, tmp_path)
            elif command.startswith("embodied-learner") and "0.0.0.0" not in command:
                argv += [f"bridge.bind=tcp://127.0.0.1:{port}"]
                procs.append(subprocess.Popen(argv, cwd=tmp_path, env=ENV, stdout=subprocess.DEVNULL,
                                              stderr=open(tmp_path / "learner.log", "wb")))
            elif command.startswith("embodied-actor"):
                run(argv + [f"connect=tcp://127.0.0.1:{port}", "loop.max_steps=150", "loop.hz=100"], tmp_path)
                stop(procs.pop(), tmp_path / "learner.log")
                assert (tmp_path / "runs" / "learner" / "learner_stats.json").exists()
            else:  # the SO-100 learner: bind on all interfaces, listen, stop
                other = transport.free_port()
                argv = [a.replace("0.0.0.0:5555", f"0.0.0.0:{other}") for a in argv]
                procs.append(subprocess.Popen(argv + ["run_dir=runs/so100_learner"], cwd=tmp_path, env=ENV,
                                              stdout=subprocess.DEVNULL, stderr=open(tmp_path / "so100.log", "wb")))
                stats = tmp_path / "runs" / "so100_learner" / "learner_stats.json"
                deadline = time.monotonic() + 120
                while not stats.exists() and time.monotonic() < deadline and procs[-1].poll() is None:
                    time.sleep(0.3)
                assert stats.exists(), (tmp_path / "so100.log").read_text()[-2000:]
                stop(procs.pop(), tmp_path / "so100.log")
    finally:
        for p in procs:
            p.kill()


def test_vla_commands_run_as_written_in_order(tmp_path):
    """lang_reach demos -> BC of the native VLA -> embodied-eval per colour -> PPO (sparse, + GVL) ->
    the policy server, driven by a sim-robot actor with remote inference over CURVE."""
    assert [c.split()[0] for c in CHAIN_VLA] == [
        "embodied-make-dataset", "embodied-train", "embodied-eval", "embodied-train", "embodied-train",
        "embodied-policy-server"], CHAIN_VLA
    server = None
    try:
        for command in CHAIN_VLA:
            argv = shrink(command, {})
            if not command.startswith("embodied-policy-server"):
                run(argv, tmp_path, timeout=900)
                continue
            for name in ("learner", "actor0"):  # the robot section's keys: the server holds the learner's pair
                run([str(BIN / "embodied-keygen"), f"name={name}", "out=keys" if name == "learner" else "out=keys/allowed"],
                    tmp_path)
            (tmp_path / "keys" / "allowed" / "actor0.key_secret").rename(tmp_path / "keys" / "actor0.key_secret")
            port = transport.free_port()
            argv = [a.replace("0.0.0.0:5560", f"127.0.0.1:{port}") for a in argv]
            log = tmp_path / "server.log"
            out = open(log, "wb")  # Hydra logs to stdout, the tracebacks go to stderr
            server = subprocess.Popen(argv, cwd=tmp_path, env=ENV, stdout=out, stderr=subprocess.STDOUT)
            deadline = time.monotonic() + 180
            while "policy server ready" not in log.read_text(errors="replace") and time.monotonic() < deadline:
                assert server.poll() is None, log.read_text()[-2000:]
                time.sleep(0.3)
            # the README's actor drives an SO-100; here the same flags drive the sim robot's lang_reach
            run([str(BIN / "embodied-actor"), "robot=sim_reach_pixels", "robot.task=lang_reach", "robot.cameras=[top]",
                 "robot.image_size=32", "+robot.proprio_only=true", f"policy=remote:127.0.0.1:{port}", "connect=null",
                 "loop.hz=30", "remote.prefetch=8", "loop.max_steps=40", "run_dir=runs/lang_vla_actor"], tmp_path)
            stop(server, log)
            server = None
    finally:
        if server is not None:
            server.kill()
    stats = json.loads((tmp_path / "runs" / "lang_vla_actor" / "actor_stats.json").read_text())
    assert stats["steps"] >= 40 and stats["remote_chunks"] >= 1, stats
    results = next((tmp_path / "evals").glob("*/results.json"))
    assert json.loads(results.read_text())["overall"]["tasks"] == 4  # one per colour


def test_flow_vla_ppo_commands_run_as_written_in_order(tmp_path):
    """PPO over a SmolVLA checkpoint, then embodied-eval of the fine-tuned policy. The README's
    checkpoint is a SmolVLA fine-tuned on lang_reach; here a tiny random one (64 px top camera,
    as the helpers build it, so the env renders at 64 px) stands in, and the GPU (device=cuda)
    is this machine's CPU."""
    from vla_lerobot_helpers import smolvla_checkpoint, tiny_vlm

    assert [c.split()[0] for c in CHAIN_FLOW] == ["embodied-train", "embodied-eval"], CHAIN_FLOW
    smolvla_checkpoint(tmp_path / "checkpoints" / "smolvla_lang_reach", tiny_vlm(tmp_path / "vlm"))
    for command in CHAIN_FLOW:
        argv = [a.replace("device=cuda", "device=cpu").replace("env.image_size=32", "env.image_size=64")
                for a in shrink(command, {})]
        run(argv, tmp_path, timeout=900)
    from policies import load_policy

    assert load_policy(tmp_path / "runs" / "lang_smolvla_ppo").kind == "flow_vla"
    results = next((tmp_path / "evals").glob("*/results.json"))
    assert json.loads(results.read_text())["overall"]["tasks"] == 4


def test_world_model_commands_run_as_written_in_order(tmp_path):
    """RePo on the moving background a, then its test-time adaptation to background b."""
    assert [c.split()[0] for c in CHAIN_WM] == ["embodied-train", "embodied-train"], CHAIN_WM
    for command in CHAIN_WM:
        run(shrink(command, {}), tmp_path)
    rows = [json.loads(line) for line in (tmp_path / "runs" / "reach_repo_adapted" / "metrics.jsonl").read_text().splitlines()]
    assert any("adapt/kl" in r for r in rows)


def stop(proc: subprocess.Popen, log: Path) -> None:
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(60) == 0, log.read_text()[-2000:]

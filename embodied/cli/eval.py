"""``embodied-eval``: evaluate a saved policy on one task or a whole suite.

    embodied-eval env=libero_spatial tasks=all policy=runs/my_run      # 10 tasks x 50 episodes
    embodied-eval env=reach policy=scripted episodes=20 num_envs=4 output=evals/reach_expert
    embodied-eval env=push env.pixels=true env.cameras=[front] policy=outputs/act/checkpoints/last/pretrained_model   # LeRobot

The Hydra entry point; how episodes are counted, seeded and started (LIBERO's fixed initial
states) is described in :mod:`embodied.evaluation`, what is written in :mod:`embodied.eval_report`.
"""

from __future__ import annotations

from typing import Any

from embodied.cli import CONFIG_DIR, one_line_errors, setup_runtime

setup_runtime()


@one_line_errors
def run(cfg) -> dict[str, Any]:
    import torch
    from omegaconf import OmegaConf

    from embodied.cli.schemas import check_eval_config
    from embodied.eval_report import check_output, markdown_table, write_report
    from embodied.evaluation import evaluate_suite, resolve_policy, resolve_tasks

    check_eval_config(cfg)  # every setting, before a policy is loaded or an env built
    output = check_output(cfg.output)
    torch.set_num_threads(int(cfg.threads))
    config = OmegaConf.to_container(cfg, resolve=True)
    tasks = resolve_tasks(cfg.env.name, config["tasks"])
    policy = resolve_policy(cfg.policy, seed=int(cfg.seed), device=str(cfg.device))
    import envs

    env_kwargs = envs.kwargs_from_config(config["env"])
    results = evaluate_suite(policy, tasks, int(cfg.episodes), num_envs=int(cfg.num_envs), seed=int(cfg.seed),
                             env_kwargs=env_kwargs, video_dir=output / "videos", video_episodes=int(cfg.video_episodes),
                             deterministic=bool(cfg.deterministic), asynchronous=bool(cfg.asynchronous))
    title = f"policy `{cfg.policy}` on `{cfg.env.name if len(tasks) == 1 else tasks[0].rsplit('/', 1)[0]}`: " \
            f"{cfg.episodes} episodes per task, seed {cfg.seed}"
    write_report(output, results, config, title)
    print(markdown_table(results))
    print(f"results in {output}")
    return results


def main() -> None:
    import hydra

    hydra.main(config_path=CONFIG_DIR, config_name="eval", version_base=None)(run)()


if __name__ == "__main__":
    main()

"""``embodied-make-dataset``: random / medium / expert / medium-replay / medium-expert
LeRobotDatasets for a built-in or gymnasium MuJoCo task (see embodied/datasets/generate.py).

    embodied-make-dataset env=reach output=datasets/reach steps=10000
    embodied-make-dataset env=gym_hopper sac.total_steps=300000 sac.medium_at=100000
    embodied-make-dataset env=libero_object kinds=[scripted] success_only=true dataset_keys=lerobot_libero
"""

from __future__ import annotations

import json

from embodied.cli import CONFIG_DIR, one_line_errors, setup_runtime

setup_runtime()


@one_line_errors
def run(cfg) -> dict:
    import torch
    from omegaconf import OmegaConf

    from embodied.datasets.generate import GenerateConfig, SACStages, generate
    from embodied.datasets.keys import DatasetKeys

    torch.set_num_threads(int(cfg.threads))
    import envs

    section = OmegaConf.to_container(cfg.env, resolve=True)
    name = section["name"]
    env_kwargs = envs.kwargs_from_config(section)  # as embodied-train reads it: env.pixels=false drops the cameras
    sac = OmegaConf.to_container(cfg.sac, resolve=True)
    gen = GenerateConfig(env=name, env_kwargs=env_kwargs, kinds=tuple(cfg.kinds), steps=int(cfg.steps),
                         seed=int(cfg.seed), fps=int(cfg.fps), scripted_noise=float(cfg.scripted_noise),
                         scripted_distracted=float(cfg.scripted_distracted), expert_noise=float(cfg.expert_noise),
                         success_only=bool(cfg.success_only), keys=DatasetKeys.from_config(cfg.get("dataset_keys")),
                         ground_truth=bool(cfg.ground_truth), sac=SACStages(**{**sac, "hidden": tuple(sac["hidden"])}))
    stats = generate(gen, cfg.output)
    print(json.dumps({"output": str(cfg.output), **stats}))
    return stats


def main() -> None:
    import hydra

    hydra.main(config_path=CONFIG_DIR, config_name="dataset/make", version_base=None)(run)()


if __name__ == "__main__":
    main()

"""``embodied-train``: train a policy in a simulator with an env or VLM reward.

    embodied-train                                   # default: SAC on the built-in reach task
    embodied-train env=push reward=clip seed=1
    embodied-train +experiment=reach_pixels          # learn reach from pixels
    embodied-train run_name=myrun resume=true        # continue a killed run
"""

from __future__ import annotations

import json
import logging

import hydra
from omegaconf import DictConfig, OmegaConf

from embodied.cli import CONFIG_DIR, one_line_errors, setup_runtime

setup_runtime()
log = logging.getLogger("embodied")


@one_line_errors
def train(cfg: DictConfig) -> dict:
    import torch

    from embodied import checkpoint
    from embodied.cli.schemas import check_train_config
    from embodied.logging import Logger, json_safe
    from embodied.loop import Trainer

    check_train_config(cfg)  # every setting, before anything is built or written
    torch.set_num_threads(int(cfg.train.threads))
    run_dir = hydra.core.hydra_config.HydraConfig.get().runtime.output_dir
    found = checkpoint.latest(f"{run_dir}/checkpoints")
    if found is not None and not cfg.resume:
        raise FileExistsError(f"{run_dir} already holds a run; pass resume=true to continue it "
                              f"or choose another run_name=")
    trainer = Trainer(cfg, run_dir)
    if cfg.resume and found is not None:
        trainer.load_state_dict(checkpoint.load(found))
        log.info("resumed from %s at %d env steps", found, trainer.counters["env_steps"])
    logger = Logger(run_dir, OmegaConf.to_container(cfg, resolve=True), wandb_mode=cfg.wandb.mode,
                    project=cfg.wandb.project, name=cfg.run_name, resume=bool(cfg.resume and found))
    try:
        result = trainer.run(logger)
    finally:
        logger.close()
        trainer.close()
    result = json_safe(result)  # strict JSON: an undefined metric is null, never a bare NaN
    with open(f"{run_dir}/result.json", "w") as f:
        json.dump(result, f, indent=2, allow_nan=False)
    print(json.dumps({"run_dir": run_dir, **result}, allow_nan=False))
    return result


@hydra.main(config_path=CONFIG_DIR, config_name="config", version_base=None)
def main(cfg: DictConfig) -> None:
    logging.getLogger("embodied").setLevel(cfg.log.level)
    train(cfg)


if __name__ == "__main__":
    main()

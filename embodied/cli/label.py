"""``embodied-label``: score a LeRobotDataset with a reward module and write a labeled copy.

    embodied-label input=/data/ds output=/data/ds_clip reward=clip camera=front
    embodied-label input=user/hub_ds output=out/ds_gvl reward=gvl instruction="fold the towel"
    embodied-label input=/shared/ds output=/shared/ds_clip reward=clip ray.address=auto ray.actors=4 ray.num_gpus=1

The Hydra entry point; what is written, how a killed run resumes and how trainable
modules (RL-VLM-F) are fitted first is described in :mod:`embodied.datasets.label`.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any, Callable

from embodied.cli import CONFIG_DIR, one_line_errors, setup_runtime
from embodied.contracts import RewardModel
from embodied.datasets.label import label_dataset  # the library; still importable from here

setup_runtime()


@one_line_errors
def run(cfg) -> dict[str, Any]:
    import torch

    from embodied.build import seeded_reward, to_dict
    from embodied.cli.schemas import LabelConfig
    from embodied.datasets.keys import DatasetKeys
    from embodied.datasets.read import open_dataset
    from embodied.schema import check

    check(cfg, LabelConfig)  # every setting, before the dataset is opened
    keys = DatasetKeys.from_config(cfg.get("dataset_keys"))
    torch.set_num_threads(int(cfg.threads))
    ds = open_dataset(cfg.input)
    output = Path(cfg.output).expanduser().resolve()
    reward_cfg = to_dict(cfg.reward)
    if reward_cfg.get("name") == "env":
        raise ValueError("reward=env has no model to label with; choose reward=clip, gvl, vlac or rlvlmf")

    # a module-level function with plain arguments: what a Ray labeling actor receives and calls
    build: Callable[[], RewardModel] = functools.partial(seeded_reward, reward_cfg, int(cfg.seed))
    summary = label_dataset(ds, output, build, reward_cfg, cfg.camera, cfg.instruction, cfg.repo_id,
                            int(cfg.plot_episodes), preference_pairs=int(cfg.preference_pairs),
                            preference_seed=int(cfg.seed), keys=keys,
                            ray=to_dict(cfg.ray) if cfg.get("ray") is not None else None)
    summary_line = {k: summary[k] for k in ("episodes", "episodes_labeled", "episodes_failed", "failed_queries",
                                            "reward_mean", "reward_std", "reward_min", "reward_max")}
    print(json.dumps({"output": str(output), **summary_line}))
    if summary["episodes_failed"]:
        failed = json.loads((output / "meta" / "labeling.json").read_text())["failed_episodes"]
        print(f"{len(failed)} episode(s) failed (rows kept with label_ok=False, next.reward=NaN): "
              + ", ".join(f"{f['episode']} ({f['error']})" for f in failed[:10]))
    return summary


def main() -> None:
    import hydra

    hydra.main(config_path=CONFIG_DIR, config_name="label", version_base=None)(run)()


if __name__ == "__main__":
    main()

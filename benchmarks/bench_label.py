"""Labeling throughput: ``embodied-label`` with the CLIP module vs the bare CLIP forward
pass over the same frames.

- **embodied-label** (ours): ``label_dataset`` end to end on a LeRobotDataset of the
  built-in ``reach`` task (84x84 front camera, AV1 video): video decoding, batched
  preprocessing, forward, projection, the per-episode side store, writing the new
  dataset. Frames/s counts the dataset's frames.
- **bare forward**: ``model.encode_image`` on the same frames, decoded and preprocessed
  outside the timing, batch 64, L2-normalised, then the VLM-RM projection.

Same model (ViT-B-32, random weights: ``pretrained=None``; the weights do not change the
cost), one CPU thread, interleaved rounds. Target: ours / bare >= 0.8.

    python -m benchmarks.bench_label [--quick]
Writes benchmarks/results/label.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results"
REWARD = {"name": "clip", "model_name": "ViT-B-32", "pretrained": None, "batch_size": 64,
          "baseline_prompts": ["a robot arm on a table"], "alpha": 0.5}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    from embodied.cli import setup_runtime

    setup_runtime()  # MUJOCO_GL=osmesa for generating the dataset
    from embodied.datasets.generate import GenerateConfig, generate
    from embodied.datasets.label import label_dataset
    from embodied.datasets.read import iter_episodes, open_dataset
    from rewards import make_reward

    steps = 200 if args.quick else 1000
    work = ROOT / "outputs" / "bench_label" / ("quick" if args.quick else "full")
    if not (work / "scripted").exists():
        generate(GenerateConfig(env="reach", env_kwargs={"pixels": True, "cameras": ["front"], "image_size": 84},
                                kinds=("scripted",), steps=steps, seed=0), work)
    ds = open_dataset(work / "scripted")
    kw = {k: v for k, v in REWARD.items() if k != "name"}
    torch.manual_seed(0)
    model = make_reward("clip", **kw)
    episodes = list(iter_episodes(ds, ["front"]))
    frames = np.concatenate([e.frames["front"] for e in episodes])
    instruction = episodes[0].task
    inputs = [model.preprocess(frames[i:i + 64]) for i in range(0, len(frames), 64)]

    @torch.inference_mode()
    def bare() -> float:
        start = time.perf_counter()
        for x in inputs:
            emb = torch.nn.functional.normalize(model.model.encode_image(x).float(), dim=-1)
            model.rewards_from_embeddings(emb, instruction)
        return len(frames) / (time.perf_counter() - start)

    def ours(i: int) -> float:
        out = work / f"labeled_{i}"
        shutil.rmtree(out, ignore_errors=True)
        start = time.perf_counter()
        label_dataset(ds, out, model, REWARD, camera="front", show_progress=False)
        rate = len(frames) / (time.perf_counter() - start)
        shutil.rmtree(out)
        return rate

    rates = {"ours": [], "bare": []}
    for i in range(args.rounds):
        rates["bare"].append(bare())
        rates["ours"].append(ours(i))
        print(f"round {i}: ours {rates['ours'][-1]:.2f} frames/s, bare {rates['bare'][-1]:.2f} frames/s", flush=True)
    med = {k: statistics.median(v) for k, v in rates.items()}
    ratio = med["ours"] / med["bare"]
    out = {"quick": args.quick, "frames": int(len(frames)), "episodes": len(episodes), "model": "ViT-B-32 (random)",
           "rates": rates, "median_frames_per_s": med, "ratio_ours_over_bare": ratio, "target_ratio": 0.8}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "label.json").write_text(json.dumps(out, indent=2))
    lines = [f"embodied-label throughput, CLIP ViT-B-32 (random weights), {len(frames)} frames in {len(episodes)} "
             f"episodes of 84x84 AV1 video, 1 CPU thread, median of {args.rounds} interleaved rounds"
             f"{', quick' if args.quick else ''}. Target ours/bare >= 0.8.", "",
             "| path | frames/s | ratio ours/path |", "|---|---:|---:|",
             f"| embodied-label (decode + label + write dataset) | {med['ours']:.2f} | 1.00 |",
             f"| bare encode_image + projection (pre-decoded, preprocessed) | {med['bare']:.2f} | {ratio:.2f} |"]
    (RESULTS / "label.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return out


if __name__ == "__main__":
    main()

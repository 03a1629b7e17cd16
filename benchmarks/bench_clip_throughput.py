"""CLIP reward throughput: ``CLIPReward.score_frames`` from uint8 frames vs a bare open_clip
forward pass at the same batch size and model.

    python -m benchmarks.bench_clip_throughput            # ViT-B-32, 84x84 frames, batch 64
    python -m benchmarks.bench_clip_throughput --quick    # fewer batches

Peers, measured in interleaved rounds (median of 3) in the same process:

- **bare forward**: ``model.encode_image`` on tensors already preprocessed (outside the
  timing), L2-normalised, then the VLM-RM projection — the floor our module can reach;
- **open_clip + PIL**: the end-to-end path a user would write with open_clip alone:
  uint8 frame -> PIL image -> open_clip's eval transform -> stack -> the same forward.

Ours includes everything from uint8 frames to rewards (batched tensor preprocessing,
forward, projection). Target: ours / bare forward >= 0.9. The model is randomly
initialised (``pretrained=None``): the weights do not change the cost. One CPU thread
unless ``--threads``. Writes ``benchmarks/results/clip_throughput.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch

RESULTS = Path(__file__).resolve().parent / "results"


def _rate(fn, batches, batch_size: int) -> float:
    t0 = time.perf_counter()
    for b in batches:
        fn(b)
    return len(batches) * batch_size / (time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer batches (a couple of minutes)")
    parser.add_argument("--model", default="ViT-B-32")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--frame-size", type=int, default=84, help="side of the square uint8 frames")
    parser.add_argument("--batches", type=int, default=None, help="batches per round (default 4, quick 1)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    from PIL import Image

    from rewards.clip import CLIPReward

    n_batches = args.batches or (1 if args.quick else 4)
    bs = args.batch_size
    torch.manual_seed(0)
    reward = CLIPReward(model_name=args.model, pretrained=None, batch_size=bs, device=args.device,
                        goal_prompts=["a robot arm pushing a red block onto the green square"],
                        baseline_prompts=["a robot arm on a table"], alpha=0.5)
    model = reward.model
    rng = np.random.default_rng(0)
    s = args.frame_size
    frames = [rng.integers(0, 256, (bs, s, s, 3), dtype=np.uint8) for _ in range(n_batches)]
    g, P = reward.text_targets("push")

    from open_clip.transform import PreprocessCfg, image_transform_v2

    pil_transform = image_transform_v2(PreprocessCfg(**model.visual.preprocess_cfg), is_train=False)
    dev = reward.device

    @torch.inference_mode()
    def bare(x: torch.Tensor) -> np.ndarray:
        e = torch.nn.functional.normalize(model.encode_image(x).float(), dim=-1)
        return (1 - 0.5 * ((e - g) @ P).pow(2).sum(-1)).cpu().numpy()

    def open_clip_pil(f: np.ndarray) -> np.ndarray:
        x = torch.stack([pil_transform(Image.fromarray(im)) for im in f]).to(dev)
        return bare(x)

    # preprocessing for the bare peer happens here, outside its timing
    pre = [torch.stack([pil_transform(Image.fromarray(im)) for im in f]).to(dev) for f in frames]
    ours_fn = lambda f: reward.score_frames(f, "push")  # noqa: E731
    np.testing.assert_allclose(ours_fn(frames[0]), bare(pre[0]), atol=5e-3)  # same computation
    ours_fn(frames[0])  # warm-up
    bare(pre[0])
    rounds: dict[str, list[float]] = {"ours": [], "bare": [], "pil": []}
    for _ in range(3):
        rounds["ours"].append(_rate(ours_fn, frames, bs))
        rounds["bare"].append(_rate(bare, pre, bs))
        rounds["pil"].append(_rate(open_clip_pil, frames, bs))
    med = {k: statistics.median(v) for k, v in rounds.items()}
    t0 = time.perf_counter()
    for f in frames:
        reward.preprocess(f)
    prep_ms = 1000 * (time.perf_counter() - t0) / n_batches
    result = {
        "model": args.model, "batch_size": bs, "frame_size": s, "batches_per_round": n_batches,
        "threads": args.threads, "device": args.device,
        "frames_per_s": med, "rounds": rounds,
        "ratio_vs_bare_forward": med["ours"] / med["bare"],
        "ratio_vs_open_clip_pil": med["ours"] / med["pil"],
        "preprocess_ms_per_batch": prep_ms,
        "target_ratio_vs_bare_forward": 0.9,
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "clip_throughput.json").write_text(json.dumps(result, indent=2))
    lines = [
        "## CLIP reward throughput (`bench_clip_throughput`)",
        "",
        f"{args.model} (random weights), batch {bs}, {s}x{s} uint8 frames, {args.threads} CPU thread(s), "
        f"device {args.device}, median of 3 interleaved rounds of {n_batches} batch(es). Target ratio vs bare >= 0.9.",
        "",
        "| path | frames/s | ratio (ours / path) |",
        "|---|---:|---:|",
        f"| `CLIPReward.score_frames` (uint8 -> reward) | {med['ours']:.1f} | 1.000 |",
        f"| bare `encode_image` + projection (preprocessed input) | {med['bare']:.1f} | "
        f"{result['ratio_vs_bare_forward']:.3f} |",
        f"| open_clip PIL transform + same forward (uint8 -> reward) | {med['pil']:.1f} | "
        f"{result['ratio_vs_open_clip_pil']:.3f} |",
        "",
        f"Batched uint8 preprocessing costs {prep_ms:.1f} ms per batch of {bs}.",
    ]
    (RESULTS / "clip_throughput.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return result


if __name__ == "__main__":
    main()

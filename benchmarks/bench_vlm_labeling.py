"""VLM labeling throughput: GVL and VLAC through the real HTTP backend, same run.

Episodes of the built-in ``reach`` task (84x84 frames, 50 steps, true progress known)
are labeled through :class:`OpenAIBackend` against :class:`LocalChatServer`, a local
chat-completions server that answers as the scripted ground-truth oracle after a fixed
latency (``--latency``, default 0.2 s, a stand-in for model inference). Measured:

* images and queries per labeled episode, labeled episodes per minute at concurrency 1
  and 8 (ratio 8 vs 1), and the VOC of the labels (the oracle makes it ~1, a check that
  the whole path is right);
* a relabel of the same episodes through the disk cache vs the first pass (speed-up).

Writes ``benchmarks/results/vlm_labeling.{json,md}``.

    python -m benchmarks.bench_vlm_labeling [--quick] [--latency 0.2]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

os.environ.setdefault("MUJOCO_GL", "osmesa")
os.environ.setdefault("PYOPENGL_PLATFORM", os.environ["MUJOCO_GL"])

import numpy as np  # noqa: E402

from envs.builtin.scripted import reach_episodes  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def _label(make_model, episodes) -> tuple[float, list]:
    model = make_model()
    start = time.perf_counter()
    labels = model.label_episodes([(f, i) for f, i, _ in episodes])
    seconds = time.perf_counter() - start
    model.backend.close()
    return seconds, labels


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="4 episodes instead of 16 (about a minute)")
    parser.add_argument("--latency", type=float, default=0.2, help="server seconds per answer")
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    from rewards.backends.local_server import LocalChatServer
    from rewards.backends.scripted import ScriptedBackend
    from rewards.gvl import GVLReward
    from rewards.metrics import voc
    from rewards.vlac import VLACReward

    num, steps = (4, 50) if args.quick else (16, 50)
    episodes = reach_episodes(num, steps, gain=0.3)
    oracle = ScriptedBackend()
    for frames, _, progress in episodes:
        oracle.add_episode(frames, progress)
    models = {
        "GVL (30 frames)": lambda backend: GVLReward(backend=backend, num_frames=30),
        "VLAC (skip 5, done last)": lambda backend: VLACReward(backend=backend, skip=5, done_frames="last"),
    }
    rows = []
    with LocalChatServer(oracle, latency=args.latency) as server, tempfile.TemporaryDirectory() as tmp:
        for name, build in models.items():
            row: dict = {"method": name}
            for concurrency in (1, 8):
                cache = Path(tmp) / f"{name[:4]}-{concurrency}"
                cfg = {"kind": "openai", "model": "oracle", "base_url": server.base_url,
                       "concurrency": concurrency, "cache_dir": str(cache)}
                sent = len(server.received)
                seconds, labels = _label(lambda: build(cfg), episodes)
                if not all(lab.ok for lab in labels):
                    raise RuntimeError(f"{name}: a label failed: {[lab.error for lab in labels if not lab.ok][:1]}")
                row[f"episodes_per_min_c{concurrency}"] = 60 * num / seconds
                row["queries_per_episode"] = (len(server.received) - sent) / num
                row["images_per_episode"] = sum(len([c for m in b["messages"] for c in m["content"]
                                                     if isinstance(c, dict) and c["type"] == "image_url"])
                                                for b in server.received[sent:]) / num
                row["voc_mean"] = float(np.mean([voc(lab.progress) for lab in labels]))
                if concurrency == 8:
                    sent = len(server.received)
                    cached_seconds, again = _label(lambda: build(cfg), episodes)
                    assert len(server.received) == sent, "the relabel sent queries: cache miss"
                    row["first_pass_s"], row["cached_relabel_s"] = seconds, cached_seconds
                    row["cache_speedup"] = seconds / cached_seconds
            row["concurrency_speedup"] = row["episodes_per_min_c8"] / row["episodes_per_min_c1"]
            rows.append(row)
            print(f"{name}: {row['episodes_per_min_c1']:.1f} -> {row['episodes_per_min_c8']:.1f} episodes/min "
                  f"(x{row['concurrency_speedup']:.2f}), {row['queries_per_episode']:.0f} queries and "
                  f"{row['images_per_episode']:.0f} images per episode, cache x{row['cache_speedup']:.0f}", flush=True)

    result = {"episodes": num, "steps": steps, "latency_s": args.latency, "frame_size": "84x84 PNG",
              "machine": platform.platform(), "cpus": os.cpu_count(), "rows": rows}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "vlm_labeling.json").write_text(json.dumps(result, indent=2))
    lines = [f"## VLM labeling through the HTTP backend ({num} reach episodes of {steps} steps, "
             f"server latency {args.latency} s)", "",
             "| method | queries / episode | images / episode | episodes/min c=1 | episodes/min c=8 | c=8 vs c=1 "
             "| cached relabel vs first pass | VOC |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['method']} | {r['queries_per_episode']:.0f} | {r['images_per_episode']:.0f} | "
                     f"{r['episodes_per_min_c1']:.1f} | {r['episodes_per_min_c8']:.1f} | x{r['concurrency_speedup']:.2f} | "
                     f"x{r['cache_speedup']:.0f} | {r['voc_mean']:.3f} |")
    (RESULTS / "vlm_labeling.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return result


if __name__ == "__main__":
    main()

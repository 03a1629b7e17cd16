"""d3rlpy's IQL as the peer of benchmarks/bench_iql.py; runs inside benchmarks/_envs/d3rlpy.

Reads a dataset exported as .npz (observations, actions, rewards, terminals, timeouts),
trains IQL with the same sizes as ours (2x256 MLPs, batch 256, CORL defaults, state
standardisation, cosine actor lr), prints {"updates_per_s": ...} as one JSON line, then
answers action queries: one JSON list of observations per stdin line -> one JSON list of
deterministic actions per stdout line, until stdin closes.
"""

import argparse
import json
import sys
import time

PROTOCOL = sys.stdout  # answers go here; d3rlpy's own log lines go to stderr
sys.stdout = sys.stderr

import d3rlpy  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--data", required=True)
    p.add_argument("--steps", type=int, required=True)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    torch.set_num_threads(1)
    d3rlpy.seed(args.seed)
    with np.load(args.data, allow_pickle=False) as d:
        dataset = d3rlpy.dataset.MDPDataset(observations=d["observations"], actions=d["actions"],
                                            rewards=d["rewards"], terminals=d["terminals"], timeouts=d["timeouts"])
    enc = d3rlpy.models.VectorEncoderFactory(hidden_units=[256, 256])
    adam = d3rlpy.optimizers.AdamFactory(lr_scheduler_factory=d3rlpy.optimizers.CosineAnnealingLRFactory(T_max=args.steps))
    algo = d3rlpy.algos.IQLConfig(
        actor_encoder_factory=enc, critic_encoder_factory=enc, value_encoder_factory=enc, batch_size=256,
        actor_learning_rate=3e-4, critic_learning_rate=3e-4, expectile=0.7, weight_temp=3.0, max_weight=100.0,
        actor_optim_factory=adam, observation_scaler=d3rlpy.preprocessing.StandardObservationScaler(),
    ).create(device="cpu:0")
    algo.build_with_dataset(dataset)
    start = time.perf_counter()
    algo.fit(dataset, n_steps=args.steps, n_steps_per_epoch=args.steps, show_progress=False, save_interval=10**9,
             logger_adapter=d3rlpy.logging.NoopAdapterFactory())
    elapsed = time.perf_counter() - start
    print(json.dumps({"updates_per_s": args.steps / elapsed}), file=PROTOCOL, flush=True)
    for line in sys.stdin:
        obs = np.asarray(json.loads(line), np.float32)
        print(json.dumps(algo.predict(obs).tolist()), file=PROTOCOL, flush=True)


if __name__ == "__main__":
    main()

"""Our PPO and A2C against Stable-Baselines3 on CartPole-v1: wall time to solve, in one process.

Contenders, on the same environment, budget and evaluation protocol:

    ours ppo          gradascent's CartPole-v1 preset (src/gradascent/presets/ppo-CartPole-v1.yaml)
    sb3 ppo zoo       rl-baselines3-zoo's CartPole-v1 preset: 8 envs, n_steps 32, batch 256, gae_lambda 0.8,
                      gamma 0.98, n_epochs 20, ent_coef 0, learning_rate lin_0.001, clip_range lin_0.2
    sb3 ppo default   SB3's PPO defaults with 8 envs
    ours a2c          gradascent's CartPole-v1 preset (src/gradascent/presets/a2c-CartPole-v1.yaml)
    sb3 a2c default   SB3's A2C defaults with 8 envs; rl-baselines3-zoo's CartPole-v1 A2C preset is exactly
                      this (n_envs 8, ent_coef 0.0, the rest default), so it is one contender

Protocol: each seed trains until a deterministic evaluation reaches a mean return of 475, or the budget
(PPO 100k env steps, A2C 200k). Every contender is evaluated the same way, every ~4096 env steps (ours:
the nearest whole number of updates): 10 episodes on gymnasium's CartPole-v1 vector env reset with the same
seeds, the policy's deterministic action. "Seconds to solve" is the training wall time up to the
evaluation that crossed, evaluation time excluded; steps/s is env steps over that training time. torch runs
one thread for everyone; the one-off import cost of torch's optimizer machinery is paid before any clock
starts; contenders run interleaved seed by seed, so that a change in machine load hits all of them. Ours
writes its metrics.jsonl and checkpoints as usual (no TensorBoard events).

    python bench/classic_vs_sb3.py            # 5 seeds
    python bench/classic_vs_sb3.py --quick    # 1 seed, 20k budget: a smoke run

The last line is one JSON object; ``speedup`` = peer's median seconds to solve / ours (seeds that solved).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from gradascent.algos.classic import derived_seed  # noqa: E402
from gradascent.algos.presets import classic_config, get_algo  # noqa: E402

ENV, THRESHOLD, EVAL_STEPS, EVAL_EPISODES = "CartPole-v1", 475.0, 4096, 10
BUDGET = {"ppo": 100_000, "a2c": 200_000}


def eval_sb3(model, seed: int) -> float:
    """The same protocol as gradascent.rl.run_episodes: copy i reset with seed + i, deterministic actions."""
    envs = gym.make_vec(ENV, EVAL_EPISODES)
    raw, _ = envs.reset(seed=seed)
    returns, finished = np.zeros(EVAL_EPISODES), np.zeros(EVAL_EPISODES, bool)
    while not finished.all():
        action, _ = model.predict(raw, deterministic=True)
        raw, reward, term, trunc, _ = envs.step(action)
        returns[~finished] += reward[~finished]
        finished |= term | trunc
    envs.close()
    return float(returns.mean())


def run_ours(algo: str, seed: int, budget: int) -> dict:
    base = classic_config(algo, ENV, overrides={"seed": seed, "total_steps": budget})
    eval_every = max(1, round(EVAL_STEPS / (base.num_envs * base.num_steps)))
    cfg = classic_config(algo, ENV, overrides={"seed": seed, "total_steps": budget, "eval_every": eval_every,
                                               "stop_at_return": THRESHOLD, "tensorboard": False})
    with tempfile.TemporaryDirectory() as out:
        s = get_algo(algo).module.train(cfg, out, progress=False)
    r = s["reached"]
    steps = r["env_steps"] if r else s["env_steps"]
    seconds = r["train_seconds"] if r else s["train_seconds"]
    return {"seed": seed, "solved": r is not None, "env_steps": steps, "seconds": seconds, "sps": steps / seconds}


def run_sb3(kind: str, seed: int, budget: int) -> dict:
    from stable_baselines3 import A2C, PPO
    from stable_baselines3.common.callbacks import BaseCallback
    from stable_baselines3.common.env_util import make_vec_env

    eval_seed = derived_seed(seed, 2)  # the seed our trainer evaluates with

    class Solve(BaseCallback):
        def __init__(self) -> None:
            super().__init__()
            self.next_eval, self.eval_seconds, self.solved_at = EVAL_STEPS, 0.0, None

        def _on_step(self) -> bool:
            if self.num_timesteps < self.next_eval:
                return True
            self.next_eval += EVAL_STEPS
            t = time.perf_counter()
            mean = eval_sb3(self.model, eval_seed)
            self.eval_seconds += time.perf_counter() - t
            if mean >= THRESHOLD:
                self.solved_at = self.num_timesteps
                return False
            return True

    env = make_vec_env(ENV, n_envs=8, seed=seed)
    if kind == "sb3 ppo zoo":
        lin = lambda v: (lambda progress: progress * v)  # noqa: E731
        model = PPO("MlpPolicy", env, n_steps=32, batch_size=256, gae_lambda=0.8, gamma=0.98, n_epochs=20,
                    ent_coef=0.0, learning_rate=lin(1e-3), clip_range=lin(0.2), seed=seed, device="cpu")
    elif kind == "sb3 ppo default":
        model = PPO("MlpPolicy", env, seed=seed, device="cpu")
    else:
        model = A2C("MlpPolicy", env, seed=seed, device="cpu")
    cb = Solve()
    t0 = time.perf_counter()
    model.learn(budget, callback=cb)
    seconds = time.perf_counter() - t0 - cb.eval_seconds
    steps = cb.solved_at or model.num_timesteps
    env.close()
    return {"seed": seed, "solved": cb.solved_at is not None, "env_steps": steps, "seconds": seconds,
            "sps": model.num_timesteps / seconds}


def summarise(runs: list[dict]) -> dict:
    solved = [r for r in runs if r["solved"]]
    return {
        "solved": len(solved), "seeds": len(runs),
        "median_seconds_to_solve": round(statistics.median(r["seconds"] for r in solved), 3) if solved else None,
        "median_steps_to_solve": statistics.median(r["env_steps"] for r in solved) if solved else None,
        "steps_per_second": round(statistics.median(r["sps"] for r in runs)),
        "runs": [{k: (round(v, 3) if isinstance(v, float) else v) for k, v in r.items()} for r in runs],
    }


def warm_up() -> None:
    """Pay the one-off imports (torch's optimizer/compile machinery, SB3) before any clock starts."""
    import stable_baselines3  # noqa: F401

    m = torch.nn.Linear(2, 2)
    for opt in (torch.optim.Adam(m.parameters(), fused=True), torch.optim.RMSprop(m.parameters(), foreach=True)):
        m(torch.ones(1, 2)).sum().backward()
        opt.step()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="1 seed, 20k budget (smoke run)")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--only", choices=["ppo", "a2c"], help="one algorithm only")
    args = parser.parse_args()
    torch.set_num_threads(1)
    warm_up()
    seeds = [1] if args.quick else list(range(1, args.seeds + 1))
    contenders = {"ppo": ["ours ppo", "sb3 ppo zoo", "sb3 ppo default"], "a2c": ["ours a2c", "sb3 a2c default"]}
    result: dict = {"env": ENV, "threshold": THRESHOLD, "seeds": len(seeds)}
    for algo, names in contenders.items():
        if args.only and algo != args.only:
            continue
        budget = 20_000 if args.quick else BUDGET[algo]
        block: dict = {"budget": budget}
        runs: dict[str, list[dict]] = {name: [] for name in names}
        for s in seeds:  # contenders interleaved per seed, so that a change of machine load hits all of them
            for name in names:
                runs[name].append(run_ours(algo, s, budget) if name.startswith("ours") else run_sb3(name, s, budget))
        for name in names:
            block[name] = summarise(runs[name])
            b = block[name]
            print(f"{name:16s} solved {b['solved']}/{b['seeds']}  median s to solve {b['median_seconds_to_solve']}"
                  f"  median steps {b['median_steps_to_solve']}  steps/s {b['steps_per_second']}", flush=True)
        ours = block[names[0]]["median_seconds_to_solve"]
        block["speedup"] = {name: (round(block[name]["median_seconds_to_solve"] / ours, 2)
                                   if ours and block[name]["median_seconds_to_solve"] else None)
                            for name in names[1:]}
        print(f"{algo} speedup (peer seconds / ours): {block['speedup']}", flush=True)
        result[algo] = block
    print(json.dumps(result))


if __name__ == "__main__":
    main()

"""Rollouts: episode boundaries, the bootstrap at a truncation, unclipped actions, replay for exact resume."""

import gymnasium as gym
import numpy as np
import pytest
import torch

from gradascent.core import gae, nstep_returns
from gradascent.rl import ActorCritic, Collector, ObsNormalizer, RewardScaler, make_vec_env
from gradascent.rl.envs import spaces_of


def _collector(env_id, num_envs=1, normalize=False):
    envs = make_vec_env(env_id, num_envs)
    obs_dim, action = spaces_of(envs, env_id, "test")
    collector = Collector(envs, action, ObsNormalizer(obs_dim, normalize), RewardScaler(num_envs, 0.99, normalize))
    return collector, obs_dim, action


def _constant_value_policy(obs_dim, action, c):
    torch.manual_seed(0)
    policy = ActorCritic(obs_dim, action)
    with torch.no_grad():
        policy.critic_head.weight.zero_()
        policy.critic_head.bias.fill_(c)  # V(s) = c everywhere
    return policy


@pytest.mark.parametrize("env_id", ["GradascentTest/Trunc-v0", "GradascentTest/Term-v0"])
def test_bootstrap_enters_the_advantage_at_a_truncation_and_not_at_a_termination(env_id):
    # One copy, 5 steps, reward 1 per step, episodes of 3 steps, V(s) = c = 4, gamma = 0.5, lam = 1.
    # t = 0, 1, 2 is the first episode; it ends at t = 2 (truncated or terminated); t = 3 is the copy's
    # autoreset step (masked out); t = 4 starts the next episode and closes the rollout.
    collector, obs_dim, action = _collector(env_id)
    policy = _constant_value_policy(obs_dim, action, 4.0)
    collector.reset(seed=0)
    batch = collector.collect(policy, 5)
    truncation = env_id.endswith("Trunc-v0")
    assert batch.mask.tolist() == [[True, True, True, False, True]]
    assert batch.truncated.tolist() == [[False, False, truncation, False, False]]
    assert batch.terminated.tolist() == [[False, False, not truncation, False, False]]
    assert batch.next_values[0, 2] == 4.0  # V of the final observation, not of the next episode's first
    adv, returns = gae(batch.rewards, batch.values, batch.next_values, 0.5, 1.0,
                       batch.terminated, batch.truncated)
    # delta_t = r_t + gamma * V(s_{t+1}) * (1 - terminated_t) - V(s_t):
    #   inside the episode delta_0 = delta_1 = 1 + 0.5*4 - 4 = -1;
    #   at t = 2, truncated: 1 + 0.5*4 - 4 = -1 (bootstrapped from the final observation);
    #             terminated: 1 + 0 - 4 = -3 (nothing to bootstrap).
    # A_2 = delta_2; A_1 = -1 + 0.5*A_2; A_0 = -1 + 0.5*A_1 (gamma*lam = 0.5; nothing flows across t = 2).
    a2 = -1.0 if truncation else -3.0
    a1 = -1.0 + 0.5 * a2
    a0 = -1.0 + 0.5 * a1
    assert adv[0, :3].tolist() == [a0, a1, a2]
    # The n-step return of A2C agrees: G_2 = 1 + 0.5*4 = 3 at the truncation, 1 at the termination.
    G = nstep_returns(batch.rewards, batch.next_values, 0.5, 5, batch.terminated, batch.truncated)
    assert G[0, 2] == (3.0 if truncation else 1.0)
    # Episode statistics count the one finished episode (3 rewards of 1), not the reset step.
    assert batch.episode_returns.tolist() == [3.0] and batch.episode_lengths.tolist() == [3]


def test_box_actions_are_stored_unclipped_and_sent_clipped():
    collector, obs_dim, action = _collector("Pendulum-v1", num_envs=2)
    torch.manual_seed(0)
    policy = ActorCritic(obs_dim, action, init_log_std=2.0)  # std e^2 ~ 7.4 >> the bound 2
    collector.reset(seed=0)
    batch = collector.collect(policy, 20)
    assert batch.actions.shape == (2, 20, 1)
    assert batch.actions.abs().max() > 2.0  # the sample, unclipped
    sent = collector.state_dict()["actions"]  # what the environments received
    assert sent.shape == (20, 2, 1) and np.abs(sent).max() <= 2.0
    # log pi(a|s) is the log-density of the unclipped sample.
    expected = policy.distribution(batch.dist_params).log_prob(batch.actions)
    assert torch.equal(batch.logp, expected)


def test_replaying_the_action_log_restores_the_environments_exactly():
    # Two collectors: one runs 3 rollouts straight; the other runs 1, is saved, rebuilt from the saved state
    # in a fresh collector (fresh environments) and runs 2 more. Same RNG draws -> identical batches.
    def run(split):
        collector, obs_dim, action = _collector("CartPole-v1", num_envs=3, normalize=True)
        torch.manual_seed(0)
        policy = ActorCritic(obs_dim, action)
        collector.reset(seed=123)
        batches = [collector.collect(policy, 40)]
        if split:
            state = collector.state_dict()
            collector, _, _ = _collector("CartPole-v1", num_envs=3, normalize=True)
            collector.load_state_dict(state)
        batches += [collector.collect(policy, 40) for _ in range(2)]
        return batches

    straight, resumed = run(False), run(True)
    for a, b in zip(straight, resumed):
        for field in ("obs", "actions", "rewards", "terminated", "truncated", "mask", "values"):
            assert torch.equal(getattr(a, field), getattr(b, field)), field
        assert np.array_equal(a.episode_returns, b.episode_returns)


def test_collect_episodes_keeps_the_first_episode_of_each_copy():
    # Pendulum episodes all last 200 steps (time limit): the batch is 2 x 200, all counted.
    collector, obs_dim, action = _collector("Pendulum-v1", num_envs=2)
    policy = ActorCritic(obs_dim, action)
    collector.reset(seed=0)
    batch = collector.collect_episodes(policy)
    assert batch.mask.shape == (2, 200) and bool(batch.mask.all())
    assert batch.truncated[:, -1].all() and len(batch.episode_returns) == 2
    # CartPole episodes differ in length: the mask keeps each copy's first episode and nothing after it.
    collector, obs_dim, action = _collector("CartPole-v1", num_envs=4)
    policy = ActorCritic(obs_dim, action)
    collector.reset(seed=0)
    batch = collector.collect_episodes(policy)
    lengths = batch.mask.sum(dim=1)
    assert sorted(lengths.tolist()) == sorted(batch.episode_lengths.tolist())
    for b in range(4):  # counted steps are a prefix that ends with the episode's termination
        n = int(lengths[b])
        assert batch.mask[b, :n].all() and not batch.mask[b, n:].any()
        assert batch.terminated[b, n - 1] or batch.truncated[b, n - 1]
    assert gym.spec("CartPole-v1").max_episode_steps == 500


def test_fast_sampler_has_the_distributions_law():
    # Categorical by Gumbel-max and Gaussian by mean + std * noise: frequencies and moments of 200k draws
    # match the distribution's to within ~5 standard errors (sqrt(p(1-p)/n) <= 0.0012 here).
    from gradascent.rl.envs import ActionSpec

    torch.manual_seed(0)
    policy = ActorCritic(1, ActionSpec("discrete", 3))
    logits = torch.tensor([[0.0, 1.0, -1.0]]).expand(200_000, 3)
    freq = torch.bincount(policy.sample(logits), minlength=3).double() / 200_000
    assert torch.allclose(freq, torch.softmax(logits[0].double(), -1), atol=0.006)
    gauss = ActorCritic(1, ActionSpec("box", 1, (-1.0,), (1.0,)))
    params = torch.tensor([[0.5, -1.0]]).expand(200_000, 2)  # mean 0.5, log-std -1
    a = gauss.sample(params)
    assert abs(a.mean().item() - 0.5) < 0.005 and abs(a.std().item() - torch.e ** -1) < 0.005


def test_episodes_cut_by_the_step_cap_are_reported(tmp_path):
    # An environment that never ends: collection and evaluation stop at their caps and say so.
    import warnings

    import gymnasium as gym

    from gradascent.rl.envs import ObsNormalizer, make_vec_env
    from gradascent.rl.saved import run_episodes

    envs = make_vec_env("GradascentTest/Endless-v0", 2)
    obs_dim, action = spaces_of(envs, "GradascentTest/Endless-v0", "test")
    policy = ActorCritic(obs_dim, action)
    with pytest.warns(UserWarning, match="2 of 2 evaluation episodes were cut at 5 steps"):
        returns = run_episodes(policy, ObsNormalizer(obs_dim, False), "GradascentTest/Endless-v0", 2, 0, max_steps=5)
    assert returns.tolist() == [5.0, 5.0]  # reward 1 a step
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an environment with a time limit: no warning
        run_episodes(policy, ObsNormalizer(obs_dim, False), "GradascentTest/Trunc-v0", 2, 0, max_steps=5)
    envs.close()
    assert gym.spec("GradascentTest/Endless-v0").max_episode_steps is None
    collector, _, _ = _collector("GradascentTest/Endless-v0", 2)
    collector.reset(0)
    with pytest.warns(UserWarning, match="2 of 2 episodes were cut at 7 steps without ending"):
        batch = collector.collect_episodes(policy, max_steps=7)
    assert batch.mask.sum().item() == 14 and len(batch.episode_returns) == 0


def test_evaluation_episode_i_is_seeded_seed_plus_i_whatever_the_number_of_episodes():
    # CartPole-v1 has a vectorised implementation of its own, which draws all copies' starts from one
    # generator; evaluation plays each episode in an environment of its own, so episode i of K episodes from
    # seed S is the single episode from seed S + i.
    from gradascent.rl.saved import run_episodes

    envs = make_vec_env("CartPole-v1", 1)
    obs_dim, action = spaces_of(envs, "CartPole-v1", "test")
    envs.close()
    torch.manual_seed(0)
    policy = ActorCritic(obs_dim, action)
    norm = ObsNormalizer(obs_dim, False)
    together = run_episodes(policy, norm, "CartPole-v1", 6, 100)
    alone = [run_episodes(policy, norm, "CartPole-v1", 1, 100 + i)[0] for i in range(6)]
    assert together.tolist() == alone
    assert len(set(alone)) > 1  # the seeds matter: the episodes differ


def test_many_evaluation_episodes_play_in_batches_with_the_same_returns(monkeypatch):
    # 100,000,000 episodes built as many environments at once (18 GB after 9 minutes); batches of EVAL_BATCH
    from gradascent.rl import saved

    envs = make_vec_env("CartPole-v1", 1)
    obs_dim, action = spaces_of(envs, "CartPole-v1", "test")
    envs.close()
    torch.manual_seed(0)
    policy, norm = ActorCritic(obs_dim, action), ObsNormalizer(obs_dim, False)
    built = []
    real = saved.make_vec_env
    monkeypatch.setattr(saved, "make_vec_env", lambda env_id, n, **kw: built.append(n) or real(env_id, n, **kw))
    monkeypatch.setattr(saved, "EVAL_BATCH", 4)
    many = saved.run_episodes(policy, norm, "CartPole-v1", 10, seed=5)
    assert built == [4, 4, 2]
    monkeypatch.setattr(saved, "EVAL_BATCH", 64)
    assert saved.run_episodes(policy, norm, "CartPole-v1", 10, seed=5).tolist() == many.tolist()  # in one batch
    assert saved.run_episodes(policy, norm, "CartPole-v1", 3, seed=9).tolist() == many[4:7].tolist()  # i: seed+i

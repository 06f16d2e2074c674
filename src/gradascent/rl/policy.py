"""MLP actor-critic for classic control: Categorical for Discrete actions, diagonal Gaussian for a Box.

The Gaussian's log standard deviation is a free parameter per action dimension, independent of the state
(PPO paper, sec. 6.1). Actions are sampled unclipped; the rollout clips what it sends to the environment
and stores the unclipped sample, so that log pi(a|s) is the log-probability of what was actually drawn.

A distribution is described by a flat ``params`` tensor (N, P), which the rollout stores next to the
actions: the logits (P = n) for a Categorical, mean and log-std (P = 2 * dim) for a Gaussian. PPO-Penalty
rebuilds pi_old from it to take the exact KL(pi_old || pi).

Initialisation (``ortho_init``): orthogonal weights with gain sqrt(2) for hidden layers, 0.01 for the
policy head and 1 for the value head, zero biases (Engstrom et al. 2020, "Implementation matters";
Andrychowicz et al. 2021).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn
from torch.distributions import Categorical, Distribution, Independent, Normal

from gradascent.rl.envs import ActionSpec

ACTIVATIONS = {"tanh": nn.Tanh, "relu": nn.ReLU}


def _mlp(sizes: list[int], activation: str) -> nn.Sequential:
    layers: list[nn.Module] = []
    for a, b in zip(sizes, sizes[1:]):
        layers += [nn.Linear(a, b), ACTIVATIONS[activation]()]
    return nn.Sequential(*layers)


def _init_linear(layer: nn.Linear, gain: float) -> None:
    nn.init.orthogonal_(layer.weight, gain)
    nn.init.zeros_(layer.bias)


class ActorCritic(nn.Module):
    """pi(a|s) and V(s) from MLPs: one shared trunk with two heads, or two separate networks."""

    def __init__(
        self,
        obs_dim: int,
        action: ActionSpec,
        hidden_sizes: tuple[int, ...] = (64, 64),
        activation: str = "tanh",
        shared: bool = False,
        ortho_init: bool = True,
        init_log_std: float = 0.0,
    ) -> None:
        super().__init__()
        self.obs_dim, self.action = obs_dim, action
        self.hidden_sizes, self.activation, self.shared = tuple(hidden_sizes), activation, shared
        sizes = [obs_dim, *hidden_sizes]
        self.actor_body = _mlp(sizes, activation)
        self.critic_body = None if shared else _mlp(sizes, activation)
        out = action.dim  # logits, or the Gaussian's mean
        self.actor_head = nn.Linear(sizes[-1], out)
        self.critic_head = nn.Linear(sizes[-1], 1)
        self.log_std = nn.Parameter(torch.full((action.dim,), float(init_log_std))) if action.kind == "box" else None
        if ortho_init:
            for module in self.modules():
                if isinstance(module, nn.Linear):
                    _init_linear(module, math.sqrt(2))
            _init_linear(self.actor_head, 0.01)
            _init_linear(self.critic_head, 1.0)

    def spec(self) -> dict[str, Any]:
        """Everything needed to rebuild this network (weights aside), JSON-able."""
        return {"obs_dim": self.obs_dim, "action": self.action.to_dict(), "hidden_sizes": list(self.hidden_sizes),
                "activation": self.activation, "shared": self.shared}

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> ActorCritic:
        return cls(int(spec["obs_dim"]), ActionSpec.from_dict(spec["action"]), tuple(spec["hidden_sizes"]),
                   spec["activation"], bool(spec["shared"]), ortho_init=False)

    def forward(self, obs: Tensor) -> tuple[Tensor, Tensor]:
        """obs (N, obs_dim) -> (params (N, P), values (N,))."""
        h = self.actor_body(obs)
        hv = h if self.critic_body is None else self.critic_body(obs)
        return self._params(self.actor_head(h)), self.critic_head(hv).squeeze(-1)

    def dist_params(self, obs: Tensor) -> Tensor:
        """The actor alone: (N, obs_dim) -> params (N, P)."""
        return self._params(self.actor_head(self.actor_body(obs)))

    def value(self, obs: Tensor) -> Tensor:
        """V(s): (N, obs_dim) -> (N,)."""
        h = self.actor_body(obs) if self.critic_body is None else self.critic_body(obs)
        return self.critic_head(h).squeeze(-1)

    def _params(self, head: Tensor) -> Tensor:
        if self.log_std is None:
            return head
        return torch.cat([head, self.log_std.expand_as(head)], dim=-1)

    def distribution(self, params: Tensor) -> Distribution:
        """pi(.|s) from params (N, P): Categorical over logits, or an independent Normal per dimension."""
        if self.log_std is None:
            return Categorical(logits=params, validate_args=False)
        mean, log_std = params.chunk(2, dim=-1)
        return Independent(Normal(mean, log_std.exp(), validate_args=False), 1, validate_args=False)

    def sample(self, params: Tensor) -> Tensor:
        """One action per row drawn from pi(.|s); the same law as ``distribution(params).sample()`` with
        fewer operations, for the per-step loop of a rollout. Categorical: the Gumbel-max trick,
        argmax_a(z_a + g_a) with g_a = -log(E_a), E_a ~ Exp(1) i.i.d."""
        if self.log_std is None:
            return (params - torch.empty_like(params).exponential_().log()).argmax(dim=-1)
        mean, log_std = params.chunk(2, dim=-1)
        return mean + log_std.exp() * torch.randn_like(mean)

    def mode(self, params: Tensor) -> Tensor:
        """The deterministic action: argmax of the logits, or the Gaussian's mean (unclipped)."""
        if self.log_std is None:
            return params.argmax(dim=-1)
        return params.chunk(2, dim=-1)[0]

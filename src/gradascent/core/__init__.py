"""gradascent.core: the mathematics of policy optimization as pure torch functions.

One function per equation of docs/equations.md. No config objects, no logging, no ``.item()``; tensors
are (B, T) batch-first with a bool ``mask`` (True counts), or flat (N,) with ``mask=None``. Nothing here
imports from the rest of the package.
"""

from gradascent.core.advantages import (
    advantages_from_returns,
    batch_mean_advantages,
    explained_variance,
    group_advantages,
    rloo_advantages,
    whiten,
)
from gradascent.core.kl import (
    adaptive_kl_coef,
    categorical_kl,
    kl_estimate,
    kl_k1,
    kl_k2,
    kl_k3,
    kl_penalized_rewards,
    proportional_kl_coef,
)
from gradascent.core.logits import entropy_from_logits, token_logprobs
from gradascent.core.losses import (
    bradley_terry_loss,
    clipped_surrogate_loss,
    entropy_loss,
    kl_penalty_surrogate_loss,
    policy_gradient_loss,
    value_loss,
)
from gradascent.core.reduce import AGGREGATIONS, aggregate, masked_mean, masked_sum, masked_var
from gradascent.core.returns import discounted_returns, gae, nstep_returns

__all__ = [
    "AGGREGATIONS",
    "adaptive_kl_coef",
    "advantages_from_returns",
    "aggregate",
    "batch_mean_advantages",
    "bradley_terry_loss",
    "categorical_kl",
    "clipped_surrogate_loss",
    "discounted_returns",
    "entropy_from_logits",
    "entropy_loss",
    "explained_variance",
    "gae",
    "group_advantages",
    "kl_estimate",
    "kl_k1",
    "kl_k2",
    "kl_k3",
    "kl_penalized_rewards",
    "kl_penalty_surrogate_loss",
    "masked_mean",
    "masked_sum",
    "masked_var",
    "nstep_returns",
    "policy_gradient_loss",
    "proportional_kl_coef",
    "rloo_advantages",
    "token_logprobs",
    "value_loss",
    "whiten",
]

"""Policy-gradient estimators for RL with verifiable rewards.

Rewards are ``[batch, group]`` (a prompt's ``G`` responses on ``group``);
token arrays (log-probabilities, masks) are ``[batch, group, time]``.

* ``advantages``: REINFORCE (leave-one-out batch baseline), RLOO, GRPO,
  Dr. GRPO, BNPO, PSR / NSR / W-REINFORCE, SPO's tracker.
* ``objectives``: the token-level (IS-corrected) surrogate, PPO clip with
  clip-higher and dual clip, GPPO, truncated IS weights, explicit aggregation.
* ``allocation``: GVM-RAFT budgets, Reinforce-Ada successive elimination.
* ``selection``: variance-aware prompt selection, MMR1's VAS and VADE.
* ``mixture``: BVPO's MSE-optimal mixture of two gradient estimators.
* ``contrastive``: CoPG, the off-policy KL-regularized contrastive gradient.
* ``exact``: tabular sequence policies with exact objectives and gradients.

The tasks these are studied on (the digit-sum task, the bandit population)
live in ``gradlab.tasks``.
"""

from gradlab.policy.advantages import (
  BNPOParams,
  SPOTracker,
  bnpo_advantages,
  bnpo_beta_params,
  dr_grpo_advantages,
  grpo_advantages,
  nsr_advantages,
  psr_advantages,
  reinforce_advantages,
  rloo_advantages,
  spo_advantages,
  spo_init,
  spo_sampling_weights,
  spo_update,
  weighted_reinforce_advantages,
)
from gradlab.policy.allocation import (
  gvm_allocation,
  reinforce_ada_done,
  reinforce_ada_sample,
  reinforce_ada_select,
  round_preserving_sum,
)
from gradlab.policy.contrastive import (
  copg_advantages,
  copg_loss,
  regularized_optimum,
  regularized_rewards,
)
from gradlab.policy.exact import (
  all_sequences,
  exact_objective,
  expected_group_estimate,
  group_scale,
  grpo_h,
  init_tabular,
  sample_sequences,
  tabular_token_logp,
)
from gradlab.policy.mixture import estimate_mixture_weight, mix, mixture_mse, mixture_weight
from gradlab.policy.objectives import (
  AGGREGATIONS,
  aggregate,
  gppo_loss,
  policy_gradient_loss,
  ppo_clip_loss,
  truncated_is_weights,
)
from gradlab.policy.selection import (
  VADEState,
  distinct_n,
  outcome_variance,
  vade_init,
  vade_select,
  vade_update,
  vas_sample,
  vas_scores,
)

__all__ = [
  "AGGREGATIONS",
  "BNPOParams",
  "SPOTracker",
  "VADEState",
  "aggregate",
  "all_sequences",
  "bnpo_advantages",
  "bnpo_beta_params",
  "copg_advantages",
  "copg_loss",
  "distinct_n",
  "dr_grpo_advantages",
  "estimate_mixture_weight",
  "exact_objective",
  "expected_group_estimate",
  "gppo_loss",
  "group_scale",
  "grpo_advantages",
  "grpo_h",
  "gvm_allocation",
  "init_tabular",
  "mix",
  "mixture_mse",
  "mixture_weight",
  "nsr_advantages",
  "outcome_variance",
  "policy_gradient_loss",
  "ppo_clip_loss",
  "psr_advantages",
  "regularized_optimum",
  "regularized_rewards",
  "reinforce_ada_done",
  "reinforce_ada_sample",
  "reinforce_ada_select",
  "reinforce_advantages",
  "rloo_advantages",
  "round_preserving_sum",
  "sample_sequences",
  "spo_advantages",
  "spo_init",
  "spo_sampling_weights",
  "spo_update",
  "tabular_token_logp",
  "truncated_is_weights",
  "vade_init",
  "vade_select",
  "vade_update",
  "vas_sample",
  "vas_scores",
  "weighted_reinforce_advantages",
]

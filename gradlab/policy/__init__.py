"""Policy-gradient estimators for RL with verifiable rewards.

Rewards are ``[batch, group]`` (a prompt's ``G`` responses on ``group``);
token arrays (log-probabilities, masks) are ``[batch, group, time]``.

* ``advantages``: REINFORCE (leave-one-out batch baseline), RLOO, GRPO,
  Dr. GRPO, BNPO, PSR / NSR / W-REINFORCE, SPO's tracker.
* ``objectives``: the token-level (IS-corrected) surrogate, PPO clip with
  clip-higher and dual clip, GPPO, truncated IS weights, explicit aggregation.
* ``allocation``: GVM-RAFT budgets, Reinforce-Ada successive elimination.
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
from gradlab.policy.objectives import (
  AGGREGATIONS,
  aggregate,
  gppo_loss,
  policy_gradient_loss,
  ppo_clip_loss,
  truncated_is_weights,
)

__all__ = [
  "AGGREGATIONS",
  "BNPOParams",
  "SPOTracker",
  "aggregate",
  "all_sequences",
  "bnpo_advantages",
  "bnpo_beta_params",
  "dr_grpo_advantages",
  "exact_objective",
  "expected_group_estimate",
  "gppo_loss",
  "group_scale",
  "grpo_advantages",
  "grpo_h",
  "gvm_allocation",
  "init_tabular",
  "nsr_advantages",
  "policy_gradient_loss",
  "ppo_clip_loss",
  "psr_advantages",
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
  "weighted_reinforce_advantages",
]

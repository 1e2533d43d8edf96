"""Policy-gradient estimators for RL with verifiable rewards.

Rewards are ``[batch, group]`` (a prompt's ``G`` responses on ``group``);
token arrays (log-probabilities, masks) are ``[batch, group, time]``.

* ``advantages``: REINFORCE (leave-one-out batch baseline), RLOO, GRPO,
  Dr. GRPO, BNPO, PSR / NSR / W-REINFORCE, SPO's tracker.
* ``objectives``: the token-level (IS-corrected) surrogate, PPO clip with
  clip-higher and dual clip, GPPO, truncated IS weights, explicit aggregation
  (``aggregate`` over ``AGGREGATIONS``).
* ``allocation``: GVM-RAFT budgets, Reinforce-Ada successive elimination
  (``reinforce_ada_sample``, ``reinforce_ada_select``, ``reinforce_ada_done``,
  ``reinforce_ada_advantages``).
* ``selection``: variance-aware prompt selection, MMR1's VAS (on the
  ``outcome_variance`` score) and VADE.
* ``mixture``: BVPO's MSE-optimal mixture of two gradient estimators, and its
  ``mixture_mse``.
* ``contrastive``: CoPG, the off-policy KL-regularized contrastive gradient
  (``regularized_rewards``, ``regularized_optimum``).
* ``exact``: tabular sequence policies with exact objectives and gradients,
  and ``sample_sequences`` from them.
* ``pacs``: PACS, the reward as a label of the policy's log-ratio (an implicit critic).
* ``unified``: the unified policy gradient estimator (UPGE): SFT, PPO, GRPO, online DPO.
* ``cures``: CurES's prompt sampling and variance-minimizing rollout allocation,
  from the posterior-mean ``cures_accuracy``.
* ``kl``: per-token KL-to-reference estimators (k1, k2, k3) and the KL loss term.
* ``gspo`` / ``cispo``: sequence-ratio (GSPO, GSPO-token) and clipped-IS-weight
  (CISPO) objectives.
* ``shaping``: DAPO's overlong penalty, truncation mask and dynamic sampling,
  batch-level reward scaling, high-entropy token selection.

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
  reinforce_ada_advantages,
  reinforce_ada_done,
  reinforce_ada_sample,
  reinforce_ada_select,
)
from gradlab.policy.cispo import cispo_loss
from gradlab.policy.contrastive import (
  copg_advantages,
  copg_loss,
  regularized_optimum,
  regularized_rewards,
)
from gradlab.policy.cures import (
  cures_accuracy,
  cures_allocation,
  cures_sampling_probs,
  cures_variance,
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
from gradlab.policy.gspo import gspo_loss, sequence_log_ratio
from gradlab.policy.kl import KL_ESTIMATORS, kl_estimate, kl_penalty_loss
from gradlab.policy.mixture import estimate_mixture_weight, mix, mixture_mse, mixture_weight
from gradlab.policy.objectives import (
  AGGREGATIONS,
  aggregate,
  gppo_loss,
  policy_gradient_loss,
  ppo_clip_loss,
  truncated_is_weights,
)
from gradlab.policy.pacs import pacs_advantages, pacs_loss
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
from gradlab.policy.shaping import (
  DynamicSample,
  batch_std_advantages,
  dynamic_sampling,
  high_entropy_mask,
  mask_truncated,
  overlong_penalty,
  reinforce_pp_advantages,
  token_entropy,
)
from gradlab.policy.unified import (
  UPGEParts,
  ppo_stable_mask,
  upge_dpo,
  upge_grpo,
  upge_loss,
  upge_ppo,
  upge_sft,
)

__all__ = [
  "AGGREGATIONS",
  "BNPOParams",
  "DynamicSample",
  "KL_ESTIMATORS",
  "SPOTracker",
  "UPGEParts",
  "VADEState",
  "aggregate",
  "all_sequences",
  "batch_std_advantages",
  "bnpo_advantages",
  "bnpo_beta_params",
  "cispo_loss",
  "copg_advantages",
  "copg_loss",
  "cures_accuracy",
  "cures_allocation",
  "cures_sampling_probs",
  "cures_variance",
  "distinct_n",
  "dr_grpo_advantages",
  "dynamic_sampling",
  "estimate_mixture_weight",
  "exact_objective",
  "expected_group_estimate",
  "gppo_loss",
  "group_scale",
  "grpo_advantages",
  "grpo_h",
  "gspo_loss",
  "gvm_allocation",
  "high_entropy_mask",
  "init_tabular",
  "kl_estimate",
  "kl_penalty_loss",
  "mask_truncated",
  "mix",
  "mixture_mse",
  "mixture_weight",
  "nsr_advantages",
  "outcome_variance",
  "overlong_penalty",
  "pacs_advantages",
  "pacs_loss",
  "policy_gradient_loss",
  "ppo_clip_loss",
  "ppo_stable_mask",
  "psr_advantages",
  "regularized_optimum",
  "regularized_rewards",
  "reinforce_ada_advantages",
  "reinforce_ada_done",
  "reinforce_ada_sample",
  "reinforce_ada_select",
  "reinforce_advantages",
  "reinforce_pp_advantages",
  "rloo_advantages",
  "sample_sequences",
  "sequence_log_ratio",
  "spo_advantages",
  "spo_init",
  "spo_sampling_weights",
  "spo_update",
  "tabular_token_logp",
  "token_entropy",
  "truncated_is_weights",
  "upge_dpo",
  "upge_grpo",
  "upge_loss",
  "upge_ppo",
  "upge_sft",
  "vade_init",
  "vade_select",
  "vade_update",
  "vas_sample",
  "vas_scores",
  "weighted_reinforce_advantages",
]

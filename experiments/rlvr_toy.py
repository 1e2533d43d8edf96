r"""RLVR on a toy verifiable task: PSR, NSR, W-REINFORCE and GRPO, with exact pass@k.

  python -m experiments.rlvr_toy --workdir=/tmp/gradlab/rlvr

The comparison of "The Surprising Effectiveness of Negative Reinforcement in
LLM Reasoning" (Zhu et al. 2025) on a task where pass@k is exact: a tiny
flax transformer answers "three digits summing to t" (t = 0..27, the
digit-sum task of ``gradlab.policy.digit_sum``). The base model is first
fine-tuned (SFT) on a *subset* of the correct answers (non-decreasing digits)
mixed with ``--sft_noise`` random answers, so it starts with a low pass@1 and
limited coverage. Then each method trains from that base with ``G`` responses
per prompt (every prompt every step), on-policy, Adam; pass@k for k = 1..64
is computed exactly (all 1000 responses per prompt) every ``--eval_every``
steps. Writes ``results.md/.csv`` (final pass@k per method), ``pass_at_k.png``
(pass@k against k, base and final), ``pass1.png`` (pass@1 over training) and
``runs/<method>.json`` per finished method (a restart skips those).

The paper's finding to compare with: PSR raises pass@1 but lowers pass@k at
large k; NSR keeps or raises pass@k across k; W-REINFORCE (lambda = 0.1) is
best or near-best across k.
"""

from __future__ import annotations

import dataclasses
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax

from experiments import flag_checks, reporting, runner
from gradlab import models, policy, train
from gradlab.tasks import digit_sum as ds

METHODS = {
  "psr": policy.psr_advantages,
  "nsr": policy.nsr_advantages,
  "w_reinforce": policy.weighted_reinforce_advantages,
  "grpo": policy.grpo_advantages,
  "rloo": policy.rloo_advantages,
}
KS = (1, 2, 4, 8, 16, 32, 64)


PROG = "rlvr_toy"


@dataclasses.dataclass(frozen=True)
class Config:
  """The flags of ``rlvr_toy`` (``--name=value``); defaults are the main's."""

  methods: list[str] = runner.option(["psr", "nsr", "w_reinforce", "grpo"], "Methods to run.")
  group: int = runner.option(8, "Responses per prompt (G).")
  rl_steps: int = runner.option(100, "RL steps per method.")
  sft_steps: int = runner.option(40, "SFT steps for the base model.")
  sft_noise: float = runner.option(0.5, "Fraction of random answers in the SFT data.")
  learning_rate: float = runner.option(1e-3, "RL learning rate (Adam).")
  eval_every: int = runner.option(25, "Steps between exact pass@k evaluations.")
  seed: int = runner.option(0, "Seed.")


MODEL = models.TinyTransformer(
  vocab=ds.VOCAB, dim=32, heads=2, layers=2, max_len=ds.RESPONSE_LEN + 1
)


def _sft_data(noise: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
  rng = np.random.default_rng(seed)
  sums = ds.RESPONSES.sum(1)
  sorted_ok = np.all(np.diff(ds.RESPONSES, axis=1) >= 0, axis=1)
  targets, answers = [], []
  for t in range(ds.NUM_TARGETS):
    subset = ds.RESPONSES[(sums == t) & sorted_ok]
    n = 64
    pick = subset[rng.integers(0, len(subset), n)]
    random = ds.RESPONSES[rng.integers(0, len(ds.RESPONSES), n)]
    noisy = rng.random(n) < noise
    answers.append(np.where(noisy[:, None], random, pick))
    targets.append(np.full(n, t))
  return np.concatenate(targets), np.concatenate(answers)


def _base_model(seed: int, steps: int, noise: float):
  targets, answers = _sft_data(noise, seed)
  params = MODEL.init(jax.random.key(seed), jnp.zeros((1, ds.RESPONSE_LEN), jnp.int32))
  opt = optax.adam(3e-3)
  t_all, a_all = jnp.asarray(targets), jnp.asarray(answers)

  def sft_loss(p, batch, key):  # the batch is drawn from the key
    del batch
    idx = jax.random.randint(key, (256,), 0, t_all.shape[0])
    return -ds.response_logp(MODEL.apply, p, t_all[idx], a_all[idx]).sum(-1).mean(), {}

  update = jax.jit(train.make_update(sft_loss, opt, norm_metrics=False))
  state = train.TrainState.create(params, opt, jax.random.key(seed))
  for i in range(steps):
    state, _ = update(state, None, jax.random.key(10_000 + i))
  return state.params


def _train(method: str, base, steps: int, group: int, lr: float, eval_every: int, seed: int):
  adv_fn = METHODS[method]
  opt = optax.adam(lr)
  targets = jnp.arange(ds.NUM_TARGETS)

  def rl_loss(p, batch, key):  # on-policy: the responses are drawn from the key
    del batch
    responses = ds.sample(MODEL.apply, jax.lax.stop_gradient(p), key, targets, group)  # [28, G, 3]
    r = ds.rewards(targets[:, None], responses)  # [28, G]
    mask = jnp.ones(responses.shape, jnp.float32)
    logp = ds.response_logp(MODEL.apply, p, jnp.broadcast_to(targets[:, None], r.shape), responses)
    loss = policy.policy_gradient_loss(logp, adv_fn(r), mask, aggregation="token_mean")
    return loss, {"reward": jnp.mean(r)}

  update = jax.jit(train.make_update(rl_loss, opt, norm_metrics=False))
  success = jax.jit(lambda p: ds.success_rates(MODEL.apply, p))
  state = train.TrainState.create(base, opt, jax.random.key(seed + 1))
  history = []
  for i in range(steps + 1):
    if i % eval_every == 0 or i == steps:
      history.append(
        {"step": i, **{f"pass@{k}": v for k, v in ds.pass_at_k(success(state.params), KS).items()}}
      )
    if i < steps:
      state, _ = update(state, None, jax.random.fold_in(jax.random.key(seed + 1), i))
  return history


def run(config: Config, workdir: str):
  flag_checks.check_config(config)
  c = flag_checks
  for m in config.methods:
    c.one_of("methods", m, METHODS)
  c.require(config.group >= 2, "group", ">= 2", config.group)
  for name in ("rl_steps", "eval_every", "learning_rate"):
    c.positive(name, getattr(config, name))
  c.non_negative("sft_steps", config.sft_steps)
  c.require(0 <= config.sft_noise <= 1, "sft_noise", "in [0, 1]", config.sft_noise)
  c.check_same_run(
    workdir,
    {
      k: getattr(config, k)
      for k in (
        "group",
        "rl_steps",
        "sft_steps",
        "sft_noise",
        "learning_rate",
        "eval_every",
        "seed",
      )
    },
  )
  os.makedirs(os.path.join(workdir, "runs"), exist_ok=True)
  base = _base_model(config.seed, config.sft_steps, config.sft_noise)
  base_pass = ds.pass_at_k(ds.success_rates(MODEL.apply, base), KS)
  print("base: " + ", ".join(f"pass@{k} {v:.3f}" for k, v in base_pass.items()), flush=True)
  results = {}
  for method in config.methods:
    path = os.path.join(workdir, "runs", f"{method}.json")
    results[method], reused = reporting.cached_unit(
      path,
      lambda method=method: _train(
        method,
        base,
        config.rl_steps,
        config.group,
        config.learning_rate,
        config.eval_every,
        config.seed,
      ),
    )
    if not reused:
      last = results[method][-1]
      print(f"{method}: " + ", ".join(f"pass@{k} {last[f'pass@{k}']:.3f}" for k in KS), flush=True)
  rows = [{"method": "base (SFT)", **{f"pass@{k}": v for k, v in base_pass.items()}}]
  rows += [
    {"method": m, **{f"pass@{k}": h[-1][f"pass@{k}"] for k in KS}} for m, h in results.items()
  ]
  reporting.write_table(
    workdir,
    rows,
    title="RLVR toy: exact pass@k after RL",
    notes=(
      f"Digit-sum task, 28 prompts x G={config.group}, {config.rl_steps} "
      f"on-policy steps, Adam lr {config.learning_rate:g}; base SFT on sorted correct "
      f"answers + {config.sft_noise:.0%} noise. Paper (Zhu et al. 2025, "
      "Qwen2.5-Math-7B on MATH): PSR best at pass@1 and worst at large k; "
      "NSR and W-REINFORCE keep pass@k at large k."
    ),
  )
  reporting.plot_curves(
    os.path.join(workdir, "pass_at_k.png"),
    {
      "base": (list(KS), [base_pass[k] for k in KS]),
      **{m: (list(KS), [h[-1][f"pass@{k}"] for k in KS]) for m, h in results.items()},
    },
    xlabel="k",
    ylabel="pass@k (exact)",
    title="pass@k after RL",
  )
  reporting.plot_curves(
    os.path.join(workdir, "pass1.png"),
    {m: ([e["step"] for e in h], [e["pass@1"] for e in h]) for m, h in results.items()},
    xlabel="RL step",
    ylabel="pass@1 (exact)",
    title="pass@1 over training",
  )
  print(f"results in {workdir}")


if __name__ == "__main__":
  runner.main(run, Config, prog=PROG, workdir='runs/rlvr_toy')

r"""RLVR on a toy verifiable task: PSR, NSR, W-REINFORCE, GRPO, RLOO, CoPG, VADE, GPPO,
Reinforce-Ada, SPO and PACS, with exact pass@k.

  python -m experiments.rlvr_toy --workdir=/tmp/gradlab/rlvr

The comparison of "The Surprising Effectiveness of Negative Reinforcement in
LLM Reasoning" (Zhu et al. 2025) on a task where pass@k is exact: a tiny flax
transformer answers "three digits summing to t, none equal to f"
(``gradlab.tasks.digit_sum``: 300 prompts, every one with at least one correct
answer), split into training prompts and ``--held_out`` prompts never trained
on. The base model is fine-tuned (SFT) on a *subset* of the correct answers
(non-decreasing digits) of the training prompts mixed with ``--sft_noise``
random answers, so it starts with a low pass@1 and limited coverage. Then
each method trains from that base in the paper's regime as far as a tiny
model allows: ``--prompts_per_step`` prompts x ``--group`` responses per
step, the clipped token-mean loss (PPO clip ``--clip_eps``,
``--updates_per_batch`` Adam steps on each batch of rollouts, so the clip
acts), for every learning rate of ``--learning_rates`` and ``--seeds`` seeds,
all vmapped in one program per method. pass@k for k = 1..256 is exact (all
1000 responses of every prompt) every ``--eval_every`` steps, on both splits.

Methods: the advantages of ``gradlab.policy`` (``psr``, ``nsr``,
``w_reinforce`` with lambda = 0.1, ``grpo``, ``rloo``), ``copg`` (CoPG's
regularized-reward advantages with the base model as the reference,
``--copg_beta``) and ``grpo_vade`` (GRPO on prompts chosen by VADE's
Thompson sampler instead of uniformly). The other estimators of
``gradlab.policy``, each in its own regime:

* ``gppo``: GRPO's advantages with GPPO's loss (clipped tokens keep a bounded
  gradient) in place of PPO's.
* ``reinforce_ada``: Reinforce-Ada's balanced successive elimination: rounds
  of ``G`` responses for every prompt not yet holding ``G/2`` correct and
  ``G/2`` wrong ones, at most ``--ada_rounds``; ``G`` kept per prompt and
  advantages from every response it drew. It samples up to ``--ada_rounds``
  times the responses of the other methods.
* ``spo``: single-stream SPO: one response per prompt on prompts drawn (without
  replacement) by its tracker's priority weights, advantages ``r - p_hat``
  normalized over the batch, the KL-adaptive tracker update; the tracker
  starts from 8 base-model samples per prompt. It uses ``G`` times fewer
  responses per step than the group methods.
* ``pacs``: PACS's supervised loss (the reward predicted from
  ``--pacs_beta`` times the sequence log-ratio to the rollout policy,
  RLOO-centred, class-balanced per group), no clip, as the official code.

The table reports the *held-out* prompts for every method and rate, mean +-
sd over seeds, and marks the rate each method would get if tuned on the
*training* prompts (mean pass@k over k; the figures use it). Writes
``results.md/.csv`` (that table and, at each rate, the differences NSR - PSR,
NSR - base, PSR - base, W-REINFORCE - PSR at pass@1 and pass@256 with their
standard errors, beside the paper's claim), ``sweep.csv``
(every method, rate and seed), ``pass_at_k.png``, ``pass1.png`` and
``runs/<method>.json`` per finished method (a restart skips those).

The paper's finding to compare with (Qwen2.5-Math-7B, MATH): PSR raises
pass@1 but lowers pass@k at large k; NSR keeps or raises pass@k across k;
W-REINFORCE (lambda = 0.1) is best or near-best across k.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax

from experiments import flag_checks, reporting, runner
from gradlab import models, policy, train
from gradlab.tasks import digit_sum as ds

ADVANTAGES = {
  "psr": policy.psr_advantages,
  "nsr": policy.nsr_advantages,
  "w_reinforce": policy.weighted_reinforce_advantages,
  "grpo": policy.grpo_advantages,
  "rloo": policy.rloo_advantages,
  "grpo_vade": policy.grpo_advantages,
}
METHODS = (*ADVANTAGES, "copg", "gppo", "reinforce_ada", "spo", "pacs")
SPO_OFFLINE_SAMPLES = 8  # base-model samples per prompt that start SPO's tracker
KS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
PROG = "rlvr_toy"


@dataclasses.dataclass(frozen=True)
class Config:
  """The flags of ``rlvr_toy`` (``--name=value``); defaults are the main's."""

  methods: list[str] = runner.option(list(METHODS), "Methods to run.")
  learning_rates: list[str] = runner.option(["1e-4", "3e-4", "1e-3"], "Adam rates swept.")
  seeds: int = runner.option(3, "RL seeds per method and rate (vmapped).")
  group: int = runner.option(8, "Responses per prompt (G).")
  prompts_per_step: int = runner.option(32, "Training prompts per step.")
  rl_steps: int = runner.option(200, "RL steps per method.")
  updates_per_batch: int = runner.option(2, "Clipped Adam steps on each batch of rollouts.")
  clip_eps: float = runner.option(0.2, "PPO clip epsilon.")
  copg_beta: float = runner.option(0.05, "CoPG's KL weight to the base model.")
  pacs_beta: float = runner.option(1.0, "PACS's score scale beta (official scripts: 1, 2).")
  ada_rounds: int = runner.option(4, "Reinforce-Ada's maximum sampling rounds per step.")
  held_out: float = runner.option(0.25, "Fraction of prompts held out of SFT and RL.")
  sft_steps: int = runner.option(300, "SFT steps for the base model.")
  sft_noise: float = runner.option(0.5, "Fraction of random answers in the SFT data.")
  eval_every: int = runner.option(50, "Steps between exact pass@k evaluations.")
  eval_prompts: int = runner.option(0, "Prompts of each split evaluated exactly (0: all).")
  seed: int = runner.option(0, "Seed of the split and the base model.")


MODEL = models.TinyTransformer(
  vocab=ds.VOCAB, dim=32, heads=2, layers=2, max_len=ds.PROMPT_LEN + ds.RESPONSE_LEN
)


def _sft_data(prompts, noise: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
  rng = np.random.default_rng(seed)
  sorted_ok = np.all(np.diff(ds.RESPONSES, axis=1) >= 0, axis=1)
  correct = ds.correct_mask(prompts)
  out_p, out_a = [], []
  for i, p in enumerate(prompts):
    subset = ds.RESPONSES[correct[i] & sorted_ok]
    if len(subset) == 0:  # no sorted answer avoids the forbidden digit: any correct one
      subset = ds.RESPONSES[correct[i]]
    n = 16
    pick = subset[rng.integers(0, len(subset), n)]
    random = ds.RESPONSES[rng.integers(0, len(ds.RESPONSES), n)]
    noisy = rng.random(n) < noise
    out_a.append(np.where(noisy[:, None], random, pick))
    out_p.append(np.repeat(p[None], n, 0))
  return np.concatenate(out_p), np.concatenate(out_a)


def _base_model(prompts, seed: int, steps: int, noise: float):
  p_all, a_all = (jnp.asarray(x) for x in _sft_data(prompts, noise, seed))
  params = MODEL.init(jax.random.key(seed), jnp.zeros((1, ds.PROMPT_LEN + 2), jnp.int32))
  opt = optax.adam(3e-3)

  def sft_loss(p, batch, key):  # the batch is drawn from the key
    del batch
    idx = jax.random.randint(key, (256,), 0, p_all.shape[0])
    return -ds.response_logp(MODEL.apply, p, p_all[idx], a_all[idx]).sum(-1).mean(), {}

  update = jax.jit(train.make_update(sft_loss, opt, norm_metrics=False))
  state = train.TrainState.create(params, opt, jax.random.key(seed))
  for i in range(steps):
    state, _ = update(state, None, jax.random.key(10_000 + i))
  return state.params


def _reinforce_ada_rollouts(params, key, prompts, group, rounds):
  """Reinforce-Ada's balanced rollouts: ``group`` kept responses ``[B, G, 3]``, their rewards
  and their advantages from the global statistics of every response drawn."""
  drawn = []  # each round's responses, collected as reinforce_ada_sample draws them

  def sample_rewards(k, active):
    del active  # a vmapped program samples every prompt anyway; inactive rows are ignored
    y = ds.sample(MODEL.apply, params, k, prompts, group)
    drawn.append(y)
    return ds.rewards(prompts[:, None], y)

  r_all, valid, kept, _ = policy.reinforce_ada_sample(
    key, sample_rewards, prompts.shape[0], round_size=group, max_rounds=rounds, keep=group
  )
  adv_all = policy.reinforce_ada_advantages(r_all, valid)
  # the first round gives every prompt `group` responses, so each row keeps exactly `group`
  order = jnp.argsort(~kept, axis=1, stable=True)[:, :group]
  responses = jnp.take_along_axis(jnp.concatenate(drawn, 1), order[..., None], 1)
  return responses, jnp.take_along_axis(r_all, order, 1), jnp.take_along_axis(adv_all, order, 1)


def _rl_step(method, config, base, train_prompts):
  """One replica's step: ``(params, opt_state, vade, spo), key -> (..., mean reward)``."""
  opt = optax.inject_hyperparams(optax.adam)(learning_rate=1e-3)
  num = train_prompts.shape[0]
  b = config.prompts_per_step
  g = 1 if method == "spo" else config.group  # SPO: a single stream, one response per prompt

  def step(carry, key):
    params, opt_state, vade, spo = carry
    k_pick, k_sample = jax.random.split(key)
    if method == "grpo_vade":
      idx, _ = policy.vade_select(k_pick, vade, b)
    elif method == "spo":
      w = policy.spo_sampling_weights(spo)
      idx = jax.random.choice(k_pick, num, (b,), replace=False, p=w)
    else:
      idx = jax.random.choice(k_pick, num, (b,), replace=False)
    prompts = train_prompts[idx]
    if method == "reinforce_ada":
      responses, r, adv = _reinforce_ada_rollouts(params, k_sample, prompts, g, config.ada_rounds)
    else:
      responses = ds.sample(MODEL.apply, params, k_sample, prompts, g)  # [B, G, 3]
      r = ds.rewards(prompts[:, None], responses)  # [B, G]
    pb = jnp.broadcast_to(prompts[:, None], (b, g, 2))
    old = ds.response_logp(MODEL.apply, params, pb, responses)
    if method == "copg":
      ref = ds.response_logp(MODEL.apply, base, pb, responses)
      adv = policy.copg_advantages(r, old.sum(-1), ref.sum(-1), beta=config.copg_beta)
    elif method == "spo":
      adv = policy.spo_advantages(spo, idx, r)
    elif method == "gppo":
      adv = policy.grpo_advantages(r)
    elif method == "pacs":
      adv = None  # PACS's loss reads the rewards themselves
    elif method != "reinforce_ada":
      adv = ADVANTAGES[method](r)
    mask = jnp.ones(responses.shape, jnp.float32)

    def loss(p):
      logp = ds.response_logp(MODEL.apply, p, pb, responses)
      if method == "pacs":
        return policy.pacs_loss(r, logp, old, beta=config.pacs_beta, mask=mask, balance=True)
      clipped = policy.gppo_loss if method == "gppo" else policy.ppo_clip_loss
      return clipped(logp, old, adv, mask, eps_low=config.clip_eps, aggregation="token_mean")

    for _ in range(config.updates_per_batch):
      grads = jax.grad(loss)(params)
      updates, opt_state = opt.update(grads, opt_state, params)
      params = optax.apply_updates(params, updates)
    # VADE's posterior learns from the rollouts the step made anyway (decays: ours)
    vade = policy.vade_update(vade, idx, r.sum(1), g, global_decay=0.99, revisit_decay=0.7)
    if method == "spo":  # the tracker's decay follows each prompt's policy change
      new = ds.response_logp(MODEL.apply, params, pb, responses)
      spo = policy.spo_update(spo, idx, r, jnp.mean(jnp.abs(old - new), (1, 2)))
    return (params, opt_state, vade, spo), jnp.mean(r)

  return opt, step


def _spo_tracker(method, config, base, train_prompts):
  """SPO's starting tracker from base-model samples (a uniform one for the other methods)."""
  num = train_prompts.shape[0]
  if method != "spo":
    return policy.spo_init(jnp.zeros(num), 0)
  n = SPO_OFFLINE_SAMPLES
  draw = jax.jit(
    lambda key: ds.rewards(
      train_prompts[:, None], ds.sample(MODEL.apply, base, key, train_prompts, n)
    )
  )
  successes = draw(jax.random.key(1000 * config.seed + 5)).sum(1)
  return policy.spo_init(successes, n)


def _train(method, config, base, train_prompts, lrs, evaluate, base_rates):
  """Every (rate, seed) replica of one method in one vmapped program; exact pass@k history.

  ``evaluate(stacked_params) -> (train rates, held-out rates)``; at step 0 every
  replica is the base model, whose ``base_rates`` are known."""
  opt, step = _rl_step(method, config, base, jnp.asarray(train_prompts))
  reps = list(itertools.product(range(len(lrs)), range(config.seeds)))
  rate = jnp.asarray([lrs[i] for i, _ in reps], jnp.float32)
  spo = _spo_tracker(method, config, base, jnp.asarray(train_prompts))

  def init(lr):
    st = opt.init(base)
    st.hyperparams["learning_rate"] = lr
    return base, st, policy.vade_init(train_prompts.shape[0]), spo

  carry = jax.vmap(init)(rate)
  keys = jnp.stack([jax.random.key(1000 * config.seed + 17 * s + 1) for _, s in reps])

  @jax.jit
  def chunk(carry, keys, start, length_mask):
    def body(c, i):
      new, reward = jax.vmap(step)(c, jax.vmap(lambda k: jax.random.fold_in(k, start + i))(keys))
      keep = length_mask[i]
      return jax.tree.map(lambda a, b: jnp.where(keep, a, b), new, c), reward

    return jax.lax.scan(body, carry, jnp.arange(length_mask.shape[0]))

  history = []
  done = 0
  while True:
    if done == 0:
      p_train, p_test = (np.broadcast_to(r, (len(reps), *r.shape)) for r in base_rates)
    else:
      p_train, p_test = (np.asarray(r) for r in evaluate(carry[0]))
    for j, (li, s) in enumerate(reps):
      history.append(
        {
          "step": done,
          "lr": lrs[li],
          "seed": s,
          **{f"train pass@{k}": v for k, v in ds.pass_at_k(p_train[j], KS).items()},
          **{f"pass@{k}": v for k, v in ds.pass_at_k(p_test[j], KS).items()},
        }
      )
    if done >= config.rl_steps:
      return history
    n = min(config.eval_every, config.rl_steps - done)
    mask = jnp.arange(config.eval_every) < n  # one compiled chunk length for all chunks
    carry, _ = chunk(carry, keys, done, mask)
    done += n


def _mean_sd(values):
  v = np.asarray(values, np.float64)
  return float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else 0.0


def _final(history, steps, lr):
  """The final evaluation of every seed at rate ``lr``."""
  return [h for h in history if h["step"] == steps and h["lr"] == lr]


def _select(history, steps):
  """The final evaluation at the rate with the best *training* mean pass@k: (lr, rows)."""
  rates = list(dict.fromkeys(h["lr"] for h in history))
  score = {
    lr: np.mean([np.mean([h[f"train pass@{k}"] for k in KS]) for h in _final(history, steps, lr)])
    for lr in rates
  }
  best = max(score, key=score.get)
  return best, _final(history, steps, best)


def _verdict(histories, steps, lrs, base_test) -> str:
  """How the evidence on NSR / PSR / W-REINFORCE, and on the newer estimators against GRPO,
  points at each rate, with standard errors."""

  def diff(xa, xb, base):
    xa = np.asarray(xa)
    se_a = xa.var(ddof=1) / len(xa) if len(xa) > 1 else np.nan
    if xb is None:
      return xa.mean() - base, np.sqrt(se_a)
    xb = np.asarray(xb)
    se_b = xb.var(ddof=1) / len(xb) if len(xb) > 1 else np.nan
    return xa.mean() - xb.mean(), np.sqrt(se_a + se_b)

  lines = []
  for lr in lrs:
    for a, b in _PAIRS:
      if a not in histories or (b != "base" and b not in histories):
        continue
      parts = []
      for k in (1, KS[-1]):
        xa = [h[f"pass@{k}"] for h in _final(histories[a], steps, lr)]
        xb = None if b == "base" else [h[f"pass@{k}"] for h in _final(histories[b], steps, lr)]
        d, se = diff(xa, xb, base_test[k])
        z = d / se if np.isfinite(se) and se > 0 else float("nan")
        parts.append(f"pass@{k} {d:+.4f} +- {se:.4f} (z = {z:.1f}{_against_paper(a, b, k, z)})")
      lines.append(f"- lr {lr:g}, {a} - {b}: " + "; ".join(parts))
  return "\n".join(lines)


_PAIRS = (
  ("nsr", "psr"),
  ("nsr", "base"),
  ("psr", "base"),
  ("w_reinforce", "psr"),
  ("gppo", "grpo"),
  ("reinforce_ada", "grpo"),
  ("spo", "grpo"),
  ("pacs", "grpo"),
)

# The papers' claims as signs of our differences. Zhu et al.: PSR best at pass@1 and
# worst at large k, NSR keeping or raising pass@k, W-REINFORCE at least PSR's at large
# k. GPPO (Klear-Reasoner), Reinforce-Ada and PACS each report a higher accuracy than
# their PPO-clip / GRPO baseline, PACS also a higher pass@256. The single-stream SPO arm
# sees G times fewer responses per step than GRPO, a regime no paper's claim covers.
_CLAIMS = {
  ("nsr", "psr", 1): "<",
  ("nsr", "psr", KS[-1]): ">",
  ("nsr", "base", KS[-1]): ">=",
  ("psr", "base", KS[-1]): "<",
  ("w_reinforce", "psr", KS[-1]): ">=",
  ("gppo", "grpo", 1): ">",
  ("reinforce_ada", "grpo", 1): ">",
  ("pacs", "grpo", 1): ">",
  ("pacs", "grpo", KS[-1]): ">",
}
_WORDS = {
  "agrees": ": agrees with the paper",
  "contradicts": ": contradicts the paper",
  "inconclusive": ": inconclusive",
}


def _against_paper(a, b, k, z) -> str:
  """``reporting.verdict`` on a difference a paper predicts (``-z`` for a claimed negative
  one); a claimed ">=" with ``|z| < 2`` is consistent with the paper."""
  claim = _CLAIMS.get((a, b, k))
  if claim is None or not np.isfinite(z):
    return ""
  v = reporting.verdict(-z if claim == "<" else z)
  if claim == ">=" and v == "inconclusive":
    return ": consistent with the paper (no difference detected)"
  return _WORDS[v]


def run(config: Config, workdir: str):
  flag_checks.check_config(config)
  c = flag_checks
  for m in config.methods:
    c.one_of("methods", m, METHODS)
  lrs = c.number_list(
    "learning_rates",
    config.learning_rates,
    kind=float,
    valid=lambda x: x > 0,
    expected="a comma-separated list of rates > 0",
  )
  c.require(config.group >= 2, "group", ">= 2", config.group)
  for name in ("rl_steps", "eval_every", "seeds", "prompts_per_step", "updates_per_batch"):
    c.positive(name, getattr(config, name))
  c.non_negative("sft_steps", config.sft_steps)
  c.require(0 <= config.sft_noise <= 1, "sft_noise", "in [0, 1]", config.sft_noise)
  c.require(0 < config.held_out < 1, "held_out", "a fraction in (0, 1)", config.held_out)
  c.require(0 < config.clip_eps < 1, "clip_eps", "in (0, 1)", config.clip_eps)
  c.positive("copg_beta", config.copg_beta)
  c.positive("pacs_beta", config.pacs_beta)
  c.positive("ada_rounds", config.ada_rounds)
  c.non_negative("eval_prompts", config.eval_prompts)
  train_prompts, test_prompts = ds.split_prompts(
    ds.all_prompts(constrained=True), config.held_out, config.seed
  )
  c.require(
    config.prompts_per_step <= len(train_prompts),
    "prompts_per_step",
    f"at most the {len(train_prompts)} training prompts",
    config.prompts_per_step,
  )
  c.check_same_run(
    workdir,
    {
      k: getattr(config, k)
      for k in (
        "learning_rates",
        "seeds",
        "group",
        "prompts_per_step",
        "rl_steps",
        "updates_per_batch",
        "clip_eps",
        "copg_beta",
        "pacs_beta",
        "ada_rounds",
        "held_out",
        "sft_steps",
        "sft_noise",
        "eval_every",
        "eval_prompts",
        "seed",
      )
    },
  )
  os.makedirs(os.path.join(workdir, "runs"), exist_ok=True)
  base = _base_model(train_prompts, config.seed, config.sft_steps, config.sft_noise)
  n_eval = config.eval_prompts or max(len(train_prompts), len(test_prompts))
  eval_train, eval_test = train_prompts[:n_eval], test_prompts[:n_eval]

  def rates(prompts):  # static prompts: their correct sets are computed once
    return jax.vmap(lambda p: ds.success_rates(MODEL.apply, p, prompts))

  evaluate = jax.jit(lambda p: (rates(eval_train)(p), rates(eval_test)(p)))
  base_rates = tuple(np.asarray(r[0]) for r in evaluate(jax.tree.map(lambda x: x[None], base)))
  base_train, base_test = (ds.pass_at_k(r, KS) for r in base_rates)
  print(
    "base (held out): " + ", ".join(f"pass@{k} {v:.3f}" for k, v in base_test.items()), flush=True
  )
  histories = {}
  for method in config.methods:
    path = os.path.join(workdir, "runs", f"{method}.json")
    histories[method], reused = reporting.cached_unit(
      path,
      functools.partial(_train, method, config, base, train_prompts, lrs, evaluate, base_rates),
    )
    if not reused:
      lr, rows = _select(histories[method], config.rl_steps)
      print(
        f"{method} (lr {lr:g}): "
        + ", ".join(f"pass@{k} {_mean_sd([h[f'pass@{k}'] for h in rows])[0]:.3f}" for k in KS),
        flush=True,
      )
  chosen = {m: _select(h, config.rl_steps) for m, h in histories.items()}
  table = [{"method": "base (SFT)", "lr": "", **{f"pass@{k}": f"{base_test[k]:.4f}" for k in KS}}]
  for method, history in histories.items():
    for lr in lrs:
      rows = _final(history, config.rl_steps, lr)
      row = {"method": method, "lr": lr, "chosen on train": "*" if lr == chosen[method][0] else ""}
      for k in KS:
        m, s = _mean_sd([h[f"pass@{k}"] for h in rows])
        row[f"pass@{k}"] = f"{m:.4f} +- {s:.4f}"
      table.append(row)
  verdict = _verdict(histories, config.rl_steps, lrs, base_test)
  reporting.write_table(
    workdir,
    table,
    title="RLVR toy: exact pass@k on held-out prompts after RL",
    notes=(
      f"Digit-sum prompts (t, forbidden digit): {len(train_prompts)} training, "
      f"{len(test_prompts)} held out (never in SFT or RL; {len(eval_test)} of them "
      f"evaluated). {config.prompts_per_step} prompts x "
      f"G={config.group} per step, {config.rl_steps} steps, PPO-clip token-mean loss "
      f"(eps {config.clip_eps:g}, {config.updates_per_batch} Adam steps per batch); every "
      f"rate of {', '.join(f'{x:g}' for x in lrs)}, mean +- sd over {config.seeds} seeds; "
      "'*' marks the rate with the best mean pass@k over k on the *training* prompts. "
      f"Base pass@1 {base_train[1]:.3f} (train) / {base_test[1]:.3f} (held out).\n\n"
      "Differences (held out, at each rate; +- is the standard error over seeds):\n\n"
      + verdict
      + "\n\nPaper (Zhu et al. 2025, Qwen2.5-Math-7B on MATH): PSR best at pass@1 and "
      "worst at large k; NSR keeps or raises pass@k across k; W-REINFORCE best or near-best. "
      "GPPO (Su et al. 2025), Reinforce-Ada (Xiong et al. 2025) and PACS (Li et al. 2025; "
      "AIME 2025 pass@256 59.78, 14.36 points above GRPO) report beating their "
      "GRPO/PPO-clip baselines. Reinforce-Ada draws up to "
      f"{config.ada_rounds}x the responses of GRPO, SPO {config.group}x fewer; PACS uses no "
      f"clip (beta {config.pacs_beta:g})."
    ),
  )
  sweep = [
    {"method": m, **{k: v for k, v in h.items()}}
    for m, hist in histories.items()
    for h in hist
    if h["step"] == config.rl_steps
  ]
  reporting.write_table(workdir, sweep, name="sweep", title="Every method, rate and seed")
  reporting.plot_curves(
    os.path.join(workdir, "pass_at_k.png"),
    {
      "base": (list(KS), [base_test[k] for k in KS]),
      **{
        m: (list(KS), [_mean_sd([h[f"pass@{k}"] for h in rows])[0] for k in KS])
        for m, (_, rows) in chosen.items()
      },
    },
    xlabel="k",
    ylabel="held-out pass@k (exact)",
    title="pass@k after RL",
  )
  curves = {}
  for m, history in histories.items():
    lr = _select(history, config.rl_steps)[0]
    steps = sorted({h["step"] for h in history})
    curves[m] = (
      steps,
      [np.mean([h["pass@1"] for h in history if h["step"] == s and h["lr"] == lr]) for s in steps],
    )
  reporting.plot_curves(
    os.path.join(workdir, "pass1.png"),
    curves,
    xlabel="RL step",
    ylabel="held-out pass@1 (exact)",
    title="pass@1 over training",
  )
  print(f"results in {workdir}")


if __name__ == "__main__":
  runner.main(run, Config, prog=PROG, workdir="runs/rlvr_toy")

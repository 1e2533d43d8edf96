r"""Policy-gradient estimators' and losses' cost against the policy's forward and backward;
allocation schemes' gradient variance against uniform allocation.

  python -m benchmarks.policy_overhead [--json=out.json]

Step cost: a causal transformer policy (``--dim``, ``--layers``) on
``--prompts x --group`` responses of ``--length`` tokens. The baseline step is
``jit(grad(sum of masked token log-probs))``: the policy's forward and
backward alone. Each contender adds one advantage estimator and one loss
(with TIS weights) on top, in the same jitted step; the overhead is
``contender / baseline - 1`` (goal <= 5%). Timings interleaved
(``benchmarks/timing.py``). Rewards, masks and the old and rollout
log-probabilities are arguments of both jitted steps, not constants: an
earlier version closed over them, XLA folded the estimators away at compile
time, and the contenders came out *cheaper* than the baseline. The benchmark
checks that every contender runs the baseline's matrix multiplies
(``dot_general`` count in the jaxprs) and prints the counts.

Allocation: the Monte Carlo MSE, per sampled response, of GVM-RAFT's budgets
against uniform budgets at the same total, on a Beta(0.5, 2) population of
tabular prompts (``gradlab.policy.bandit``), for the RAFT estimator GVM
allocates for.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from benchmarks import timing
from gradlab import models, policy, tasks

_JSON = flags.DEFINE_string("json", None, "Write the figures here.")
_DIM = flags.DEFINE_integer("dim", 128, "Model width.")
_LAYERS = flags.DEFINE_integer("layers", 4, "Transformer blocks.")
_VOCAB = flags.DEFINE_integer("vocab", 256, "Vocabulary.")
_PROMPTS = flags.DEFINE_integer("prompts", 16, "Prompts per step.")
_GROUP = flags.DEFINE_integer("group", 8, "Responses per prompt.")
_LENGTH = flags.DEFINE_integer("length", 64, "Tokens per response.")
_REPEATS = flags.DEFINE_integer("repeats", 10, "Timed repeats.")
_ALLOC_SAMPLES = flags.DEFINE_integer("alloc_samples", 4000, "Monte Carlo draws per allocation.")
_LOSSES = flags.DEFINE_list("losses", [], "Only these losses (default: all).")
_ADVANTAGES = flags.DEFINE_list("advantages", [], "Only these advantages (default: all).")
_BUDGETS = flags.DEFINE_list("alloc_budgets", ["4", "8", "16"], "Allocation: responses per prompt.")
_PROMPTS_ALLOC = flags.DEFINE_integer("alloc_prompts", 19, "Allocation: tabular prompts.")


def _figures(samples=None):
  """The titles and rows of the two tables, at the flags' sizes (``samples``: the
  per-repeat step times, by loss)."""
  b, g, t = _PROMPTS.value, _GROUP.value, _LENGTH.value
  model = models.TinyTransformer(
    vocab=_VOCAB.value, dim=_DIM.value, heads=4, layers=_LAYERS.value, max_len=t + 1
  )
  rng = np.random.default_rng(0)
  tokens = jnp.asarray(rng.integers(0, _VOCAB.value, (b * g, t + 1)), jnp.int32)
  params = jax.jit(model.init)(jax.random.key(0), tokens[:1, :-1])
  mask = jnp.asarray(rng.random((b, g, t)) < 0.9, jnp.float32)
  rewards = jnp.asarray(rng.random((b, g)) < 0.3, jnp.float32)
  old = jnp.asarray(-rng.random((b, g, t)) * 3, jnp.float32)
  rollout = old + 0.05 * jnp.asarray(rng.normal(size=(b, g, t)), jnp.float32)

  def token_logp(p):
    logits = model.apply(p, tokens[:, :-1])
    lp = jnp.take_along_axis(jax.nn.log_softmax(logits), tokens[:, 1:, None], -1)[..., 0]
    return lp.reshape(b, g, t)

  def make(adv_fn=None, loss=None):
    def step(p, rewards, mask, old, rollout):
      if adv_fn is None:
        return jax.grad(lambda q: jnp.sum(token_logp(q) * mask))(p)
      adv = adv_fn(rewards)
      w = policy.truncated_is_weights(old, rollout, mask)
      return jax.grad(lambda q: loss(token_logp(q), adv, w, mask, old, rollout))(p)

    return step

  data = (rewards, mask, old, rollout)

  def matmuls(step):
    return str(jax.make_jaxpr(step)(params, *data)).count("dot_general")

  losses = {
    "token IS surrogate": lambda lp, a, w, m, o, r: policy.policy_gradient_loss(
      lp, a, m, behaviour_logp=r, is_cap=2.0
    ),
    "ppo clip-higher + TIS": lambda lp, a, w, m, o, r: policy.ppo_clip_loss(
      lp, o, a, m, eps_high=0.28, is_weights=w
    ),
    "gppo + TIS": lambda lp, a, w, m, o, r: policy.gppo_loss(
      lp, o, a, m, eps_high=0.28, is_weights=w
    ),
  }
  advs = {
    "rloo": policy.rloo_advantages,
    "grpo": policy.grpo_advantages,
    "bnpo": policy.bnpo_advantages,
    "w_reinforce": policy.weighted_reinforce_advantages,
  }
  advs = {k: advs[k] for k in _ADVANTAGES.value or advs}
  rows = []
  base_fn = make()
  base_matmuls = matmuls(base_fn)
  base = jax.jit(base_fn)
  for lname in _LOSSES.value or list(losses):
    lfn = losses[lname]
    fns = {"forward+backward": lambda: jax.block_until_ready(base(params, *data))}
    for aname, afn in advs.items():
      step_fn = make(afn, lfn)
      n = matmuls(step_fn)
      if n != base_matmuls:
        raise RuntimeError(f"{lname}/{aname}: {n} matmuls against the baseline's {base_matmuls}")
      step = jax.jit(step_fn)
      fns[aname] = lambda step=step: jax.block_until_ready(step(params, *data))
    by_loss = {} if samples is None else samples.setdefault(lname, {})
    times = timing.interleaved(fns, repeats=_REPEATS.value, inner=3, warmup=2, samples=by_loss)
    for aname in advs:
      rows.append(
        {
          "loss": lname,
          "advantage": aname,
          "step ms": 1e3 * times[aname],
          "fwd+bwd ms": 1e3 * times["forward+backward"],
          "overhead": times[aname] / times["forward+backward"] - 1,
          "matmuls (both)": base_matmuls,
        }
      )
  title = (
    f"estimator + loss cost over the policy's forward+backward "
    f"({b}x{g} responses x {t} tokens, dim {_DIM.value}, {_LAYERS.value} layers, "
    f"{jax.devices()[0].platform})"
  )

  n_prompts = _PROMPTS_ALLOC.value
  pop = tasks.bandit.beta_population(n_prompts, 0.5, 2.0)
  probs = jax.nn.softmax(pop.logits)
  gx = jnp.linalg.norm(jnp.eye(4)[0] - probs, axis=-1)
  target = tasks.bandit.raft_target(pop)
  alloc = []
  for per in map(int, _BUDGETS.value):
    budget = per * n_prompts
    mses = {}
    for name, counts in (
      ("uniform", np.full(n_prompts, per)),
      ("gvm", np.asarray(policy.gvm_allocation(pop.p, gx, budget, minimum=1))),
    ):
      # one program (eagerly, one compile per prompt's lax.map)
      raft = jax.jit(
        lambda k, c=counts: tasks.bandit.raft_estimates(pop, c, k, _ALLOC_SAMPLES.value)
      )
      est = raft(jax.random.key(per))
      mses[name] = float(jnp.mean(jnp.sum((est - target) ** 2, 1)))
    alloc.append(
      {
        "responses": budget,
        "uniform MSE": mses["uniform"],
        "gvm MSE": mses["gvm"],
        "gvm / uniform": mses["gvm"] / mses["uniform"],
      }
    )
  alloc_title = (
    "GVM-RAFT allocation against uniform at the same budget (RAFT estimator, Beta(0.5, 2) prompts)"
  )
  return (title, rows), (alloc_title, alloc)


def main(argv):
  del argv
  (title, rows), (alloc_title, alloc) = _figures()
  timing.report(title, rows, _JSON.value)
  timing.report(alloc_title, alloc, None)


QUICK = {
  "dim": "8",
  "layers": "1",
  "vocab": "8",
  "prompts": "2",
  "group": "2",
  "length": "4",
  "repeats": "1",
  "alloc_samples": "16",
  "alloc_budgets": "4",
  "alloc_prompts": "2",
  "losses": "gppo + TIS",
  "advantages": "grpo",
}


def measure(quick: bool, device: str) -> list[timing.Row]:
  """``benchmarks.all``'s rows: each estimator + loss step over the policy's forward
  and backward alone; GVM's Monte Carlo MSE over uniform allocation's."""
  del device
  values, samples = QUICK if quick else {}, {}
  with timing.flag_values(values):
    (_, rows), (_, alloc) = _figures(samples)
  dev, cmd = timing.jax_device(), timing.command(__name__, values)
  out = [
    timing.Row(
      f"{r['loss']} + {r['advantage']}: step / fwd+bwd",
      *timing.ratio(samples[r["loss"]], r["advantage"], "forward+backward"),
      "<= 1.05",
      dev,
      cmd,
    )
    for r in rows
  ]
  out += [
    timing.Row(
      f"gvm / uniform MSE, {a['responses']} responses", a["gvm / uniform"], "", "", dev, cmd
    )
    for a in alloc
  ]
  return out


if __name__ == "__main__":
  app.run(main)

r"""Attribution on a small causal LM whose true top-influence training sequences are known.

  python -m experiments.lm_attribution --workdir=runs/lm_attribution

Corpus (``gradlab.tasks.planted_facts``): sequences of Markov filler
(``--filler_branching`` successors per filler token) in which ``--num_facts``
facts ``key -> value`` are planted, each in ``--sources_per_fact`` training
sequences (``key marker value`` with ``--marker``). With
``--fact_position=prompt`` every fact sits where the queries put it (the key
at position ``--prompt_length - 1``, one fact per sequence); with ``random``
anywhere, up to ``--facts_per_sequence`` per sequence. A query is a fresh
filler prompt ending in a key (and the marker) whose completion is the value.
The default puts the facts where the queries ask for them: with random
positions the tiny model learns each fact only at the positions its sources
used (every source right, 60-80% of fresh-prompt queries), and a query at an
unseen position measures that gap more than any attribution.

Model: ``gradlab.models.TinyTransformer``, trained by AdamW on minibatches
(``gradlab.influence.train_on_subset`` on the full mask) until it has
memorized the facts (the query accuracy is reported). Every example is
``{"tokens": [T], "weights": [T - 1]}`` and one per-example loss serves train
and query alike, ``loss = sum_t weights_t * NLL_t``: train sequences weigh
every next token, a query only its completion, so a query's loss is exactly
the measurement ``-log p(value | prompt)``.

Methods (``--methods``), each ``[queries, train]``, positive = helps:

* ``ekfac``: ``curvature.ekfac`` factors of the empirical Fisher (the
  LayerNorms and the position table are left out, ``uncovered="ignore"``),
  then ``influence.influence(solver=influence.ekfac_solver(factors))`` with damping
  ``--ekfac_damping`` x the mean EK-FAC eigenvalue over all layers. The
  default is small (1e-4): a fact lives in directions only its few sources
  excite (the value's column of the output head above all), whose curvature
  is tiny, and kronfluence's 0.1 x mean washes them out; ``ekfac_damping.md``
  scores the same factors at every ``--ekfac_sweep`` damping.
* ``tracin``: TracIn-CP over ``--checkpoints`` evenly spaced checkpoints of
  the training run, each weighted by the learning rate, unprojected.
* ``grad_cos`` / ``grad_dot``: cosine / inner product of the full per-example
  loss gradients at the final parameters.
* ``trak``: TRAK on the final model, projection ``--trak_dim`` (kernel damping
  ``--trak_damping``). Its output is TRAK's margin for generated text, ``log p
  - log(1 - p)`` of the sequence probability ``p = exp(-loss)``, with TRAK's
  default ``Q = 1 - p``. For a training sequence (``p`` ~ e^-15) that is minus
  the loss and ``Q = 1``; for a query it is minus the measurement rescaled by
  ``1 / (1 - p)``, a positive factor per query that changes neither its
  ranking nor its LDS: the scores are TRAK's own recipe and rank train
  sequences as TRAK on the measurement itself (minus the loss) would.
* ``logra``: LoGra (``influence.logra``), rank ``--logra_rank``,
  its default damping, the LayerNorms and position table left out.
* ``random``: uniform random scores; ``planted``: the reference that scores
  a query's planted sources 1 and everything else 0 (recall 1 by
  construction; its LDS is what the planted sources alone explain of the
  retrained models' outputs).

Scores: recall@k of the planted sources per query (k = the number of sources,
and ``--recall_k``), averaged over queries (random's expectation: k /
num_train); the LDS against ``--num_subsets`` models retrained on random
``--subset_fraction`` subsets (``--seeds`` seeds each, the full model's
recipe) whose output is minus the query loss, with its spread over queries.
Writes ``results.md`` / ``results.csv``, ``ekfac_damping.md`` / ``.csv`` and
``attribution.png`` (recall per method, per-query LDS per method). The default
setting runs in about 2 minutes on 2 idle CPU cores, most of it the 64
retrained copies; ``SMALL`` is the test's setting (seconds).
"""

from __future__ import annotations

import dataclasses
import functools
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from experiments import flag_checks, reporting, runner
from gradlab import curvature, models, tasks
from gradlab import influence as gi

PROG = "lm_attribution"
METHODS = ("ekfac", "tracin", "grad_cos", "grad_dot", "trak", "logra", "random", "planted")
POSITIONS = ("prompt", "random")


@dataclasses.dataclass(frozen=True)
class Config:
  """The flags of ``lm_attribution`` (``--name=value``); defaults are the main's."""

  num_train: int = runner.option(400, "Training sequences.")
  length: int = runner.option(20, "Tokens per sequence (train and query).")
  num_filler: int = runner.option(31, "Filler tokens.")
  filler_branching: int = runner.option(3, "Successors of each filler token in the filler chain.")
  num_facts: int = runner.option(16, "Planted facts (one key each).")
  num_values: int = runner.option(16, "Value tokens.")
  sources_per_fact: int = runner.option(4, "Training sequences that plant each fact.")
  marker: bool = runner.option(True, "Plant key, marker, value (else key, value).")
  fact_position: str = runner.option(
    "prompt", "prompt (every fact where the queries put it) or random."
  )
  facts_per_sequence: int = runner.option(1, "Most facts per sequence (fact_position=random).")
  prompt_length: int = runner.option(4, "Query tokens up to and including the key.")
  queries_per_fact: int = runner.option(1, "Queries per fact.")
  dim: int = runner.option(32, "Transformer width.")
  heads: int = runner.option(2, "Attention heads.")
  layers: int = runner.option(1, "Transformer blocks.")
  steps: int = runner.option(800, "AdamW steps (full model and every retrained copy).")
  batch_size: int = runner.option(32, "Minibatch size.")
  learning_rate: float = runner.option(3e-3, "AdamW learning rate.")
  weight_decay: float = runner.option(0.1, "AdamW weight decay.")
  checkpoints: int = runner.option(4, "TracIn-CP checkpoints (must divide steps).")
  methods: list[str] = runner.option(list(METHODS), "Attribution methods to score.")
  ekfac_damping: float = runner.option(1e-4, "EK-FAC damping, relative to its mean eigenvalue.")
  ekfac_sweep: list[str] = runner.option(
    ["1", "0.1", "0.01", "1e-3", "1e-4", "1e-6", "0"],
    "Relative EK-FAC dampings also scored (ekfac_damping.md).",
  )
  micro_batch: int = runner.option(100, "Examples per step of the EK-FAC fit.")
  trak_dim: int = runner.option(256, "TRAK projection dimension.")
  trak_damping: float = runner.option(
    0.0, "TRAK kernel damping (needed once trak_dim > num_train)."
  )
  logra_rank: int = runner.option(16, "LoGra rank per side of each layer.")
  recall_k: int = runner.option(10, "Second k of recall@k (the first is sources_per_fact).")
  num_subsets: int = runner.option(64, "Random subsets retrained for the LDS.")
  subset_fraction: float = runner.option(0.5, "Share of the training set in each subset.")
  seeds: int = runner.option(1, "Retraining seeds per subset.")
  seed: int = runner.option(0, "Seed (corpus, initialization, training, projections).")


# The setting the test runs end to end in seconds: a 6-fact corpus of 120 sequences.
SMALL = dict(
  num_train=120, length=12, num_filler=15, num_facts=6, num_values=6, sources_per_fact=3,
  dim=16, steps=160, learning_rate=0.01, checkpoints=2, micro_batch=60, trak_dim=64,
  logra_rank=4, num_subsets=6,
)  # fmt: skip


def check(config: Config) -> None:
  """Refuses a bad config with a ``FlagError`` naming the flag, before any compute."""
  flag_checks.check_config(config)
  for m in config.methods:
    flag_checks.one_of("methods", m, METHODS)
  flag_checks.one_of("fact_position", config.fact_position, POSITIONS)
  for name in (
    "num_train", "length", "num_filler", "filler_branching", "num_facts", "num_values",
    "sources_per_fact", "facts_per_sequence", "prompt_length", "queries_per_fact", "dim",
    "heads", "layers", "steps", "batch_size", "checkpoints", "micro_batch", "trak_dim",
    "logra_rank", "recall_k", "seeds",
  ):  # fmt: skip
    flag_checks.positive(name, getattr(config, name))
  for name in ("learning_rate", "ekfac_damping"):
    flag_checks.positive(name, getattr(config, name))
  flag_checks.non_negative("weight_decay", config.weight_decay)
  flag_checks.non_negative("trak_damping", config.trak_damping)
  flag_checks.require(
    config.filler_branching <= config.num_filler,
    "filler_branching",
    f"<= num_filler={config.num_filler}",
    config.filler_branching,
  )
  flag_checks.require(
    config.num_facts * config.sources_per_fact <= config.num_train,
    "sources_per_fact",
    f"such that num_facts x sources_per_fact <= num_train={config.num_train}",
    config.sources_per_fact,
  )
  span = 3 if config.marker else 2
  flag_checks.require(
    config.prompt_length + span - 1 <= config.length,
    "prompt_length",
    f"such that the prompt and its completion fit in length={config.length}",
    config.prompt_length,
  )
  if config.fact_position == "prompt":
    flag_checks.require(
      config.facts_per_sequence == 1, "facts_per_sequence", "1 with fact_position=prompt",
      config.facts_per_sequence,
    )  # fmt: skip
  flag_checks.require(
    config.facts_per_sequence * span <= config.length,
    "facts_per_sequence",
    f"such that its facts fit in length={config.length}",
    config.facts_per_sequence,
  )
  flag_checks.require(
    config.dim % config.heads == 0, "heads", f"a divisor of dim={config.dim}", config.heads
  )
  flag_checks.require(
    config.steps % config.checkpoints == 0,
    "checkpoints",
    f"a divisor of steps={config.steps}",
    config.checkpoints,
  )
  flag_checks.require(
    0 < config.subset_fraction < 1, "subset_fraction", "in (0, 1)", config.subset_fraction
  )
  flag_checks.require(
    config.num_subsets >= 3, "num_subsets", ">= 3 (a rank correlation)", config.num_subsets
  )
  flag_checks.require(
    config.recall_k <= config.num_train, "recall_k", "<= num_train", config.recall_k
  )


def corpus(config: Config) -> tasks.PlantedFacts:
  return tasks.planted_facts(
    num_train=config.num_train,
    length=config.length,
    num_filler=config.num_filler,
    num_facts=config.num_facts,
    num_values=config.num_values,
    sources_per_fact=config.sources_per_fact,
    facts_per_sequence=config.facts_per_sequence,
    filler_branching=config.filler_branching,
    fact_position=config.prompt_length - 1 if config.fact_position == "prompt" else None,
    marker=config.marker,
    queries_per_fact=config.queries_per_fact,
    prompt_length=config.prompt_length,
    seed=config.seed,
  )


def examples(c: tasks.PlantedFacts) -> tuple[dict, dict]:
  """Train and query sets as ``{"tokens": [N, T], "weights": [N, T - 1]}``."""
  n, t = c.train.shape
  train = {"tokens": jnp.asarray(c.train), "weights": jnp.ones((n, t - 1), jnp.float32)}
  queries = {"tokens": jnp.asarray(c.queries), "weights": jnp.asarray(c.query_weights)}
  return train, queries


def make_model(config: Config, c: tasks.PlantedFacts):
  """``(params0, loss_fn, margin_fn, logits_fn)`` of the transformer on one example."""
  model = models.TinyTransformer(
    vocab=c.vocab, dim=config.dim, heads=config.heads, layers=config.layers,
    max_len=c.train.shape[1] - 1,
  )  # fmt: skip
  params = model.init(jax.random.key(config.seed), jnp.zeros((1, c.train.shape[1] - 1), jnp.int32))

  def logits_fn(p, e):
    return model.apply(p, e["tokens"][None, :-1])[0]  # [T - 1, vocab]

  def loss_fn(p, e):
    nll = optax.softmax_cross_entropy_with_integer_labels(logits_fn(p, e), e["tokens"][1:])
    return jnp.sum(e["weights"] * nll)

  def margin_fn(p, e):
    # TRAK's output for a sequence of probability p = exp(-loss): log p - log(1 - p)
    loss = loss_fn(p, e)
    return -loss - jnp.log(-jnp.expm1(-jnp.maximum(loss, 1e-6)))

  return params, loss_fn, margin_fn, logits_fn


def recall_at(scores: np.ndarray, sources: np.ndarray, k: int) -> np.ndarray:
  """``[queries]``: the share of each query's sources among its k top-scored train rows."""
  top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
  hits = (top[:, :, None] == sources[:, None, :]).any(1).sum(1)
  return hits / sources.shape[1]


def lds_per_query(scores: jax.Array, masks: jax.Array, outputs: jax.Array) -> np.ndarray:
  """``[queries]``: the Spearman correlation over subsets behind ``influence.lds``'s mean."""
  predicted = masks @ scores.T  # [M, queries]
  return np.asarray(jax.vmap(gi.spearman, in_axes=(1, 1))(predicted, outputs))


def run(config: Config, workdir: str):
  """Trains, scores every method, writes results.md/.csv and attribution.png; returns the rows."""
  check(config)
  sweep = flag_checks.number_list(
    "ekfac_sweep", config.ekfac_sweep, valid=lambda v: v >= 0,
    expected="a comma-separated list of numbers >= 0",
  )  # fmt: skip
  flag_checks.check_same_run(
    workdir, {k: v for k, v in dataclasses.asdict(config).items() if k != "methods"}
  )
  t_start = time.perf_counter()
  c = corpus(config)
  train, queries = examples(c)
  params0, loss_fn, margin_fn, logits_fn = make_model(config, c)
  n, q, s = c.train.shape[0], c.queries.shape[0], c.sources.shape[1]
  d = sum(x.size for x in jax.tree.leaves(params0))
  key = jax.random.key(config.seed)
  opt = optax.adamw(config.learning_rate, weight_decay=config.weight_decay)
  fit = functools.partial(
    gi.train_on_subset, loss_fn, params0, train, optimizer=opt, steps=config.steps,
    batch_size=config.batch_size,
  )  # fmt: skip
  query_losses = jax.jit(lambda p: jax.vmap(lambda e: loss_fn(p, e))(queries))

  t0 = time.perf_counter()
  trajectory = jax.jit(lambda m, k: fit(m, k, segments=config.checkpoints))(
    jnp.ones(n), jax.random.fold_in(key, 1)
  )
  ckpts = [jax.tree.map(lambda a, i=i: a[i], trajectory) for i in range(config.checkpoints)]
  params = ckpts[-1]
  train_seconds = time.perf_counter() - t0
  rows_q = jnp.arange(q)
  completion = jnp.asarray(c.query_position - 1)
  query_logits = jax.vmap(lambda e: logits_fn(params, e))(queries)[rows_q, completion]
  query_acc = float(jnp.mean(jnp.argmax(query_logits, -1) == jnp.asarray(c.values[c.query_fact])))
  query_loss = float(jnp.mean(query_losses(params)))
  train_loss = float(jnp.mean(jax.vmap(lambda e: loss_fn(params, e))(train))) / (
    c.train.shape[1] - 1
  )
  print(
    f"{PROG}: {d} parameters, trained {config.steps} steps in {train_seconds:.1f} s: query "
    f"accuracy {query_acc:.3f}, query NLL {query_loss:.3f}, train NLL/token {train_loss:.3f}",
    flush=True,
  )

  def ground_truth():
    t0 = time.perf_counter()
    masks = gi.random_subsets(
      jax.random.fold_in(key, 2), n, config.num_subsets, config.subset_fraction
    )
    retrain = jax.jit(
      lambda m, k: gi.subset_retrain(lambda mi, ki: fit(mi, ki), m, k, seeds=config.seeds)
    )
    stacked = retrain(masks, jax.random.fold_in(key, 3))  # [seeds, M, ...]
    losses = jax.vmap(jax.vmap(query_losses))(stacked)  # [seeds, M, q]
    return {
      "masks": np.asarray(masks).tolist(),
      "outputs": np.asarray(-losses.mean(0)).tolist(),
      "retrained_query_nll": float(losses.mean()),
      "retrained_accuracy": float(jnp.mean(losses < np.log(2.0))),
      "seconds": time.perf_counter() - t0,
    }

  truth, _ = reporting.cached_unit(os.path.join(workdir, "ground_truth.json"), ground_truth)
  masks = jnp.asarray(truth["masks"], jnp.float32)
  outputs = jnp.asarray(truth["outputs"], jnp.float32)
  print(f"{PROG}: ground truth: {config.num_subsets} retrained copies in "
        f"{truth['seconds']:.1f} s", flush=True)  # fmt: skip

  proj_key = jax.random.fold_in(key, 4)
  ks = sorted({s, config.recall_k})

  def judge(scores: jax.Array) -> dict:
    """Recall@k of the planted sources and the LDS (mean and per query) of ``[q, n]`` scores."""
    sc = np.asarray(scores, np.float64)
    if not np.all(np.isfinite(sc)):
      nan = float("nan")
      return {"recall": {str(k): nan for k in ks}, "lds": nan, "lds_per_query": [nan] * q}
    return {
      "recall": {str(k): float(recall_at(sc, c.sources, k).mean()) for k in ks},
      "lds": float(gi.lds(jnp.asarray(sc), masks, outputs)),
      "lds_per_query": lds_per_query(jnp.asarray(sc), masks, outputs).tolist(),
    }

  def method(name: str) -> dict:
    """The method's scores judged, its wall time (compilation included) and its setting."""
    t0 = time.perf_counter()
    extra = {}
    if name == "ekfac":
      factors = curvature.ekfac(
        loss_fn, params, train, micro_batch=config.micro_batch, uncovered="ignore"
      )
      eig = np.concatenate([np.ravel(v) for v in factors.eigenvalues().values()])
      mean_eig = float(np.mean(eig))
      inf = jax.jit(
        lambda tr, te, f, damping: gi.influence(
          loss_fn, params, tr, te, solver=gi.ekfac_solver(factors=f), damping=damping
        )
      )
      damping = config.ekfac_damping * mean_eig
      scores = jax.block_until_ready(inf(train, queries, factors, jnp.float32(damping)))
      seconds = time.perf_counter() - t0
      setting = f"damping {config.ekfac_damping:g} x mean eigenvalue {mean_eig:.3g}"
      extra["sweep"] = {
        str(rel): judge(inf(train, queries, factors, jnp.float32(rel * mean_eig))) for rel in sweep
      }
      extra["mean_eigenvalue"] = mean_eig
    else:
      if name == "trak":
        setting = f"sequence margin, final model, dim {config.trak_dim}"
        if config.trak_damping:
          setting += f", damping {config.trak_damping:g}"
        fn = lambda tr, te: gi.trak(
          margin_fn, [params], tr, te, proj_key, dim=config.trak_dim, damping=config.trak_damping
        )
        scores = jax.jit(fn)(train, queries)
      elif name == "tracin":
        setting = f"{config.checkpoints} checkpoints x lr {config.learning_rate:g}, unprojected"
        lrs = [config.learning_rate] * config.checkpoints
        scores = jax.jit(lambda tr, te: gi.tracin_cp(loss_fn, ckpts, lrs, tr, te))(train, queries)
      elif name in ("grad_cos", "grad_dot"):
        setting = f"final model, unprojected ({d} parameters)"
        score = gi.grad_cos if name == "grad_cos" else gi.grad_dot
        both = jax.tree.map(lambda a, b: jnp.concatenate([a, b]), train, queries)
        f = jax.jit(lambda e: gi.gradient_features(loss_fn, params, e))(both)  # one program
        scores = score(f[:n], f[n:])
      elif name == "logra":
        setting = f"rank {config.logra_rank}, its default damping"
        scores = gi.logra(
          loss_fn, params, train, queries, proj_key, rank=config.logra_rank, uncovered="ignore"
        )
      elif name == "planted":
        setting = "reference: 1 on the query's planted sources, 0 elsewhere"
        scores = jnp.zeros((q, n)).at[jnp.arange(q)[:, None], jnp.asarray(c.sources)].set(1.0)
      else:
        setting = "uniform"
        scores = jnp.asarray(np.random.default_rng(config.seed).random((q, n)), jnp.float32)
      scores = jax.block_until_ready(scores)
      seconds = time.perf_counter() - t0
    return {**judge(scores), "seconds": seconds, "setting": setting, **extra}

  rows, per_query_lds, sweep_rows = [], {}, []
  for name in config.methods:
    r, _ = reporting.cached_unit(
      os.path.join(workdir, f"method_{name}.json"), lambda name=name: method(name)
    )
    per_query_lds[name] = np.asarray(r["lds_per_query"], np.float64)
    finite = per_query_lds[name][np.isfinite(per_query_lds[name])]
    row = {"method": name}
    row.update({f"recall@{k}": r["recall"][str(k)] for k in ks})
    row.update(
      {
        "LDS": r["lds"],
        "LDS std over queries": float(np.std(finite)) if finite.size else float("nan"),
        "LDS min": float(np.min(finite)) if finite.size else float("nan"),
        "time s": r["seconds"],
        "setting": r["setting"],
      }
    )
    rows.append(row)
    print(f"{PROG}: {name}: " + ", ".join(f"{k}={v}" for k, v in row.items() if k != "method"))
    for rel, j in r.get("sweep", {}).items():
      sweep_rows.append(
        {
          "damping / mean eigenvalue": float(rel),
          "damping": float(rel) * r["mean_eigenvalue"],
          **{f"recall@{k}": j["recall"][str(k)] for k in ks},
          "LDS": j["lds"],
        }
      )

  _plot(os.path.join(workdir, "attribution.png"), rows, per_query_lds, ks, n)
  wall = time.perf_counter() - t_start
  notes = (
    f"Corpus: {n} training sequences of {c.train.shape[1]} tokens, vocabulary {c.vocab} "
    f"({config.num_filler} filler tokens in a chain of {config.filler_branching} successors, "
    f"{'a marker, ' if config.marker else ''}{config.num_facts} keys, {config.num_values} "
    f"values); {config.num_facts} facts, each planted in {s} sequences "
    f"({config.fact_position} positions); {q} queries (a {config.prompt_length}-token prompt "
    f"ending in the key). Model: TinyTransformer, {config.layers} block(s), width {config.dim}, "
    f"{config.heads} heads, {d} parameters; AdamW lr {config.learning_rate}, weight decay "
    f"{config.weight_decay}, {config.steps} steps of batch {config.batch_size} "
    f"({train_seconds:.1f} s). Query accuracy {query_acc:.3f} (query NLL {query_loss:.3f}, "
    f"train NLL per token {train_loss:.3f}). Recall@k: the share of a query's {s} planted "
    f"sources among its top k, mean over queries; random scores expect k / {n} "
    f"({', '.join(f'{k / n:.3f} at k={k}' for k in ks)}). LDS: Spearman over "
    f"{config.num_subsets} retrained copies on random {config.subset_fraction:.0%} subsets "
    f"({config.seeds} seed(s), the same recipe; mean query NLL {truth['retrained_query_nll']:.3f},"
    f" share of queries with p(value) > 1/2 {truth['retrained_accuracy']:.3f}; "
    f"{truth['seconds']:.1f} s) of minus the query NLL, mean, std and min over the {q} queries. "
    f"Time s: each method's wall time, compilation included. Wall time {wall:.0f} s in all."
  )
  reporting.write_table(workdir, rows, title="LM attribution with planted facts", notes=notes)
  if sweep_rows:
    reporting.write_table(
      workdir,
      sweep_rows,
      title="EK-FAC influence against its damping",
      notes="The same EK-FAC factors, damping relative to their mean eigenvalue (all layers).",
      name="ekfac_damping",
    )
  return {
    "rows": rows,
    "query_accuracy": query_acc,
    "query_nll": query_loss,
    "recall_k": ks,
    "num_train": n,
    "num_queries": q,
    "sources_per_fact": s,
    "wall_seconds": wall,
    "ekfac_damping": sweep_rows,
  }


def _plot(path: str, rows, per_query_lds, ks, n) -> None:
  import matplotlib.pyplot as plt  # noqa: PLC0415 - reporting sets the Agg backend

  fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4), dpi=120)
  names = [r["method"] for r in rows]
  x = np.arange(len(names))
  width = 0.8 / len(ks)
  for i, k in enumerate(ks):
    ax1.bar(x + i * width, [r[f"recall@{k}"] for r in rows], width, label=f"recall@{k}")
    ax1.axhline(k / n, color=f"C{i}", ls=":", lw=1)
  ax1.set_xticks(x + width * (len(ks) - 1) / 2, names, rotation=30)
  ax1.set_ylabel("recall of planted sources")
  ax1.set_ylim(0, 1)
  ax1.legend()
  ax2.boxplot([per_query_lds[m][np.isfinite(per_query_lds[m])] for m in names], tick_labels=names)
  ax2.axhline(0, color="k", lw=0.5)
  ax2.set_ylabel("LDS per query")
  ax2.tick_params(axis="x", rotation=30)
  fig.tight_layout()
  reporting.save_figure(fig, path)


if __name__ == "__main__":
  runner.main(run, Config, prog=PROG, workdir="/tmp/gradlab/lm_attribution")

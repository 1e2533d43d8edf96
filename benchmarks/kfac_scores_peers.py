r"""EK-FAC pairwise influence scores: gradlab against kronfluence 1.0.1 (PyTorch).

  pip install -e ".[bench]"          # torch 2.13.0 (CPU) and kronfluence 1.0.1
  python -m benchmarks.kfac_scores_peers [--rounds=3] [--models=mlp,transformer] [--json=out.json]
  python -m benchmarks.kfac_scores_peers --contender=gradlab:mlp   # one gradlab process alone

The whole pipeline, from data in memory to an ``[m, n]`` score matrix: fit
EK-FAC's factors on the ``n`` train examples, then score ``m`` queries against
every train example. The models, the weights, the torch twins and the factor
conventions are :mod:`benchmarks.kfac_peers`' (its flags too: ``--width``,
``--batch_size``, ``--lm_examples``, ...), with ``--mnist_examples`` defaulting
to all 4,000 train digits here:

* ``mlp``: 784-``width``-``width``-10 on the 4,000 train digits of the
  embedded MNIST, queried by the first ``--mlp_queries`` (100) test digits.
* ``transformer``: ``gradlab.models.TinyTransformer`` on ``--lm_examples``
  Fibonacci sequences, queried by ``--lm_queries`` (32) sequences drawn with
  another seed; the 13 linear layers are covered on both sides (kronfluence
  tracks ``nn.Linear`` only), the embedding, positions and LayerNorms on neither.

Before the comparison the parent trains each model for ``--train_steps`` Adam
steps on its train set (in JAX, so the scores are those of a fitted model, not
of the initialization), then hands the weights to both contenders.

The two calls compared:

* kronfluence: ``Analyzer.fit_all_factors`` (``FactorArguments(strategy=
  "ekfac", use_empirical_fisher=True)``) then ``Analyzer.compute_pairwise_scores``
  (``ScoreArguments(damping_factor=None)``: 0.1 x each module's mean Lambda; its
  default is a fixed 1e-8), the train batch ``--batch_size`` in both, all queries
  in one batch (kronfluence streams the whole train set once per query batch),
  the scores read back with ``load_pairwise_scores``. The task's
  ``compute_train_loss`` and ``compute_measurement`` are the same summed
  cross-entropy, so the query side is the training loss, as gradlab's default.
* gradlab: ``factors = curvature.ekfac(loss, params, train, micro_batch=B,
  fisher="empirical", ...)`` then ``influence.influence(loss, params, train,
  test, solver=influence.ekfac_solver(factors=factors), damping=None, chunk_size=min(B, n))``:
  the query gradients preconditioned once, the train set read ``B`` examples at a
  time by the factored per-layer contraction (no per-example train gradient).

**Scale and sign.** kronfluence's pairwise score of query q and train example
t (``module/tracker/pairwise_score.py``: the per-module ``einsum`` of the
preconditioned query gradient with the train example's per-sample gradient,
summed over modules) is ``g_q^T (F + damping)^-1 g_t`` with F its EK-FAC of
``(1/N) sum_n g_n g_n^T`` (Lambda divided by the example count) and every
``g`` the gradient of one example's summed loss. gradlab's is the removal
effect ``(1/n) g_q^T (F + damping)^-1 g_t`` (``gradlab.influence.functions``)
with the same F (empirical Fisher of the mean loss over examples, Lambda
divided by n) and the same damping. Neither negates (kronfluence leaves out
Koh and Liang's minus sign; gradlab's removal effect is the up-weighting one
negated), so positive means helpful on both sides and **kronfluence's scores
are n times gradlab's**. The summary gives the least-squares scale
``<k, g> / <g, g>`` (expected: n), the relative error of ``n x gradlab``, and
the Pearson and Spearman correlations over all ``m x n`` entries (goal >= 0.99).

What is timed, each contender in its own process (``timing.contender_processes``,
``--rounds`` rounds in alternating order; ratios kronfluence / gradlab taken
round by round, reported as their median and min-max spread): the fit and the
scores separately and their sum, for the first pipeline of the process (for
gradlab: compilation included) and the median of ``--repeats`` more pipelines
(kfac_peers' flag, here counting whole pipelines; its ``--ihvp_repeats`` is
unused). The torch process never imports JAX (checked). Two
gradlab contenders: ``gradlab``, the two calls above as they are (eager), and
``gradlab-jit`` (``--jit``), each of them under ``jax.jit`` (one program each,
the house style of :mod:`benchmarks.attribution_peers`). Under ``jit`` the
eigendecompositions run in float32 in XLA, eagerly in float64 NumPy on the host
(``curvature.kronecker._eigh``), as kronfluence's (``eigendecomposition_dtype``
float64): the jitted fit is then a float32 rounding of the same factors, and
its agreement is reported apart (measured: Pearson 0.9998, Spearman 0.993 on
the MLP, whose 785 x 785 input covariance float32 resolves least well, against
1 and 1 eagerly; the transformer agrees either way). Memory: each process's peak
resident set (``ru_maxrss``), whole and minus the resident set right before the
first pipeline (compilation included).

The defaults keep ``--rounds=3`` under ten minutes on 2 cores, most of it
kronfluence's MLP fit (its Lambda pass rotates every per-example gradient).
Goals: correlations >= 0.99 and gradlab >= 3x faster on this 2-core CPU.
"""

from __future__ import annotations

import json
import logging
import os
import statistics
import tempfile
import time

import numpy as np
from absl import app, flags

from benchmarks import kfac_peers as kp
from benchmarks import timing

# kfac_peers' flags are shared (absl allows one definition per name); only these are new.
_MLP_QUERIES = flags.DEFINE_integer("mlp_queries", 100, "MLP: test digits scored (m).")
_LM_QUERIES = flags.DEFINE_integer("lm_queries", 32, "Transformer: query sequences scored (m).")
_TRAIN_STEPS = flags.DEFINE_integer("train_steps", 200, "Adam steps fitting each model first.")
_JIT = flags.DEFINE_bool("jit", True, "Also time gradlab's fit and scores under jax.jit.")
flags.FLAGS.set_default("mnist_examples", 4000)
flags.FLAGS.set_default("repeats", 1)

_JSON = kp._JSON
FRAMEWORKS = ("gradlab", "gradlab-jit", "kronfluence")


# --- the problem ---------------------------------------------------------------------------


def _config(model: str) -> dict:
  if model == "mlp":
    cfg = {"model": "mlp", "width": kp._WIDTH.value, "n": kp._MNIST.value, "tokens": 1}
    return {**cfg, "m": _MLP_QUERIES.value}
  if model == "transformer":
    return {
      "model": "transformer", "vocab": kp._VOCAB.value, "dim": kp._DIM.value,
      "heads": kp._HEADS.value, "layers": kp._LAYERS.value, "seq_len": kp._SEQ.value,
      "n": kp._LM.value, "tokens": kp._SEQ.value, "m": _LM_QUERIES.value,
    }  # fmt: skip
  raise ValueError(f"--models: expected mlp or transformer, got {model!r}")


def _jax_loss(cfg: dict):
  """One example's loss, summed over its tokens (kronfluence's task sums the batch)."""
  import optax

  net = kp._flax_model(cfg)

  def loss(p, ex):
    logits = net.apply(p, ex["x"][None])[0]
    return optax.softmax_cross_entropy_with_integer_labels(logits, ex["y"]).sum()

  return loss


def _build(cfg: dict) -> dict:
  """``{"param/...", "x", "y", "qx", "qy"}``: trained flax weights, train set, queries."""
  import jax
  import jax.numpy as jnp
  import optax
  from flax import traverse_util

  from gradlab import data, tasks

  if cfg["model"] == "mlp":
    ds = data.load_dataset("mnist")
    if not 1 <= cfg["n"] <= len(ds.x_train):
      raise ValueError(f"--mnist_examples: expected 1 to {len(ds.x_train)}, got {cfg['n']}")
    if not 1 <= cfg["m"] <= len(ds.x_test):
      raise ValueError(f"--mlp_queries: expected 1 to {len(ds.x_test)}, got {cfg['m']}")
    x, y = ds.x_train[: cfg["n"]], ds.y_train[: cfg["n"]]
    qx, qy = ds.x_test[: cfg["m"]], ds.y_test[: cfg["m"]]
    sample = jnp.zeros((1, 784))
  else:
    seqs = tasks.fibonacci_sequences(cfg["n"], cfg["seq_len"] + 1, cfg["vocab"], seed=0)
    queries = tasks.fibonacci_sequences(cfg["m"], cfg["seq_len"] + 1, cfg["vocab"], seed=1)
    x, y, qx, qy = seqs[:, :-1], seqs[:, 1:], queries[:, :-1], queries[:, 1:]
    sample = jnp.zeros((1, cfg["seq_len"]), jnp.int32)
  params = kp._flax_model(cfg).init(jax.random.key(0), sample)
  loss = _jax_loss(cfg)
  opt = optax.adam(1e-3)
  train = {"x": jnp.asarray(x), "y": jnp.asarray(y)}

  @jax.jit
  def step(p, s, idx):
    batch = jax.tree.map(lambda a: a[idx], train)
    g = jax.grad(lambda q: jnp.mean(jax.vmap(lambda e: loss(q, e))(batch)))(p)
    u, s = opt.update(g, s, p)
    return optax.apply_updates(p, u), s

  state, rng = opt.init(params), np.random.default_rng(0)
  for _ in range(_TRAIN_STEPS.value):
    params, state = step(params, state, rng.integers(0, cfg["n"], min(128, cfg["n"])))
  flat = traverse_util.flatten_dict(jax.device_get(params), sep="/")
  out = {"x": np.asarray(x), "y": np.asarray(y), "qx": np.asarray(qx), "qy": np.asarray(qy)}
  for k, p in flat.items():
    out["param/" + k] = np.asarray(p, np.float32)
  return out


def _load(cfg: dict) -> dict:
  if kp._DATA.value and os.path.exists(kp._DATA.value):
    with np.load(kp._DATA.value) as f:
      return dict(f)
  return _build(cfg)


def _scores_path(folder: str, contender: str) -> str:
  return os.path.join(folder, contender.replace(":", "_") + ".npy")


# --- gradlab -------------------------------------------------------------------------------


def _gradlab(cfg: dict, d: dict, jit: bool = False) -> tuple[dict, np.ndarray]:
  import jax
  import jax.numpy as jnp
  from flax import traverse_util

  from gradlab import curvature
  from gradlab import influence as gi

  params = traverse_util.unflatten_dict(
    {k[len("param/") :]: jnp.asarray(v) for k, v in d.items() if k.startswith("param/")}, sep="/"
  )
  train = {"x": jnp.asarray(d["x"]), "y": jnp.asarray(d["y"])}
  test = {"x": jnp.asarray(d["qx"]), "y": jnp.asarray(d["qy"])}
  loss = _jax_loss(cfg)
  batch = kp._BATCH.value
  kw = dict(micro_batch=batch, fisher="empirical")
  if cfg["model"] == "transformer":
    kw.update(layers=tuple(kp._linear_layers(cfg)), uncovered="ignore")

  fit = lambda p, tr: curvature.ekfac(loss, p, tr, **kw)
  scores = lambda p, tr, te, f: gi.influence(
    loss,
    p,
    tr,
    te,
    solver=gi.ekfac_solver(factors=f),
    damping=None,
    chunk_size=min(batch, cfg["n"]),
  )
  if jit:
    fit, scores = jax.jit(fit), jax.jit(scores)

  def pipeline():
    t0 = time.perf_counter()
    f = jax.block_until_ready(fit(params, train))
    t1 = time.perf_counter()
    s = jax.block_until_ready(scores(params, train, test, f))
    t2 = time.perf_counter()
    return s, {"fit": t1 - t0, "scores": t2 - t1, "total": t2 - t0}

  before = kp._rss_kib()
  s, first = pipeline()
  warm = [pipeline()[1] for _ in range(kp._REPEATS.value)]
  peak = kp._peak_kib()
  return _figures(first, warm, peak, before, jax.devices()[0].platform), np.asarray(s)


def _figures(first: dict, warm: list[dict], peak: int, before: int, platform: str) -> dict:
  med = lambda key: statistics.median(w[key] for w in warm) if warm else first[key]
  secs = {f"{k} first": v for k, v in first.items()}
  secs.update({k: med(k) for k in first})
  return {
    "s": secs,
    "mem_mib": {"peak": peak / 1024, "peak - before": (peak - before) / 1024},
    "platform": platform,
  }


# --- kronfluence ---------------------------------------------------------------------------


def _kronfluence(cfg: dict, d: dict) -> tuple[dict, np.ndarray]:
  import sys

  import torch
  from kronfluence.analyzer import Analyzer, prepare_model
  from kronfluence.arguments import FactorArguments, ScoreArguments
  from kronfluence.utils.constants import ALL_MODULE_NAME

  if "jax" in sys.modules:
    raise RuntimeError("the kronfluence contender must run without JAX in its process")
  task = kp.loss_task()  # the training loss as the measurement, as gradlab's default
  net = kp._torch_model(cfg)
  kp._copy_weights(net, cfg, d)
  net = prepare_model(net, task)
  tensor = lambda a: torch.tensor(a) if cfg["model"] == "mlp" else torch.tensor(a).long()
  train = torch.utils.data.TensorDataset(tensor(d["x"]), torch.tensor(d["y"]).long())
  query = torch.utils.data.TensorDataset(tensor(d["qx"]), torch.tensor(d["qy"]).long())
  factor_args = FactorArguments(strategy="ekfac", use_empirical_fisher=True)
  score_args = ScoreArguments(damping_factor=None)  # 0.1 x mean(Lambda); the default is 1e-8
  batch = kp._BATCH.value

  with tempfile.TemporaryDirectory() as out_dir:
    analyzer = Analyzer(
      "scores", net, task, cpu=True, disable_tqdm=True, output_dir=out_dir,
      log_level=logging.WARNING,
    )  # fmt: skip

    def pipeline():
      t0 = time.perf_counter()
      analyzer.fit_all_factors(
        "ekfac", train, per_device_batch_size=batch, factor_args=factor_args,
        overwrite_output_dir=True,
      )  # fmt: skip
      t1 = time.perf_counter()
      analyzer.compute_pairwise_scores(
        "pairwise", "ekfac", query, train, per_device_query_batch_size=len(query),
        per_device_train_batch_size=batch, score_args=score_args, overwrite_output_dir=True,
      )  # fmt: skip
      s = analyzer.load_pairwise_scores("pairwise")[ALL_MODULE_NAME]
      t2 = time.perf_counter()
      return s, {"fit": t1 - t0, "scores": t2 - t1, "total": t2 - t0}

    before = kp._rss_kib()
    s, first = pipeline()
    warm = [pipeline()[1] for _ in range(kp._REPEATS.value)]
    peak = kp._peak_kib()
  platform = f"cpu, torch {torch.__version__}, {torch.get_num_threads()} threads"
  return _figures(first, warm, peak, before, platform), s.numpy()


# --- comparison and report -----------------------------------------------------------------


def _ranks(x: np.ndarray) -> np.ndarray:
  """Average ranks (ties share theirs), for Spearman's correlation."""
  order = np.argsort(x, kind="stable")
  r = np.empty(len(x))
  r[order] = np.arange(len(x))
  _, inv, counts = np.unique(x, return_inverse=True, return_counts=True)
  sums = np.bincount(inv, weights=r)
  return (sums / counts)[inv]


def _agreement(n: int, g: np.ndarray, k: np.ndarray) -> dict:
  """kronfluence's scores ``k`` against gradlab's ``g`` (both ``[m, n]``)."""
  g, k = g.astype(np.float64).ravel(), k.astype(np.float64).ravel()
  pearson = lambda a, b: float(np.corrcoef(a, b)[0, 1])
  return {
    "Pearson": pearson(g, k),
    "Spearman": pearson(_ranks(g), _ranks(k)),
    "best-fit scale <k,g>/<g,g>": float(g @ k / (g @ g)),
    "n (expected scale)": n,
    "rel. err of n x gradlab": float(np.linalg.norm(n * g - k) / np.linalg.norm(k)),
    "sign agreement": float(np.mean(np.sign(g) == np.sign(k))),
  }


def _check_flags() -> None:
  kp._check_flags()
  for flag, minimum in ((_MLP_QUERIES, 1), (_LM_QUERIES, 1), (_TRAIN_STEPS, 0)):
    if flag.value < minimum:
      raise app.UsageError(f"--{flag.name}: expected an integer >= {minimum}, got {flag.value}")


def main(argv):
  del argv
  _check_flags()
  if kp._CONTENDER.value:
    framework, _, model = kp._CONTENDER.value.partition(":")
    if framework not in FRAMEWORKS or model not in ("", "mlp", "transformer"):
      raise app.UsageError(
        "--contender: expected gradlab:MODEL, gradlab-jit:MODEL or kronfluence:MODEL (MODEL mlp "
        "or transformer), "
        f"got {kp._CONTENDER.value!r}"
      )
    cfg = _config(model or "mlp")
    if framework == "kronfluence":
      figures, scores = _kronfluence(cfg, _load(cfg))
    else:
      figures, scores = _gradlab(cfg, _load(cfg), jit=framework == "gradlab-jit")
    if kp._OUT.value:
      np.save(_scores_path(kp._OUT.value, kp._CONTENDER.value), scores)
    print(json.dumps(figures))
    return
  _report(_results())


def _results() -> dict:
  """``{model: (config, runs, agreement)}``: each model's contenders, in their processes."""
  forwarded = [
    f"--repeats={kp._REPEATS.value}", f"--batch_size={kp._BATCH.value}",
    f"--mnist_examples={kp._MNIST.value}", f"--width={kp._WIDTH.value}",
    f"--lm_examples={kp._LM.value}", f"--seq_len={kp._SEQ.value}", f"--vocab={kp._VOCAB.value}",
    f"--dim={kp._DIM.value}", f"--heads={kp._HEADS.value}", f"--layers={kp._LAYERS.value}",
    f"--mlp_queries={_MLP_QUERIES.value}", f"--lm_queries={_LM_QUERIES.value}",
  ]  # fmt: skip
  frameworks = [f for f in FRAMEWORKS if _JIT.value or f != "gradlab-jit"]
  results = {}
  with tempfile.TemporaryDirectory() as tmp:
    for model in kp._MODELS.value:
      cfg = _config(model)
      path = os.path.join(tmp, f"{model}.npz")
      np.savez(path, **_build(cfg))
      names = [f"{f}:{model}" for f in frameworks]
      runs = timing.contender_processes(
        "benchmarks.kfac_scores_peers", names, rounds=kp._ROUNDS.value,
        args=[*forwarded, f"--data={path}", f"--out={tmp}"],
      )  # fmt: skip
      k = np.load(_scores_path(tmp, f"kronfluence:{model}"))  # each contender's last round
      agree = {
        f: _agreement(cfg["n"], np.load(_scores_path(tmp, f"{f}:{model}")), k)
        for f in frameworks if f != "kronfluence"
      }  # fmt: skip
      results[model] = (cfg, runs, agree)
  return results


def _report(results: dict) -> None:
  summary, platform = [], {}
  for model, (cfg, runs, agree) in results.items():
    k = runs[f"kronfluence:{model}"]
    ours = list(agree)
    platform = {f: runs[f"{f}:{model}"][0]["platform"] for f in ("gradlab", "kronfluence")}
    row = {"model": model}
    for f in ours:
      row.update({f"{key} ({f})": v for key, v in agree[f].items()})
    for label in ("total first", "total", "fit first", "fit", "scores first", "scores"):
      kv = [r["s"][label] for r in k]
      row[f"{label} kronfluence s"] = statistics.median(kv)
      for f in ours:
        gv = [r["s"][label] for r in runs[f"{f}:{model}"]]
        ratio = timing.paired(kv, gv)
        row[f"{label} {f} s"] = statistics.median(gv)
        row[f"{label} kronfluence/{f}"] = f"{ratio['median']:.3g} ({ratio['spread']})"
    for f in (*ours, "kronfluence"):
      rs = runs[f"{f}:{model}"]
      row[f"peak RSS {f} MiB"] = statistics.median(r["mem_mib"]["peak"] for r in rs)
      row[f"peak RSS - before, {f} MiB"] = statistics.median(
        r["mem_mib"]["peak - before"] for r in rs
      )
    summary.append(row)
  keys = list(dict.fromkeys(key for r in summary for key in r if key != "model"))
  rows = [{"figure": key, **{r["model"]: r.get(key, "") for r in summary}} for key in keys]
  sizes = []
  for model, (cfg, _, _) in results.items():
    if model == "mlp":
      sizes.append(
        f"MLP 784-{cfg['width']}-{cfg['width']}-10, {cfg['m']} test digits x {cfg['n']} train"
      )
    else:
      sizes.append(
        f"TinyTransformer dim {cfg['dim']}, {cfg['layers']} blocks, {cfg['heads']} heads, vocab "
        f"{cfg['vocab']}, {cfg['m']} x {cfg['n']} sequences of {cfg['seq_len']} tokens"
      )
  timing.report(
    f"EK-FAC pairwise scores (fit + scores), gradlab vs kronfluence 1.0.1 ({'; '.join(sizes)}; "
    f"batch {kp._BATCH.value}, {_TRAIN_STEPS.value} Adam steps of training first); each "
    f"contender in its own process, {kp._ROUNDS.value} alternating rounds; gradlab on "
    f"{platform['gradlab']}, kronfluence on {platform['kronfluence']}",
    rows,
  )
  if _JSON.value:
    runs = {m: r for m, (_, r, _) in results.items()}
    with open(_JSON.value, "w") as f:
      json.dump({"summary": rows, "runs": runs}, f, indent=2)


QUICK = {**kp.QUICK, "mlp_queries": "2", "lm_queries": "2", "train_steps": "2"}


def measure(quick: bool, device: str) -> list[timing.Row]:
  """``benchmarks.all``'s rows: per model and gradlab contender (eager, jitted)
  kronfluence's time over gradlab's for the whole pipeline (first and repeated), and
  the scores' correlations. kronfluence runs on the CPU, whatever ``device``."""
  del device
  values = QUICK if quick else {"rounds": "1"}
  cmd = timing.command(__name__, values)
  no_peer = timing.missing("torch", "kronfluence")
  with timing.flag_values(values):
    models = list(kp._MODELS.value)
    if no_peer:
      return [
        timing.Row(
          f"{m}: kronfluence / gradlab, pipeline",
          goal=">= 3",
          command=cmd,
          note=timing.skipped(no_peer),
        )
        for m in models
      ]
    _check_flags()
    results = _results()
  out = []
  for model, (cfg, runs, agree) in results.items():
    k = runs[f"kronfluence:{model}"]
    for f in agree:
      g = runs[f"{f}:{model}"]
      dev = f"jax {g[0]['platform']}, kronfluence {k[0]['platform']}"
      for label in ("total first", "total"):
        r = timing.paired([x["s"][label] for x in k], [x["s"][label] for x in g])
        out.append(
          timing.Row(
            f"{model}: kronfluence / {f}, pipeline ({label})",
            r["median"],
            r["spread"],
            ">= 3",
            dev,
            cmd,
          )
        )
      for c in ("Pearson", "Spearman"):
        out.append(
          timing.Row(
            f"{model}: {c}, {f} vs kronfluence scores", agree[f][c], "", ">= 0.99", dev, cmd
          )
        )
  return out


if __name__ == "__main__":
  app.run(main)

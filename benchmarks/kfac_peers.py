r"""EK-FAC factors and one inverse product: gradlab against kronfluence 1.0.1 (PyTorch).

  pip install -e ".[bench]"          # torch 2.13.0 (CPU) and kronfluence 1.0.1
  python -m benchmarks.kfac_peers [--rounds=3] [--models=mlp,transformer] [--json=out.json]
  python -m benchmarks.kfac_peers --contender=gradlab:mlp   # one gradlab process alone, no torch

Two models, the same weights on both sides (built once in flax by the parent
process and handed to each contender in an ``.npz``, so that the torch process
never imports JAX; a flax kernel ``[in, out]`` is a torch weight ``[out, in]``):

* ``mlp``: 784-``width``-``width``-10 (ReLU, flax ``nn.Dense``) on the first
  ``--mnist_examples`` training digits of the embedded 5,000-digit MNIST
  (``gradlab.data.load_dataset("mnist")``; 4,000 train digits in all).
* ``transformer``: ``gradlab.models.TinyTransformer`` (pre-LayerNorm, causal
  self-attention through flax ``DenseGeneral`` query/key/value/out, a GELU MLP,
  an untied head) on ``--lm_examples`` generated Fibonacci token sequences
  (``gradlab.tasks.fibonacci_sequences``), predicting token t+1 from tokens
  <= t at every position. The torch twin has a separate ``nn.Linear`` for
  each of query, key, value and out (torch's ``nn.MultiheadAttention`` packs
  them into one ``in_proj`` that kronfluence cannot track), LayerNorm eps
  1e-6 and tanh-GELU, as flax has them. kronfluence 1.0.1 tracks
  ``nn.Linear`` and ``nn.Conv2d`` only, so both sides cover the linear layers
  alone: gradlab is called with ``layers=`` those 13 and ``uncovered="ignore"``
  (the embedding, the positions and the LayerNorms are left out on both).

Conventions matched (kronfluence's are in its ``factor/covariance.py``,
``factor/eigen.py``, ``module/tracker/factor.py``, ``factor/config.py``):

* Empirical Fisher on both sides (kronfluence ``use_empirical_fisher=True``,
  gradlab ``fisher="empirical"``), so the factors are deterministic.
* Loss reduction: kronfluence's train loss is the batch's **sum**
  (``reduction="sum"`` over examples and tokens), gradlab's ``loss_fn`` one
  example's loss, here the **sum** over its tokens, so that the two output
  gradients are the same numbers.
* The same batch: kronfluence's ``DataLoader`` batch size equals gradlab's
  ``micro_batch`` (``--batch_size``).
* kronfluence: A and S are divided by the token count (``N T``), Lambda by the
  example count ``N``. gradlab (``approximation="expand"``): A by ``N T``, S by
  ``N``, Lambda by ``N``. So A and Lambda compare as they are; gradlab's S
  (and so K-FAC's ``e_A e_S``) is ``T`` times kronfluence's: **gradlab's
  eigenvalues of S are divided by T before the comparison** (T = 1 for the
  MLP, the sequence length for the transformer).
* Layout: kronfluence's Lambda is ``[d_out, d_in+1]`` (the bias's 1 is the
  last column of the activations); gradlab's is ``[d_in+1, d_out]`` (the bias
  as the last row). kronfluence's is transposed before the comparison.
* Damping: both at 0.1 x the mean of each layer's Lambda (kronfluence's
  ``ScoreArguments(damping_factor=None)``: its default is 1e-8, not the
  heuristic; gradlab's ``inverse(damping=None)``).

How the factors are compared (per layer; the worst layer is in the summary):
the eigenvalues of A and of S (both ascending, as ``eigh`` returns them) by
``max |e_gradlab - e_kronfluence| / max e_kronfluence``; Lambda by its relative
Frobenius error in the two eigenbases' own order, and again with both sorted
(insensitive to the order of nearly equal eigenvectors, which a float32
accumulation may swap or rotate); the inverse product of one random vector
(the same on both sides) by its relative 2-norm error. The summed loss of
each side is printed beside them as a check that the models are the same.

What is timed, in each contender's own process (``timing.contender_processes``:
``--rounds`` rounds, the order alternating, the kronfluence/gradlab ratio
taken round by round and reported as its median and spread):

* ``fit``: covariances + eigendecomposition + eigenvalue correction, from data
  in memory to the fitted factors. kronfluence: its own in-memory stages
  ``fit_covariance_matrices_with_loader``, ``perform_eigendecomposition``,
  ``fit_lambda_matrices_with_loader`` (what ``Analyzer.fit_all_factors`` runs,
  without its safetensors writes between stages). gradlab:
  ``curvature.ekfac``. The first fit (for gradlab this includes compiling)
  and the median of ``--repeats`` further fits are reported.
* ``kfac``: covariances + eigendecomposition alone (kronfluence's first two
  stages; gradlab's ``curvature.kfac``), repeated fits.
* ``ihvp``: one damped inverse product ``(F + damping I)^-1 v`` over every
  covered layer, with the damping computed from Lambda in the call.
  kronfluence: ``TrackedModule.prepare_storage`` (Lambda / N, + damping,
  reciprocal) and ``Ekfac.precondition_gradient`` per module; gradlab:
  ``jax.jit(lambda f, v: f.inverse()(v))``, compiled beforehand.

Memory, per process: the peak resident set (``ru_maxrss``) minus the resident
set right before the first fit, over the fits and the inverse products (the
peak includes gradlab's compilation); for gradlab also XLA's
``memory_analysis()`` of the whole fit compiled as one program (under
``jit``, where the eigendecomposition runs in float32 on the device instead
of float64 on the host) and of the inverse product: its temporary bytes.

The defaults keep ``--rounds=3`` to about three minutes on 2 cores; most of
it is kronfluence's MLP correction, which rotates every per-example gradient
(``Q_S^T G_n Q_A``: ``N d_out d_in (d_in + d_out)`` multiply-adds) where
gradlab, with one token per example, sums ``(Q_A^T a_n)^2 ((Q_S^T g_n)^2)^T``
(one matrix product per micro-batch).
Goals (the issue's): gradlab >= 3x faster on this 2-core CPU, lower peak
memory, the same eigenvalues to float tolerance.
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import tempfile
import time

import numpy as np
from absl import app, flags

from benchmarks import timing

_MODELS = flags.DEFINE_list("models", ["mlp", "transformer"], "Models: mlp, transformer.")
_ROUNDS = flags.DEFINE_integer("rounds", 3, "Alternating process rounds per contender.")
_REPEATS = flags.DEFINE_integer("repeats", 2, "Timed fits after the first, per process.")
_IHVP_REPEATS = flags.DEFINE_integer("ihvp_repeats", 10, "Timed inverse products per process.")
_BATCH = flags.DEFINE_integer(
  "batch_size", 256, "kronfluence's batch size = gradlab's micro_batch."
)
_MNIST = flags.DEFINE_integer("mnist_examples", 1000, "MNIST training digits (at most 4,000).")
_WIDTH = flags.DEFINE_integer("width", 256, "MLP hidden width.")
_LM = flags.DEFINE_integer("lm_examples", 256, "Token sequences for the transformer.")
_SEQ = flags.DEFINE_integer("seq_len", 32, "Tokens per sequence (inputs; targets are shifted).")
_VOCAB = flags.DEFINE_integer("vocab", 64, "Vocabulary.")
_DIM = flags.DEFINE_integer("dim", 64, "Transformer width.")
_HEADS = flags.DEFINE_integer("heads", 4, "Attention heads.")
_LAYERS = flags.DEFINE_integer("layers", 2, "Transformer blocks.")
_JSON = flags.DEFINE_string("json", None, "Write the figures here.")
_CONTENDER = flags.DEFINE_string("contender", None, "'gradlab:MODEL' or 'kronfluence:MODEL'.")
_DATA = flags.DEFINE_string("data", None, "Internal: the problem's .npz (built if absent).")
_OUT = flags.DEFINE_string("out", None, "Internal: write the contender's factors into this folder.")

FRAMEWORKS = ("gradlab", "kronfluence")


# --- the problem: weights, data and a vector, as flat numpy arrays -------------------------


def _config(model: str) -> dict:
  if model == "mlp":
    return {"model": "mlp", "width": _WIDTH.value, "n": _MNIST.value, "tokens": 1}
  if model == "transformer":
    return {
      "model": "transformer", "vocab": _VOCAB.value, "dim": _DIM.value, "heads": _HEADS.value,
      "layers": _LAYERS.value, "seq_len": _SEQ.value, "n": _LM.value, "tokens": _SEQ.value,
    }  # fmt: skip
  raise ValueError(f"--models: expected mlp or transformer, got {model!r}")


def _linear_layers(cfg: dict) -> list[str]:
  """The covered layers' names (gradlab's, with "/"; torch's module path has ".")."""
  if cfg["model"] == "mlp":
    return ["dense_0", "dense_1", "dense_2"]
  names = []
  for i in range(cfg["layers"]):
    names += [f"block_{i}/attn/{p}" for p in ("query", "key", "value", "out")]
    names += [f"block_{i}/mlp_in", f"block_{i}/mlp_out"]
  return names + ["head"]


def _flax_model(cfg: dict):
  from gradlab import models

  if cfg["model"] == "mlp":
    return models.MLP((cfg["width"], cfg["width"], 10))
  return models.TinyTransformer(
    cfg["vocab"], cfg["dim"], cfg["heads"], cfg["layers"], max_len=cfg["seq_len"]
  )


def _build(cfg: dict) -> dict:
  """``{"param/...", "v/...", "x", "y"}``: flax's weights, a random vector like them, data."""
  import jax
  import jax.numpy as jnp
  from flax import traverse_util

  from gradlab import data, tasks

  if cfg["model"] == "mlp":
    ds = data.load_dataset("mnist")
    if not 1 <= cfg["n"] <= len(ds.x_train):
      raise ValueError(f"--mnist_examples: expected 1 to {len(ds.x_train)}, got {cfg['n']}")
    x, y = ds.x_train[: cfg["n"]], ds.y_train[: cfg["n"]]
    sample = jnp.zeros((1, 784))
  else:
    seqs = tasks.fibonacci_sequences(cfg["n"], cfg["seq_len"] + 1, cfg["vocab"], seed=0)
    x, y = seqs[:, :-1], seqs[:, 1:]
    sample = jnp.zeros((1, cfg["seq_len"]), jnp.int32)
  params = _flax_model(cfg).init(jax.random.key(0), sample)
  flat = traverse_util.flatten_dict(jax.device_get(params), sep="/")
  rng = np.random.default_rng(1)
  out = {"x": np.asarray(x), "y": np.asarray(y)}
  for k, p in flat.items():
    out["param/" + k] = np.asarray(p, np.float32)
    out["v/" + k] = rng.standard_normal(np.shape(p)).astype(np.float32)
  return out


def _load(cfg: dict) -> dict:
  if _DATA.value and os.path.exists(_DATA.value):
    with np.load(_DATA.value) as f:
      return dict(f)
  return _build(cfg)


def _layer_matrix(flat: dict, prefix: str, name: str) -> np.ndarray:
  """A layer's ``[d_in+1, d_out]`` matrix (gradlab's layout: the bias as the last row)."""
  b = flat[f"{prefix}/params/{name}/bias"].reshape(-1)
  k = flat[f"{prefix}/params/{name}/kernel"].reshape(-1, b.size)
  return np.concatenate([k, b[None]], 0)


def _rss_kib() -> int:
  with open("/proc/self/status") as f:
    for line in f:
      if line.startswith("VmRSS:"):
        return int(line.split()[1])
  return 0


def _peak_kib() -> int:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux


# --- gradlab -------------------------------------------------------------------------------


def _out_path(contender: str) -> str | None:
  return os.path.join(_OUT.value, contender.replace(":", "_") + ".npz") if _OUT.value else None


def _gradlab(cfg: dict, d: dict, out_path: str | None) -> dict:
  import jax
  import jax.numpy as jnp
  import optax
  from flax import traverse_util

  from gradlab import curvature

  net = _flax_model(cfg)
  unflat = lambda prefix: traverse_util.unflatten_dict(
    {k[len(prefix) + 1 :]: jnp.asarray(v) for k, v in d.items() if k.startswith(prefix + "/")},
    sep="/",
  )
  params, vec = unflat("param"), unflat("v")
  data = {"x": jnp.asarray(d["x"]), "y": jnp.asarray(d["y"])}
  names = _linear_layers(cfg)

  def loss(p, ex):  # one example; the sum over its tokens (kronfluence sums the batch)
    logits = net.apply(p, ex["x"][None])[0]
    return optax.softmax_cross_entropy_with_integer_labels(logits, ex["y"]).sum()

  kw = dict(micro_batch=_BATCH.value, fisher="empirical")
  if cfg["model"] == "transformer":
    kw.update(layers=tuple(names), uncovered="ignore")
  fit = lambda p, x: curvature.ekfac(loss, p, x, **kw)
  fit_kfac = lambda p, x: curvature.kfac(loss, p, x, **kw)
  ready = lambda f: jax.block_until_ready(jax.tree.leaves(f))

  before = _rss_kib()
  t0 = time.perf_counter()
  ek = fit(params, data)
  ready(ek)
  first = time.perf_counter() - t0
  warm = []
  for _ in range(_REPEATS.value):
    t0 = time.perf_counter()
    ek = fit(params, data)
    ready(ek)
    warm.append(time.perf_counter() - t0)
  inverse = jax.jit(lambda f, v: f.inverse()(v))
  u = jax.block_until_ready(inverse(ek, vec))
  ihvp = []
  for _ in range(_IHVP_REPEATS.value):
    t0 = time.perf_counter()
    u = jax.block_until_ready(inverse(ek, vec))
    ihvp.append(time.perf_counter() - t0)
  peak = _peak_kib()

  kfac = []
  for _ in range(1 + _REPEATS.value):
    t0 = time.perf_counter()
    ready(fit_kfac(params, data))
    kfac.append(time.perf_counter() - t0)
  total = float(jnp.sum(jax.vmap(lambda ex: loss(params, ex))(data)))

  temp = {}
  for label, f, args in (("fit", jax.jit(fit), (params, data)), ("ihvp", inverse, (ek, vec))):
    try:
      temp[label] = f.lower(*args).compile().memory_analysis().temp_size_in_bytes / 2**20
    except Exception as e:  # noqa: BLE001 - report, do not fail the run
      temp[label] = f"n/a ({type(e).__name__})"

  if out_path:
    lam = ek.eigenvalues()
    flat_u = traverse_util.flatten_dict(jax.device_get(u), sep="/")
    flat_u = {"u/" + k: np.asarray(v) for k, v in flat_u.items()}
    out = {}
    for n in names:
      out[f"lambda/{n}"] = np.asarray(lam[n])
      out[f"e_a/{n}"] = np.asarray(ek.e_a[n])
      out[f"e_s/{n}"] = np.asarray(ek.e_s[n])
      out[f"u/{n}"] = _layer_matrix(flat_u, "u", n)
    np.savez(out_path, **out)
  return {
    "s": {"fit first": first, "fit": statistics.median(warm) if warm else first,
          "kfac": statistics.median(kfac[1:] or kfac), "kfac first": kfac[0]},
    "ms": {"ihvp": 1e3 * statistics.median(ihvp)},
    "mem_mib": {"peak - before": (peak - before) / 1024, "before": before / 1024},
    "temp_mib": temp,
    "loss_sum": total,
    "platform": jax.devices()[0].platform,
  }  # fmt: skip


# --- kronfluence ---------------------------------------------------------------------------


def _torch_model(cfg: dict):
  import math

  import torch
  from torch import nn
  from torch.nn import functional as F

  if cfg["model"] == "mlp":

    class MLP(nn.Module):
      def __init__(self, w):
        super().__init__()
        self.dense_0, self.dense_1, self.dense_2 = (
          nn.Linear(784, w),
          nn.Linear(w, w),
          nn.Linear(w, 10),
        )

      def forward(self, x):
        return self.dense_2(F.relu(self.dense_1(F.relu(self.dense_0(x)))))

    return MLP(cfg["width"])

  dim, heads = cfg["dim"], cfg["heads"]

  class Attention(nn.Module):
    def __init__(self):
      super().__init__()
      self.query, self.key = nn.Linear(dim, dim), nn.Linear(dim, dim)
      self.value, self.out = nn.Linear(dim, dim), nn.Linear(dim, dim)

    def forward(self, h, mask):
      b, t, _ = h.shape
      split = lambda z: z.view(b, t, heads, dim // heads)
      q, k, v = split(self.query(h)), split(self.key(h)), split(self.value(h))
      w = torch.einsum("bqhd,bkhd->bhqk", q / math.sqrt(dim // heads), k)
      w = w.masked_fill(~mask, torch.finfo(w.dtype).min).softmax(-1)
      return self.out(torch.einsum("bhqk,bkhd->bqhd", w, v).reshape(b, t, dim))

  class Block(nn.Module):
    def __init__(self):
      super().__init__()
      self.ln_attn, self.ln_mlp = nn.LayerNorm(dim, eps=1e-6), nn.LayerNorm(dim, eps=1e-6)
      self.attn = Attention()
      self.mlp_in, self.mlp_out = nn.Linear(dim, 4 * dim), nn.Linear(4 * dim, dim)

    def forward(self, x, mask):
      x = x + self.attn(self.ln_attn(x), mask)
      return x + self.mlp_out(F.gelu(self.mlp_in(self.ln_mlp(x)), approximate="tanh"))

  class Transformer(nn.Module):
    def __init__(self):
      super().__init__()
      self.embed = nn.Embedding(cfg["vocab"], dim)
      self.pos = nn.Parameter(torch.zeros(cfg["seq_len"], dim))
      for i in range(cfg["layers"]):
        self.add_module(f"block_{i}", Block())
      self.ln_final = nn.LayerNorm(dim, eps=1e-6)
      self.head = nn.Linear(dim, cfg["vocab"])

    def forward(self, tokens):
      t = tokens.shape[1]
      x = self.embed(tokens) + self.pos[:t]
      mask = torch.ones(t, t, dtype=torch.bool, device=tokens.device).tril()
      for i in range(cfg["layers"]):
        x = getattr(self, f"block_{i}")(x, mask)
      return self.head(self.ln_final(x))

  return Transformer()


def _copy_weights(net, cfg: dict, d: dict) -> None:
  """flax's weights into the torch twin (kernels transposed, attention heads flattened)."""
  import torch

  p = lambda k: torch.tensor(np.asarray(d["param/params/" + k]))
  with torch.no_grad():
    for name in _linear_layers(cfg):
      m = _layer_matrix(d, "param", name)
      lin = net.get_submodule(name.replace("/", "."))
      lin.weight.copy_(torch.tensor(m[:-1].T))
      lin.bias.copy_(torch.tensor(m[-1]))
    if cfg["model"] == "transformer":
      net.embed.weight.copy_(p("embed/embedding"))
      net.pos.copy_(p("pos"))
      for ln in [f"block_{i}/{n}" for i in range(cfg["layers"]) for n in ("ln_attn", "ln_mlp")]:
        mod = net.get_submodule(ln.replace("/", "."))
        mod.weight.copy_(p(ln + "/scale"))
        mod.bias.copy_(p(ln + "/bias"))
      net.ln_final.weight.copy_(p("ln_final/scale"))
      net.ln_final.bias.copy_(p("ln_final/bias"))


def loss_task():
  """kronfluence's ``Task`` for both models: the batch's summed cross-entropy (over
  examples and tokens) as the train loss and, by default, as the measurement."""
  import torch
  from kronfluence.task import Task
  from torch.nn import functional as F

  class LossTask(Task):
    def compute_train_loss(self, batch, model, sample=False):
      x, y = batch
      logits = model(x)
      if sample:  # the true Fisher's labels (unused: use_empirical_fisher=True)
        with torch.no_grad():
          y = torch.distributions.Categorical(logits=logits.detach()).sample()
      return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1), reduction="sum")

    def compute_measurement(self, batch, model):
      return self.compute_train_loss(batch, model)

  return LossTask()


def _kronfluence(cfg: dict, d: dict, out_path: str | None) -> dict:
  import torch
  from kronfluence.analyzer import prepare_model
  from kronfluence.arguments import FactorArguments, ScoreArguments
  from kronfluence.factor.config import FactorConfig
  from kronfluence.factor.covariance import fit_covariance_matrices_with_loader
  from kronfluence.factor.eigen import fit_lambda_matrices_with_loader, perform_eigendecomposition
  from kronfluence.module.tracked_module import TrackedModule
  from kronfluence.utils.constants import (
    ACTIVATION_EIGENVALUES_NAME,
    ACTIVATION_EIGENVECTORS_NAME,
    GRADIENT_EIGENVALUES_NAME,
    GRADIENT_EIGENVECTORS_NAME,
    LAMBDA_MATRIX_NAME,
    NUM_LAMBDA_PROCESSED,
  )
  from kronfluence.utils.state import State

  task = loss_task()
  net = _torch_model(cfg)
  _copy_weights(net, cfg, d)
  net = prepare_model(net, task)
  x = torch.tensor(d["x"]) if cfg["model"] == "mlp" else torch.tensor(d["x"]).long()
  y = torch.tensor(d["y"]).long()
  loader = torch.utils.data.DataLoader(
    torch.utils.data.TensorDataset(x, y), batch_size=_BATCH.value, shuffle=False
  )
  state = State(cpu=True)
  args = FactorArguments(strategy="ekfac", use_empirical_fisher=True)
  names = _linear_layers(cfg)
  modules = {n: net.get_submodule(n.replace("/", ".")) for n in names}
  assert all(isinstance(m, TrackedModule) for m in modules.values())

  def fit(correct=True):
    _, cov = fit_covariance_matrices_with_loader(net, state, task, loader, args, disable_tqdm=True)
    eig = perform_eigendecomposition(cov, net, state, args, disable_tqdm=True)
    if not correct:
      return eig, None
    _, lam = fit_lambda_matrices_with_loader(
      net, state, task, loader, args, eigen_factors=eig, disable_tqdm=True
    )
    return eig, lam

  before = _rss_kib()
  t0 = time.perf_counter()
  eig, lam = fit()
  first = time.perf_counter() - t0
  warm = []
  for _ in range(_REPEATS.value):
    t0 = time.perf_counter()
    eig, lam = fit()
    warm.append(time.perf_counter() - t0)

  vec = {}
  for n in names:
    m = _layer_matrix(d, "v", n)
    vec[n] = torch.tensor(m.T)[None]  # [1, d_out, d_in+1]
  ekfac = FactorConfig.CONFIGS["ekfac"]
  score_args = ScoreArguments(damping_factor=None)  # 0.1 x mean(Lambda); the default is 1e-8

  def inverse():
    out = {}
    for n, mod in modules.items():
      key = mod.name
      mod.update_score_args(score_args)
      for f in (ACTIVATION_EIGENVECTORS_NAME, GRADIENT_EIGENVECTORS_NAME):
        mod.set_factor(f, eig[f][key])
      for f in (ACTIVATION_EIGENVALUES_NAME, GRADIENT_EIGENVALUES_NAME):
        mod.set_factor(f, eig[f][key])
      for f in (LAMBDA_MATRIX_NAME, NUM_LAMBDA_PROCESSED):
        mod.set_factor(f, lam[f][key])
      mod.prepare_storage(device=torch.device("cpu"))
      out[n] = ekfac.precondition_gradient(gradient=vec[n].clone(), storage=mod.storage)
    return out

  with torch.no_grad():
    u = inverse()
    ihvp = []
    for _ in range(_IHVP_REPEATS.value):
      t0 = time.perf_counter()
      u = inverse()
      ihvp.append(time.perf_counter() - t0)
  peak = _peak_kib()

  kfac = []
  for _ in range(1 + _REPEATS.value):
    t0 = time.perf_counter()
    fit(correct=False)
    kfac.append(time.perf_counter() - t0)
  with torch.no_grad():
    total = float(sum(task.compute_train_loss(b, net) for b in loader))

  if out_path:
    out = {}
    for n, mod in modules.items():
      key = mod.name
      count = lam[NUM_LAMBDA_PROCESSED][key].double()
      out[f"lambda/{n}"] = (lam[LAMBDA_MATRIX_NAME][key].double() / count).numpy().T
      out[f"e_a/{n}"] = eig[ACTIVATION_EIGENVALUES_NAME][key].numpy()
      out[f"e_s/{n}"] = eig[GRADIENT_EIGENVALUES_NAME][key].numpy()
      out[f"u/{n}"] = u[n][0].numpy().T
    np.savez(out_path, **out)
  return {
    "s": {"fit first": first, "fit": statistics.median(warm) if warm else first,
          "kfac": statistics.median(kfac[1:] or kfac), "kfac first": kfac[0]},
    "ms": {"ihvp": 1e3 * statistics.median(ihvp)},
    "mem_mib": {"peak - before": (peak - before) / 1024, "before": before / 1024},
    "temp_mib": {},
    "loss_sum": total,
    "platform": f"cpu, torch {torch.__version__}, {torch.get_num_threads()} threads",
  }  # fmt: skip


# --- comparison and report -----------------------------------------------------------------


def _compare(cfg: dict, g: dict, k: dict) -> list[dict]:
  """Per layer: the relative errors of e_A, e_S (gradlab's / T), Lambda, and the product."""
  t = cfg["tokens"]
  rows = []
  for n in _linear_layers(cfg):
    ea_g, ea_k = g[f"e_a/{n}"], k[f"e_a/{n}"]
    es_g, es_k = g[f"e_s/{n}"] / t, k[f"e_s/{n}"]
    lg, lk = g[f"lambda/{n}"], k[f"lambda/{n}"]
    ug, uk = g[f"u/{n}"], k[f"u/{n}"]
    rel = lambda a, b: float(np.linalg.norm(a - b) / np.linalg.norm(b))
    rows.append(
      {
        "layer": n,
        "shape [d_in+1, d_out]": "x".join(map(str, lg.shape)),
        "e_A max err / max e_A": float(np.max(np.abs(ea_g - ea_k)) / np.max(np.abs(ea_k))),
        "e_S max err / max e_S": float(np.max(np.abs(es_g - es_k)) / np.max(np.abs(es_k))),
        "Lambda rel. F err": rel(lg, lk),
        "Lambda sorted rel. F err": rel(np.sort(lg, None), np.sort(lk, None)),
        "ihvp rel. err": rel(ug, uk),
      }
    )
  return rows


def _check_flags() -> None:
  for flag, minimum in ((_ROUNDS, 1), (_REPEATS, 0), (_IHVP_REPEATS, 1), (_BATCH, 1), (_MNIST, 1),
                        (_WIDTH, 1), (_LM, 1), (_SEQ, 1), (_VOCAB, 2), (_DIM, 1), (_HEADS, 1),
                        (_LAYERS, 1)):  # fmt: skip
    if flag.value < minimum:
      raise app.UsageError(f"--{flag.name}: expected an integer >= {minimum}, got {flag.value}")
  if _DIM.value % _HEADS.value:
    raise app.UsageError(f"--heads: must divide --dim={_DIM.value}, got {_HEADS.value}")
  for m in _MODELS.value:
    if m not in ("mlp", "transformer"):
      raise app.UsageError(f"--models: expected mlp and/or transformer, got {m!r}")


def main(argv):
  del argv
  _check_flags()
  if _CONTENDER.value:
    framework, _, model = _CONTENDER.value.partition(":")
    if framework not in FRAMEWORKS or model not in ("", "mlp", "transformer"):
      raise app.UsageError(
        "--contender: expected gradlab:MODEL or kronfluence:MODEL (MODEL mlp or transformer), "
        f"got {_CONTENDER.value!r}"
      )
    cfg = _config(model or "mlp")
    d = _load(cfg)
    run = _gradlab if framework == "gradlab" else _kronfluence
    print(json.dumps(run(cfg, d, _out_path(_CONTENDER.value))))
    return
  _report(_results())


def _results() -> dict:
  """``{model: (config, runs, factors)}``: each model's contenders, in their processes."""
  forwarded = [
    f"--repeats={_REPEATS.value}", f"--ihvp_repeats={_IHVP_REPEATS.value}",
    f"--batch_size={_BATCH.value}", f"--mnist_examples={_MNIST.value}", f"--width={_WIDTH.value}",
    f"--lm_examples={_LM.value}", f"--seq_len={_SEQ.value}", f"--vocab={_VOCAB.value}",
    f"--dim={_DIM.value}", f"--heads={_HEADS.value}", f"--layers={_LAYERS.value}",
  ]  # fmt: skip
  results = {}
  with tempfile.TemporaryDirectory() as tmp:
    for model in _MODELS.value:
      cfg = _config(model)
      path = os.path.join(tmp, f"{model}.npz")
      np.savez(path, **_build(cfg))
      names = [f"{f}:{model}" for f in FRAMEWORKS]
      runs = timing.contender_processes(
        "benchmarks.kfac_peers", names, rounds=_ROUNDS.value,
        args=[*forwarded, f"--data={path}", f"--out={tmp}"],
      )  # fmt: skip
      factors = {}
      for name in names:  # each contender's last round
        with np.load(os.path.join(tmp, name.replace(":", "_") + ".npz")) as f:
          factors[name] = dict(f)
      results[model] = (cfg, runs, factors)
  return results


def _report(results: dict) -> None:
  summary, layer_rows, platform = [], {}, {}
  for model, (cfg, runs, factors) in results.items():
    g, k = runs[f"gradlab:{model}"], runs[f"kronfluence:{model}"]
    platform = {"gradlab": g[0]["platform"], "kronfluence": k[0]["platform"]}
    row = {"model": model}
    for field, label in (("s", "fit first"), ("s", "fit"), ("s", "kfac"), ("ms", "ihvp")):
      gv, kv = [r[field][label] for r in g], [r[field][label] for r in k]
      ratio = timing.paired(kv, gv)
      row[f"{label} gradlab {field}"] = statistics.median(gv)
      row[f"{label} kronfluence {field}"] = statistics.median(kv)
      row[f"{label} kronfluence/gradlab"] = f"{ratio['median']:.3g} ({ratio['spread']})"
    gm = [r["mem_mib"]["peak - before"] for r in g]
    km = [r["mem_mib"]["peak - before"] for r in k]
    row["peak RSS - before, gradlab MiB"] = statistics.median(gm)
    row["peak RSS - before, kronfluence MiB"] = statistics.median(km)
    row["XLA temp MiB (fit, ihvp)"] = ", ".join(
      f"{v:.3g}" if isinstance(v, float) else str(v) for v in g[-1]["temp_mib"].values()
    )
    lg, lk = g[-1]["loss_sum"], k[-1]["loss_sum"]
    row["summed loss rel. diff"] = abs(lg - lk) / abs(lk)
    comp = _compare(cfg, factors[f"gradlab:{model}"], factors[f"kronfluence:{model}"])
    for c in list(comp[0])[2:]:
      row[f"worst {c}"] = max(r[c] for r in comp)
    summary.append(row)
    layer_rows[model] = comp
  # one column per model, one row per figure
  rows = [{"figure": key, **{r["model"]: r[key] for r in summary}} for key in list(summary[0])[1:]]
  sizes = []
  for model, (cfg, _, _) in results.items():
    if model == "mlp":
      sizes.append(f"MLP 784-{cfg['width']}-{cfg['width']}-10 on {cfg['n']} MNIST digits")
    else:
      sizes.append(
        f"TinyTransformer dim {cfg['dim']}, {cfg['layers']} blocks, {cfg['heads']} heads, vocab "
        f"{cfg['vocab']}, on {cfg['n']} sequences of {cfg['seq_len']} tokens"
      )
  timing.report(
    f"EK-FAC fit and one inverse product, gradlab vs kronfluence 1.0.1 ({'; '.join(sizes)}; "
    f"batch {_BATCH.value}); each contender in its own process, {_ROUNDS.value} alternating "
    f"rounds; gradlab on {platform['gradlab']}, kronfluence on {platform['kronfluence']}",
    rows,
  )
  for model, comp in layer_rows.items():
    cfg = results[model][0]
    timing.report(
      f"{model}: factor agreement per layer (gradlab's e_S divided by T = {cfg['tokens']})", comp
    )
  if _JSON.value:
    runs = {m: r for m, (_, r, _) in results.items()}
    with open(_JSON.value, "w") as f:
      json.dump({"summary": rows, "layers": layer_rows, "runs": runs}, f, indent=2)


QUICK = {
  "rounds": "1",
  "repeats": "0",
  "ihvp_repeats": "1",
  "batch_size": "8",
  "mnist_examples": "32",
  "width": "8",
  "lm_examples": "8",
  "seq_len": "4",
  "vocab": "8",
  "dim": "8",
  "heads": "2",
  "layers": "1",
}


def measure(quick: bool, device: str) -> list[timing.Row]:
  """``benchmarks.all``'s rows: per model kronfluence's time over gradlab's (EK-FAC fit,
  K-FAC fit, one inverse product) and the worst factor disagreement. kronfluence
  runs on the CPU, whatever ``device`` (its ``cpu=True`` is fixed in this benchmark)."""
  del device
  values = QUICK if quick else {"rounds": "1"}
  cmd = timing.command(__name__, values)
  no_peer = timing.missing("torch", "kronfluence")
  with timing.flag_values(values):
    models = list(_MODELS.value)
    if no_peer:
      return [
        timing.Row(
          f"{m}: kronfluence / gradlab", goal=">= 3", command=cmd, note=timing.skipped(no_peer)
        )
        for m in models
      ]
    _check_flags()
    results = _results()
  out = []
  for model, (cfg, runs, factors) in results.items():
    g, k = runs[f"gradlab:{model}"], runs[f"kronfluence:{model}"]
    dev = f"jax {g[0]['platform']}, kronfluence {k[0]['platform']}"
    for field, label in (("s", "fit"), ("s", "kfac"), ("ms", "ihvp")):
      r = timing.paired([x[field][label] for x in k], [x[field][label] for x in g])
      out.append(
        timing.Row(
          f"{model}: {label} kronfluence / gradlab", r["median"], r["spread"], ">= 3", dev, cmd
        )
      )
    comp = _compare(cfg, factors[f"gradlab:{model}"], factors[f"kronfluence:{model}"])
    for c in ("e_A max err / max e_A", "e_S max err / max e_S", "ihvp rel. err"):
      out.append(
        timing.Row(f"{model}: worst {c}", max(r[c] for r in comp), "", "float tolerance", dev, cmd)
      )
  return out


if __name__ == "__main__":
  app.run(main)

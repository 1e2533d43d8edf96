r"""The categorical VAE's train step: ReinMax against ST, and gradlab against
the official PyTorch ``reinmax`` package, each framework in its own process.

  pip install -e ".[bench]"     # torch 2.13.0 (CPU) and reinmax 0.1.0
  python -m benchmarks.reinmax_vae_step [--config=10x30] [--json=out.json]

Every contender does the same work per step: encode a batch of 100 MNIST-size
images, draw one categorical sample per latent, decode, the -ELBO (BCE +
KL to uniform), backward, one Adam update. The gradlab steps are timed
interleaved in one process (medians of repeats); the official torch step runs
in its own process, alternating with gradlab's for ``--rounds`` rounds
(``timing.contender_processes``), and torch / gradlab is the median of the
per-round ratios, with their spread. Goals: ReinMax / ST <= 1.05;
torch / gradlab >= 2.

The ST and ReinMax steps both need the sample in the forward pass (the decoder
reads it), so XLA cannot drop the sampling from either (a trap when timing
jax.grad of a loss whose gradient ignores the sample).
"""

from __future__ import annotations

import json
import math
import statistics

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import app, flags

from benchmarks import timing
from gradlab import discrete, models, train

_CONFIG = flags.DEFINE_string("config", "10x30", "CxL latent configuration.")
_BATCH = flags.DEFINE_integer("batch_size", 100, "Batch size.")
_REPEATS = flags.DEFINE_integer("repeats", 20, "Timed repeats.")
_TORCH = flags.DEFINE_bool("torch", True, "Also time the official PyTorch reinmax.")
_TORCH_DEVICE = flags.DEFINE_string("torch_device", "cpu", "cpu or cuda.")
_JSON = flags.DEFINE_string("json", None, "Write the figures here.")
_ROUNDS = flags.DEFINE_integer("rounds", 4, "Alternating process rounds per framework.")
_CONTENDER = flags.DEFINE_string("contender", None, "Internal: 'jax' or 'torch'.")
_ESTIMATORS = flags.DEFINE_list(
  "estimators",
  ["straight_through", "reinmax", "straight_through_gumbel"],
  "gradlab's estimators (straight_through and reinmax at least).",
)


def _gradlab_step(name, num_classes, num_latents, tau):
  vae = models.CategoricalVAE(num_latents=num_latents, num_classes=num_classes)
  sample_fn = discrete.make_estimator(name, temperature=tau)
  opt = optax.adam(5e-4)
  params = jax.jit(lambda k: vae.init(k, jnp.zeros((1, 784)), sample_fn, k))(jax.random.key(0))
  state = train.TrainState.create(params, opt, jax.random.key(1))
  step = train.make_train_step(
    lambda p, b, k: models.negative_elbo(vae, p, b["x"], sample_fn, k),
    opt,
    donate=True,
    norm_metrics=False,
  )
  return step, state


def _torch_step(num_classes, num_latents, tau, batch):
  import torch
  from reinmax import reinmax

  class VAE(torch.nn.Module):
    def __init__(self):
      super().__init__()
      self.enc = torch.nn.Sequential(
        torch.nn.Linear(784, 512),
        torch.nn.ReLU(),
        torch.nn.Linear(512, 256),
        torch.nn.ReLU(),
        torch.nn.Linear(256, num_latents * num_classes),
      )
      self.dec = torch.nn.Sequential(
        torch.nn.Linear(num_latents * num_classes, 256),
        torch.nn.ReLU(),
        torch.nn.Linear(256, 512),
        torch.nn.ReLU(),
        torch.nn.Linear(512, 784),
      )

    def forward(self, x):
      logits = self.enc(x).view(-1, num_latents, num_classes)
      sample, q = reinmax(logits, tau)
      x_logits = self.dec(sample.view(x.shape[0], -1))
      bce = torch.nn.functional.binary_cross_entropy_with_logits(x_logits, x, reduction="none").sum(
        -1
      )
      log_q = torch.log_softmax(logits, -1)
      kl = (log_q.exp() * log_q).sum((-2, -1)) + num_latents * math.log(num_classes)
      return (bce + kl).mean()

  torch.manual_seed(0)
  device = torch.device(_TORCH_DEVICE.value)
  model = VAE().to(device)
  opt = torch.optim.Adam(model.parameters(), lr=5e-4)
  x = torch.from_numpy(batch).to(device)

  def step():
    opt.zero_grad(set_to_none=True)
    loss = model(x)
    loss.backward()
    opt.step()
    return loss.item()  # synchronizes, as block_until_ready does for jax

  return step, f"{_TORCH_DEVICE.value} ({torch.get_num_threads()} CPU threads)"


def _batch():
  rng = np.random.default_rng(0)
  return (rng.random((_BATCH.value, 784)) > 0.87).astype(np.float32)  # MNIST-like sparsity


def _contender(which: str) -> dict:
  num_classes, num_latents = (int(v) for v in _CONFIG.value.split("x"))
  tau = 1.3
  batch = _batch()
  fns, boxes, threads = {}, {}, None
  if which == "jax":
    dev_batch = {"x": jax.device_put(batch)}
    for name in _ESTIMATORS.value:
      step, state = _gradlab_step(name, num_classes, num_latents, tau)
      boxes[name] = state

      def run(name=name, step=step):
        boxes[name], m = step(boxes[name], dev_batch)
        jax.block_until_ready(m["loss"])

      fns[f"gradlab {name}"] = run
  else:
    torch_step, threads = _torch_step(num_classes, num_latents, tau, batch)
    fns["torch reinmax (official)"] = torch_step
  t = timing.interleaved(fns, repeats=_REPEATS.value)
  return {"ms": {k: v * 1e3 for k, v in t.items()}, "threads": threads,
          "platform": jax.devices()[0].platform}  # fmt: skip


def _forwarded():
  return [
    f"--config={_CONFIG.value}",
    f"--batch_size={_BATCH.value}",
    f"--repeats={_REPEATS.value}",
    f"--torch_device={_TORCH_DEVICE.value}",
    f"--estimators={','.join(_ESTIMATORS.value)}",
  ]


def _figures(runs):
  """The title and rows of the table from the contenders' runs."""
  ms = timing.per_round(runs)
  rows = []
  for k, v in ms.items():
    st = timing.paired(v, ms["gradlab straight_through"])
    rm = timing.paired(v, ms["gradlab reinmax"])
    rows.append(
      {
        "step": k,
        "ms (median of rounds)": statistics.median(v),
        "vs gradlab ST": st["median"],
        "vs gradlab ReinMax (median of paired rounds)": rm["median"],
        "spread": rm["spread"],
      }
    )
  threads = runs["torch"][0]["threads"] if "torch" in runs else None
  title = (
    f"Categorical VAE train step, {_CONFIG.value} (CxL), batch {_BATCH.value}, Adam; "
    f"each framework in its own process, {_ROUNDS.value} alternating rounds; jax on "
    f"{runs['jax'][0]['platform']}" + (f", torch on {threads}" if threads else "")
  )
  return title, rows


def main(argv):
  del argv
  if _CONTENDER.value:
    print(json.dumps(_contender(_CONTENDER.value)))
    return
  names = ["jax", "torch"] if _TORCH.value else ["jax"]
  runs = timing.contender_processes(
    "benchmarks.reinmax_vae_step", names, rounds=_ROUNDS.value, args=_forwarded()
  )
  timing.report(*_figures(runs), _JSON.value)


QUICK = {
  "config": "2x2",
  "batch_size": "4",
  "repeats": "1",
  "rounds": "1",
  "estimators": "straight_through,reinmax",
}


def measure(quick: bool, device: str) -> list[timing.Row]:
  """``benchmarks.all``'s rows: ReinMax's step over ST's, and the official torch
  step over gradlab's ReinMax (torch on CUDA when ``device`` is gpu)."""
  values = dict(QUICK if quick else {"rounds": "2"})
  if device == "gpu":
    values["torch_device"] = "cuda"
  no_torch = timing.missing("torch", "reinmax")
  cmd = timing.command(__name__, values)
  with timing.flag_values(values):
    names = ["jax"] if no_torch else ["jax", "torch"]
    runs = timing.contenders(
      __name__, names, rounds=_ROUNDS.value, args=_forwarded(), local=_contender
    )
  ms = timing.per_round(runs)
  rm, st = ms["gradlab reinmax"], ms["gradlab straight_through"]
  jax_dev = f"jax {runs['jax'][0]['platform']}"
  r = timing.paired(rm, st)
  out = [timing.Row("gradlab ReinMax / ST step", r["median"], r["spread"], "<= 1.05", jax_dev, cmd)]
  name, goal = "torch reinmax (official) / gradlab ReinMax step", ">= 2"
  if no_torch:
    out.append(timing.Row(name, goal=goal, command=cmd, note=timing.skipped(no_torch)))
  else:
    r = timing.paired(ms["torch reinmax (official)"], rm)
    dev = f"{jax_dev}, torch {runs['torch'][0]['threads']}"
    out.append(timing.Row(name, r["median"], r["spread"], goal, dev, cmd))
  return out


if __name__ == "__main__":
  app.run(main)

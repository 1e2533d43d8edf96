"""Gradient transformations as optax chains, from the papers that defined them.

Every transform here is an ``optax.GradientTransformation`` (or
``...ExtraArgs``) with a ``NamedTuple`` state. Non-finite policy, shared by
all: a step whose incoming gradient holds a NaN or Inf is skipped (zero
update, state untouched); see ``gradlab.transforms.nonfinite``. Every
optimizer alias works under ``optax.inject_hyperparams`` (``adam_8bit`` with
``static_args=("block_size", "min_8bit_size")``, ``mfac`` with
``static_args=("num_grads",)``), ``optax.MultiSteps``,
``optax.apply_if_finite`` and inside ``optax.chain``.

* Spikes: ``spam`` / ``scale_by_spam`` (SPAM), ``spike_clip`` (ZClip).
* Layer-wise: ``per_layer_clip``, ``layerwise_normalize``,
  ``dp_per_layer_aggregate`` (per-example per-layer clipping + Gaussian noise).
* Adaptive: ``diffgrad`` / ``scale_by_diffgrad``; ``column_normalized_sgd``
  (SCALE), ``column_normalize``; ``agvm`` with ``half_batch_grads``;
  ``scale_by_torch_adam`` (Adam with PyTorch's epsilon placement).
* Quantized state: ``adam_8bit`` / ``scale_by_adam_8bit`` and the block-wise
  quantizer (``quantize_blockwise``, ``dequantize_blockwise``).
* Second order: ``mfac`` / ``scale_by_mfac`` (M-FAC's sliding-window inverse
  empirical Fisher), ``inverse_fisher_product``.
* Curvature: ``adahessian`` / ``scale_by_adahessian`` (Hutchinson's Hessian
  diagonal from the ``obj_fn`` extra argument that ``gradlab.train.make_update``
  passes, as ``optax.contrib.sophia`` takes it too).
* Spike skipping: ``skip_spikes`` (OLMo's skip-step rule around any optimizer,
  on the ``value`` extra argument and the gradient norm).
* Training dynamics: ``orthogonal_gradient`` (the perpendicular gradient of
  "Grokking at the Edge of Numerical Stability").
* Robust aggregation of per-example gradients: ``winsorized_mean``,
  ``median_of_means`` (suppressing weak gradient directions).
* Schedules: ``refined_schedule`` (learning-rate multipliers refined from a
  run's gradient norms, Defazio et al. 2023), ``refined_lr_schedule`` (as an
  optax schedule), ``scale_by_lr_table`` (a schedule held in the
  state), ``median_filter``.
* Variance reduction: ``storm``, ``mars`` / ``scale_by_mars``, ``svrg``, fed by
  a ``grad_fn`` extra argument (``extra_args_fn=grad_fn_extra_args`` in
  ``gradlab.train.make_train_step``).
* Differential privacy from gradient differences: ``diff2`` (DIFF2's
  clipped, noised difference estimator with periodic restarts; per-example
  gradients in, a ``per_example_grad_fn`` extra argument).
"""

from gradlab.transforms.adahessian import (
  ScaleByAdaHessianState,
  adahessian,
  scale_by_adahessian,
)
from gradlab.transforms.agvm import AGVMState, agvm, half_batch_grads
from gradlab.transforms.column_normalized import LAYOUTS, column_normalize, column_normalized_sgd
from gradlab.transforms.diff2 import Diff2State, diff2
from gradlab.transforms.diffgrad import (
  ScaleByDiffGradState,
  diffgrad,
  scale_by_diffgrad,
)
from gradlab.transforms.inverse_fisher import (
  ScaleByMFACState,
  inverse_fisher_product,
  mfac,
  scale_by_mfac,
)
from gradlab.transforms.layerwise import (
  DPAggregateState,
  dp_per_layer_aggregate,
  layer_budgets,
  layerwise_normalize,
  per_layer_clip,
)
from gradlab.transforms.nonfinite import guarded_chain, skip_nonfinite
from gradlab.transforms.orthogonal import orthogonal_gradient
from gradlab.transforms.quantized import (
  QuantizedArray,
  ScaleByAdam8bitState,
  adam_8bit,
  dequantize_blockwise,
  dynamic_code,
  nearest_by_search,
  nearest_code,
  quantize_blockwise,
  scale_by_adam_8bit,
  state_bytes,
)
from gradlab.transforms.robust import median_of_means, winsorized_mean
from gradlab.transforms.schedules import (
  ScaleByLRTableState,
  median_filter,
  median_filter_width,
  refined_lr_schedule,
  refined_schedule,
  scale_by_lr_table,
)
from gradlab.transforms.skip_step import SkipSpikesState, skip_spikes
from gradlab.transforms.spam import (
  ScaleBySpamState,
  scale_by_spam,
  spam,
)
from gradlab.transforms.spike_clip import SpikeClipState, spike_clip
from gradlab.transforms.torch_adam import TorchAdamState, scale_by_torch_adam
from gradlab.transforms.variance_reduced import (
  ScaleByMarsState,
  StormState,
  SVRGState,
  grad_fn_extra_args,
  mars,
  scale_by_mars,
  storm,
  svrg,
)

__all__ = [
  "AGVMState",
  "DPAggregateState",
  "Diff2State",
  "LAYOUTS",
  "QuantizedArray",
  "SVRGState",
  "ScaleByAdaHessianState",
  "ScaleByAdam8bitState",
  "ScaleByDiffGradState",
  "ScaleByLRTableState",
  "ScaleByMFACState",
  "ScaleByMarsState",
  "ScaleBySpamState",
  "SkipSpikesState",
  "SpikeClipState",
  "StormState",
  "TorchAdamState",
  "adahessian",
  "adam_8bit",
  "agvm",
  "column_normalize",
  "column_normalized_sgd",
  "dequantize_blockwise",
  "diff2",
  "diffgrad",
  "dp_per_layer_aggregate",
  "dynamic_code",
  "grad_fn_extra_args",
  "guarded_chain",
  "half_batch_grads",
  "inverse_fisher_product",
  "layer_budgets",
  "layerwise_normalize",
  "mars",
  "median_filter",
  "median_filter_width",
  "median_of_means",
  "mfac",
  "nearest_by_search",
  "nearest_code",
  "orthogonal_gradient",
  "per_layer_clip",
  "quantize_blockwise",
  "refined_lr_schedule",
  "refined_schedule",
  "scale_by_adahessian",
  "scale_by_adam_8bit",
  "scale_by_diffgrad",
  "scale_by_lr_table",
  "scale_by_mars",
  "scale_by_mfac",
  "scale_by_spam",
  "scale_by_torch_adam",
  "skip_nonfinite",
  "skip_spikes",
  "spam",
  "spike_clip",
  "state_bytes",
  "storm",
  "svrg",
  "winsorized_mean",
]

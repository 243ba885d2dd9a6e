"""Structured channel pruning with Torch-Pruning, to a target share of the MACs, and the pruned shapes' record."""

from __future__ import annotations

import copy
import logging
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from edgetl.errors import PruneError
from edgetl.progress import SILENT, Reporter


def count_macs_params(model: nn.Module, example: torch.Tensor) -> tuple[int, int]:
    """MACs and parameters for one `example` batch, by Torch-Pruning's counter."""
    import torch_pruning as tp

    was_training = model.training
    model.eval()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        macs, params = tp.utils.count_ops_and_params(model, example)
    model.train(was_training)
    return int(macs), int(params)


@dataclass(frozen=True)
class PrunePlan:
    """What to prune and how (see recipe `prune`)."""

    target_macs: float
    importance: str = "magnitude"  # magnitude | taylor
    scope: str = "uniform"  # uniform | global
    steps: int = 4
    round_to: int = 8
    max_layer_ratio: float = 0.8
    residual: str = "keep"  # keep | prune


def _importance(kind: str):
    import torch_pruning as tp

    return tp.importance.GroupTaylorImportance() if kind == "taylor" else tp.importance.GroupMagnitudeImportance(p=2)


def residual_layers(model: nn.Module, example: torch.Tensor) -> list[nn.Module]:
    """The layers whose output channels pass through a residual add (one coupled group per network stage).

    Those channels are read by every block of the stage: pruning them damages all the blocks at once, where the
    inner (expanded) channels of each block are private to it and are most of the MACs in inverted residuals.
    """
    import torch_pruning as tp

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        graph = tp.DependencyGraph().build_dependency(model, example_inputs=example)
    layers: list[nn.Module] = []
    for group in graph.get_all_groups(root_module_types=(nn.Conv2d, nn.Linear)):
        targets = [dep.target.module for dep, _ in group]
        if any(isinstance(t, tp.ops._ElementWiseOp) and "Add" in str(t._grad_fn) for t in targets):
            layers += [dep.target.module for dep, _ in group if graph.is_out_channel_pruning_fn(dep.handler)
                       and isinstance(dep.target.module, (nn.Conv2d, nn.Linear)) and dep.target.module not in layers]
    return layers


def _prune_copy(model: nn.Module, example: torch.Tensor, head: str, plan: PrunePlan, ratio: float) -> nn.Module:
    """A pruned copy of `model` (gradients carried over for Taylor scores) at channel ratio `ratio`."""
    import torch_pruning as tp

    pruned = copy.deepcopy(model)
    for source, target in zip(model.parameters(), pruned.parameters(), strict=True):
        if source.grad is not None:  # deepcopy drops .grad; Taylor importance reads it
            target.grad = source.grad.clone()
    ignored = [pruned.get_submodule(head)]
    if plan.residual == "keep":
        ignored += residual_layers(pruned, example)
    kwargs = {"global_pruning": plan.scope == "global", "pruning_ratio": ratio, "iterative_steps": 1,
              "ignored_layers": ignored, "round_to": plan.round_to,
              "max_pruning_ratio": plan.max_layer_ratio}
    logger = logging.getLogger("torch_pruning")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        previous = logger.level
        logger.setLevel(logging.ERROR)
        try:
            pruner = tp.pruner.MetaPruner(pruned, example, _importance(plan.importance), **kwargs)
            pruner.step()
        finally:
            logger.setLevel(previous)
    return pruned


RATIO_TOLERANCE = 0.004  # of the channel ratio
MACS_TOLERANCE = 0.005  # of the target: a copy this close below it is the step's result


def prune_step(model: nn.Module, example: torch.Tensor, head: str, plan: PrunePlan, target: int) -> nn.Module:
    """The least-pruned copy of `model` whose MACs are at most `target`: a search over the channel ratio, whose MACs
    fall as it grows. Each guess interpolates the square roots of the MACs at the bracket's ends (kept inside its
    middle 80 %, so the bracket always shrinks); the search stops when a copy lands within `MACS_TOLERANCE` below
    `target` or the bracket is `RATIO_TOLERANCE` wide. (Plain bisection to that width took 9 pruned copies a step;
    this takes 3-5.)"""
    low, high = 0.0, plan.max_layer_ratio
    macs_low = count_macs_params(model, example)[0]  # ratio 0 is the model itself
    best, macs_high = None, macs_low * (1 - high) ** 2  # the MACs at the largest ratio, estimated until measured
    while high - low > RATIO_TOLERANCE and (best is None or macs_high < (1 - MACS_TOLERANCE) * target):
        # a conv's MACs fall with the square of its kept channels: interpolate the square roots
        share = ((macs_low ** 0.5 - target ** 0.5) / (macs_low ** 0.5 - macs_high ** 0.5) if macs_low > macs_high
                 else 0.5)
        middle = low + min(max(share, 0.1), 0.9) * (high - low)
        candidate = _prune_copy(model, example, head, plan, middle)
        macs = count_macs_params(candidate, example)[0]
        if macs <= target:
            high, best, macs_high = middle, candidate, macs
        else:
            low, macs_low = middle, macs
    if best is None:  # every guess kept too much: the largest ratio, if even that is enough
        best = _prune_copy(model, example, head, plan, plan.max_layer_ratio)
        if (macs := count_macs_params(best, example)[0]) > target:
            raise PruneError(f"cannot reach {target:,} MACs: removing {plan.max_layer_ratio:.0%} of every prunable "
                             f"layer's channels leaves {macs:,}. Raise prune.target_macs or prune.max_layer_ratio.")
    return best


def recalibrate_batchnorm(model: nn.Module, inputs: torch.Tensor, batch_size: int = 32) -> None:
    """Re-estimate every BatchNorm's running statistics on `inputs` (a plain average over the batches).

    Removing channels shifts the statistics of the layers after them; stale running means and variances alone
    can take a pruned MobileNetV2 to chance accuracy, and fresh ones bring much of it back before any training.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    momenta = [m.momentum for m in norms]
    was_training = model.training
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # cumulative moving average over the batches below
    model.train()
    with torch.no_grad():
        for start in range(0, len(inputs), batch_size):
            model(inputs[start:start + batch_size])
    for norm, momentum in zip(norms, momenta, strict=True):
        norm.momentum = momentum
    model.train(was_training)


def prune_to_macs(model: nn.Module, example: torch.Tensor, head: str, plan: PrunePlan,
                  gradients: Callable[[nn.Module], None] | None = None,
                  between_steps: Callable[[nn.Module, int], None] | None = None,
                  reporter: Reporter = SILENT, calibration: torch.Tensor | None = None) -> nn.Module:
    """Prune `model` in `plan.steps` steps down to `plan.target_macs` of its MACs; the head's outputs stay intact.

    `gradients(model)` fills .grad before each step (Taylor importance); after each step the BatchNorm statistics
    are re-estimated on `calibration` (when given) and `between_steps(model, step)` may fine-tune.
    """
    start = count_macs_params(model, example)[0]
    current = model
    with reporter.task(f"pruning to {plan.target_macs:.0%} of the MACs in {plan.steps} steps", plan.steps) as update:
        for step in range(1, plan.steps + 1):
            if plan.importance == "taylor":
                if gradients is None:
                    raise PruneError("Taylor importance needs gradients: no training data was given")
                current.zero_grad(set_to_none=True)
                gradients(current)
            target = int(start * (1 - (1 - plan.target_macs) * step / plan.steps))
            current = prune_step(current, example, head, plan, target)
            current.zero_grad(set_to_none=True)
            if calibration is not None:
                recalibrate_batchnorm(current, calibration)
            macs = count_macs_params(current, example)[0]
            reporter.info(f"  pruning step {step}/{plan.steps}: {macs / start:.1%} of the MACs left")
            if between_steps is not None and step < plan.steps:
                between_steps(current, step)
            update(1)
    return current


def structure_of(model: nn.Module) -> dict[str, dict[str, int]]:
    """The channel counts of every conv, norm and linear layer (plain ints: loadable with weights_only)."""
    structure: dict[str, dict[str, int]] = {}
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            structure[name] = {"in": module.in_channels, "out": module.out_channels, "groups": module.groups}
        elif isinstance(module, nn.modules.batchnorm._BatchNorm):
            structure[name] = {"features": module.num_features}
        elif isinstance(module, nn.Linear):
            structure[name] = {"in": module.in_features, "out": module.out_features}
    return structure


def apply_structure(model: nn.Module, structure: dict[str, dict[str, int]]) -> nn.Module:
    """Reshape a freshly built model's layers to a pruned `structure`, ready for `load_state_dict`."""
    for name, shape in structure.items():
        module = model.get_submodule(name)
        if isinstance(module, nn.Conv2d):
            module.in_channels, module.out_channels, module.groups = shape["in"], shape["out"], shape["groups"]
            module.weight = nn.Parameter(torch.empty(shape["out"], shape["in"] // shape["groups"], *module.kernel_size))
            if module.bias is not None:
                module.bias = nn.Parameter(torch.empty(shape["out"]))
        elif isinstance(module, nn.modules.batchnorm._BatchNorm):
            n = shape["features"]
            module.num_features = n
            if module.affine:
                module.weight, module.bias = nn.Parameter(torch.empty(n)), nn.Parameter(torch.empty(n))
            if module.track_running_stats:
                module.running_mean, module.running_var = torch.zeros(n), torch.ones(n)
        elif isinstance(module, nn.Linear):
            module.in_features, module.out_features = shape["in"], shape["out"]
            module.weight = nn.Parameter(torch.empty(shape["out"], shape["in"]))
            if module.bias is not None:
                module.bias = nn.Parameter(torch.empty(shape["out"]))
    return model

"""RDumb entropy minimisation on BatchNorm affine parameters (spec §2 and §3).

The source model is never touched: `prepare_adaptation_copy` deep-copies it. In the copy every BN
layer normalises with the statistics of the current batch, in train and in eval mode alike.
"""

from __future__ import annotations

import copy
import io
from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from flipwatch.workers.estimation.config import entropy_threshold

BATCHNORM_TYPE_NAMES = frozenset({"BatchNorm2d"})


def is_batchnorm(module: nn.Module) -> bool:
    """A BatchNorm2d, also inside TorchScript, whose submodules keep only their type's name."""
    if isinstance(module, nn.BatchNorm2d):
        return True
    return getattr(module, "original_name", None) in BATCHNORM_TYPE_NAMES


def batchnorm_layers(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if is_batchnorm(m)]


def is_scripted(model: nn.Module) -> bool:
    return isinstance(model, torch.jit.ScriptModule)


def prepare_adaptation_copy(model: nn.Module) -> nn.Module:
    """Deep copy whose only trainable scalars are the BN weights and biases (spec §2).

    Eager BN layers lose their running statistics (`track_running_stats=False`, buffers None), as
    in the reference. TorchScript bakes `track_running_stats` in as a constant, so there the BN
    layers stay in train mode instead (see `set_mode`): they normalise with batch statistics too
    and only update running buffers nobody reads.
    """
    layers = batchnorm_layers(model)
    if not layers:
        raise ValueError(
            "the model has no BatchNorm2d layer, so Weighted Flips has nothing to adapt"
        )
    adapted = copy_model(model)
    for parameter in adapted.parameters():
        parameter.requires_grad_(False)
    for layer in batchnorm_layers(adapted):
        if layer.weight is None or layer.bias is None:
            raise ValueError("a BatchNorm2d layer has no affine weight/bias (affine=False)")
        layer.weight.requires_grad_(True)
        layer.bias.requires_grad_(True)
        if isinstance(layer, nn.BatchNorm2d):
            layer.track_running_stats = False
            layer.running_mean = None
            layer.running_var = None
    set_mode(adapted, train=True)
    return adapted


def copy_model(model: nn.Module) -> nn.Module:
    """An independent copy; TorchScript modules round-trip through serialisation, because their
    deep copies share autograd history with the source."""
    if not is_scripted(model):
        return copy.deepcopy(model)
    buffer = io.BytesIO()
    torch.jit.save(model, buffer)
    buffer.seek(0)
    device = next(model.parameters()).device
    return torch.jit.load(buffer, map_location=device)


def set_mode(adapted: nn.Module, *, train: bool) -> None:
    """Train mode for steps, eval mode for probe snapshots; BN always on batch statistics."""
    adapted.train(train)
    if is_scripted(adapted):
        for layer in batchnorm_layers(adapted):
            layer.train(True)


def logits_of(output: object) -> Tensor:
    """The class logits in what a classifier's forward returned.

    Adaptation runs the copy in train mode, as the reference does, and there some classifiers
    return more than logits: torchvision's GoogLeNet and Inception v3 return named tuples with
    auxiliary heads' logits beside the main ones, others a `(logits, features)` tuple or a dict.
    Rule: a tensor is the logits; else a `logits` attribute or key; else the first element of
    a tuple or list (the main output by convention). TypeError when none of these is a tensor.
    A single logit per image, (N, 1), is a binary classifier's sigmoid logit z (trained with
    BCEWithLogitsLoss): it becomes the two-class logits (−z/2, z/2), whose softmax is
    (1 − σ(z), σ(z)), so such a model is specified with num_classes 2.
    """
    if isinstance(output, Tensor):
        return _binary(output)
    found = getattr(output, "logits", None)
    if found is None and isinstance(output, Mapping):
        found = output.get("logits")
    if found is None and isinstance(output, (tuple, list)) and output:
        found = output[0]
    if not isinstance(found, Tensor):
        raise TypeError(
            f"the model returned a {type(output).__name__}, not logits: return a tensor, or a "
            "tuple whose first element, or an object or dict whose 'logits', is the logits"
        )
    return _binary(found)


def is_sigmoid_logit(output: object) -> bool:
    """An (N, 1) tensor: one sigmoid logit per image (see `logits_of`)."""
    return isinstance(output, Tensor) and output.ndim == 2 and output.shape[1] == 1


def _binary(logits: Tensor) -> Tensor:
    if not is_sigmoid_logit(logits):
        return logits
    half = logits / 2
    return torch.cat([-half, half], dim=1)


def bn_affine_parameters(model: nn.Module) -> list[nn.Parameter]:
    params: list[nn.Parameter] = []
    for layer in batchnorm_layers(model):
        params.extend([layer.weight, layer.bias])
    return params


def entropy(logits: Tensor) -> Tensor:
    """Shannon entropy in nats of softmax(logits), (N, C) -> (N,), via log_softmax (no log 0)."""
    log_p = F.log_softmax(logits, dim=1)
    return -(log_p.exp() * log_p).sum(1)


@dataclass(frozen=True)
class StepStats:
    """What one step used: reliable (H < E0) and selected (also non-redundant) sample counts."""

    reliable: int
    selected: int
    batch: int


class RDumb:
    """ETA (EATA without Fisher) with a full reset every `reset_interval` steps (spec §3)."""

    def __init__(
        self,
        adapted: nn.Module,
        *,
        num_classes: int,
        lr: float = 2.5e-4,
        momentum: float = 0.9,
        entropy_factor: float = 0.4,
        epsilon: float = 0.05,
        ema: float = 0.9,
        reset_interval: int = 1000,
    ) -> None:
        self.model = adapted
        self.params = bn_affine_parameters(adapted)
        self.optimizer = torch.optim.SGD(self.params, lr=lr, momentum=momentum)
        self.e0 = entropy_threshold(num_classes, entropy_factor)
        self.epsilon = epsilon
        self.ema = ema
        self.reset_interval = reset_interval
        self.theta0 = [p.detach().clone() for p in self.params]
        self.optimizer_state0 = copy.deepcopy(self.optimizer.state_dict())
        self.mean_probs: Tensor | None = None
        self.k = 0

    def reset(self) -> None:
        """Restore θ0 bit-exactly, clear the momentum buffers and the EMA."""
        with torch.no_grad():
            for p, p0 in zip(self.params, self.theta0, strict=True):
                p.copy_(p0)
        self.optimizer.load_state_dict(copy.deepcopy(self.optimizer_state0))
        self.mean_probs = None

    def step(self, x: Tensor) -> StepStats:
        """One RDumb step on a normalised batch (B, C, H, W), in the reference's order."""
        if self.k % self.reset_interval == 0:
            self.reset()
        set_mode(self.model, train=True)
        logits = logits_of(self.model(x))
        h = entropy(logits)
        reliable = torch.nonzero(h < self.e0).flatten()
        probs = F.softmax(logits[reliable], dim=1).detach()
        if self.mean_probs is not None:
            cos = F.cosine_similarity(self.mean_probs.unsqueeze(0), probs, dim=1)
            keep = torch.nonzero(cos.abs() < self.epsilon).flatten()
            h_selected = h[reliable][keep]
            new_mean = self.mean_probs
            if keep.numel() > 0:
                new_mean = self.ema * self.mean_probs + (1 - self.ema) * probs[keep].mean(0)
        else:
            h_selected = h[reliable]
            new_mean = probs.mean(0) if reliable.numel() > 0 else None
        if h_selected.numel() > 0:
            weights = torch.exp(self.e0 - h_selected.detach())
            loss = (weights * h_selected).mean()
            loss.backward()
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.mean_probs = new_mean
        self.k += 1
        return StepStats(reliable=reliable.numel(), selected=h_selected.numel(), batch=len(x))

"""Build a classifier from a ModelSpec, with errors that say what to fix."""

from __future__ import annotations

import importlib
import pickle
from collections.abc import Callable, Mapping
from pathlib import Path

import torch
import torchvision
from torch import nn

from flipwatch.workers.estimation import zoo
from flipwatch.workers.estimation.adapt import (
    batchnorm_layers,
    is_sigmoid_logit,
    logits_of,
    prepare_adaptation_copy,
    set_mode,
)
from flipwatch.workers.estimation.spec import ModelSpec


class ModelLoadError(ValueError):
    """The model described by a spec cannot be used; the message names the cause."""


Builder = Callable[..., nn.Module]


def resolve_builders(paths: Mapping[str, str]) -> dict[str, Builder]:
    """Operator-enabled builders, name -> `module:function`, imported once at process start.

    Only the operator's configuration reaches `importlib` here; a spec from a request can only name
    a builder that is already registered.
    """
    builders: dict[str, Builder] = {}
    for name, path in paths.items():
        module_name, _, function_name = path.partition(":")
        try:
            build = getattr(importlib.import_module(module_name), function_name, None)
        except ImportError as exc:
            raise ModelLoadError(
                f"model builder {name!r}: cannot import {module_name!r}: {exc}"
            ) from exc
        if not callable(build):
            raise ModelLoadError(f"model builder {name!r}: {path!r} is not a function")
        builders[name] = build
    return builders


def load_model(spec: ModelSpec, builders: Mapping[str, Builder] | None = None) -> nn.Module:
    """The spec's classifier on the CPU in eval mode, checked to be usable by Weighted Flips.

    `entrypoint` specs name a builder of the zoo or of `builders` (from `resolve_builders`).
    Checks: weights exist and load (`weights_only=True`), the output has `num_classes` logits, and
    at least one BatchNorm2d layer exists (WF adapts only those).
    """
    if spec.format == "torchvision":
        model = _load_torchvision(spec)
    elif spec.format == "torchscript":
        model = _load_torchscript(spec)
    else:
        model = _load_entrypoint(spec, {**zoo.ZOO, **(builders or {})})
    model.eval()
    if not batchnorm_layers(model):
        raise ModelLoadError(
            f"model {spec.name!r} has no BatchNorm2d layer: Weighted Flips adapts only BatchNorm "
            "affine parameters, so it cannot estimate this model's accuracy"
        )
    _check_finite_weights(model, spec)
    _check_output(model, spec)
    adapted = _check_adaptation_output(model, spec)
    if spec.format == "torchscript" and not _adapts_with_batch_statistics(adapted, spec):
        raise ModelLoadError(
            f"model {spec.name!r}: its BatchNorm layers ignore batch statistics after adaptation "
            "is prepared, as in a module traced in eval mode (torch.jit.trace bakes the mode in); "
            "export it with torch.jit.script, or register the state dict (format torchvision or "
            "entrypoint)"
        )
    return model


def _weights_file(spec: ModelSpec) -> Path:
    path = spec.weights_path()
    if path is None:
        raise ModelLoadError(f"model {spec.name!r}: 'weights' is required for format {spec.format}")
    if not path.is_file():
        raise ModelLoadError(f"model {spec.name!r}: weights file {path} does not exist")
    return path


def _load_state_dict(spec: ModelSpec, model: nn.Module) -> nn.Module:
    if spec.weights is None:
        return model
    path = _weights_file(spec)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise ModelLoadError(
            f"model {spec.name!r}: {path} is not a plain state dict loadable with "
            f"weights_only=True (save it with torch.save(model.state_dict(), path)): {exc}"
        ) from exc
    except (RuntimeError, OSError, EOFError) as exc:
        raise ModelLoadError(f"model {spec.name!r}: cannot read weights {path}: {exc}") from exc
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ModelLoadError(
            f"model {spec.name!r}: {path} holds a {type(state).__name__}, not a state dict"
        )
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ModelLoadError(
            f"model {spec.name!r}: weights {path.name} do not match the architecture "
            f"(wrong arch or num_classes?): {_first_lines(str(exc))}"
        ) from exc
    return model


def _load_torchvision(spec: ModelSpec) -> nn.Module:
    assert spec.arch is not None
    known = set(torchvision.models.list_models(module=torchvision.models))
    if spec.arch not in known:
        raise ModelLoadError(
            f"model {spec.name!r}: unknown torchvision arch {spec.arch!r} "
            f"(e.g. resnet18, resnet50, mobilenet_v3_small; see torchvision.models.list_models())"
        )
    model = torchvision.models.get_model(spec.arch, weights=None, num_classes=spec.num_classes)
    return _load_state_dict(spec, model)


def _load_torchscript(spec: ModelSpec) -> nn.Module:
    path = _weights_file(spec)
    try:
        return torch.jit.load(str(path), map_location="cpu")
    except (RuntimeError, ValueError) as exc:
        raise ModelLoadError(
            f"model {spec.name!r}: {path} is not a TorchScript module: {_first_lines(str(exc))}"
        ) from exc


def _load_entrypoint(spec: ModelSpec, builders: Mapping[str, Builder]) -> nn.Module:
    assert spec.entrypoint is not None
    build = builders.get(spec.entrypoint)
    if build is None:
        raise ModelLoadError(
            f"model {spec.name!r}: entrypoint {spec.entrypoint!r} is not a registered builder "
            f"(known: {', '.join(sorted(builders))}); an operator enables more with "
            "FLIPWATCH_MODEL_BUILDERS"
        )
    kwargs = {"num_classes": spec.num_classes, **spec.entrypoint_kwargs}
    try:
        model = build(**kwargs)
    except TypeError as exc:
        raise ModelLoadError(
            f"model {spec.name!r}: {spec.entrypoint}(**{kwargs}) failed: {exc}"
        ) from exc
    if not isinstance(model, nn.Module):
        raise ModelLoadError(f"model {spec.name!r}: {spec.entrypoint} did not return an nn.Module")
    return _load_state_dict(spec, model)


def _check_finite_weights(model: nn.Module, spec: ModelSpec) -> None:
    """Weights saved from a diverged run hold NaN or inf; say which tensor, not a later error."""
    for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            bad = int((~torch.isfinite(tensor)).sum())
            raise ModelLoadError(
                f"model {spec.name!r}: {name} holds {bad} NaN or inf values of "
                f"{tensor.numel()} (weights from a diverged training run?)"
            )


def _check_output(model: nn.Module, spec: ModelSpec) -> None:
    height, width = spec.input.size
    x = torch.zeros(2, spec.input.channels, height, width)
    try:
        with torch.no_grad():
            raw = model(x)
    except Exception as exc:  # noqa: BLE001 - any failure here means the spec does not fit
        raise ModelLoadError(
            f"model {spec.name!r} fails on a {tuple(x.shape)} input (check input.color and "
            f"input.size): {_first_lines(str(exc))}"
        ) from exc
    try:
        out = logits_of(raw)
    except TypeError as exc:
        raise ModelLoadError(f"model {spec.name!r}: {exc}") from exc
    if out.ndim != 2:
        raise ModelLoadError(f"model {spec.name!r} must return (N, num_classes) logits")
    if not torch.isfinite(out).all():
        raise ModelLoadError(f"model {spec.name!r} returns NaN or inf logits on a zeros input")
    if out.shape[1] != spec.num_classes:
        returned = f"{out.shape[1]} logits"
        if is_sigmoid_logit(raw):
            returned = "one logit (a binary sigmoid classifier: num_classes 2)"
        raise ModelLoadError(
            f"model {spec.name!r} returns {returned} but the spec says num_classes "
            f"{spec.num_classes}"
        )


def _check_adaptation_output(model: nn.Module, spec: ModelSpec) -> nn.Module:
    """The adaptation copy, checked to give logits in train mode, where adaptation runs it.

    Train mode can take another path than eval mode: torchvision's Inception v3 and GoogLeNet
    run auxiliary heads there, which need larger inputs than the main one and return named
    tuples. A model that fails only there would pass registration and fail every estimate.
    """
    try:
        adapted = prepare_adaptation_copy(model)
    except ValueError as exc:  # e.g. BatchNorm without affine parameters: nothing to adapt
        raise ModelLoadError(f"model {spec.name!r}: {exc}") from exc
    set_mode(adapted, train=True)
    height, width = spec.input.size
    x = torch.rand(
        4, spec.input.channels, height, width, generator=torch.Generator().manual_seed(0)
    )
    try:
        with torch.no_grad():
            out = logits_of(adapted(x))
    except Exception as exc:  # noqa: BLE001 - any failure here means adaptation cannot run it
        raise ModelLoadError(
            f"model {spec.name!r} fails in train mode, which adaptation runs it in, on a "
            f"{tuple(x.shape)} input (auxiliary heads may need a larger input.size): "
            f"{_first_lines(str(exc))}"
        ) from exc
    if out.shape != (len(x), spec.num_classes):
        raise ModelLoadError(
            f"model {spec.name!r} returns logits of shape {tuple(out.shape)} in train mode, "
            f"not ({len(x)}, {spec.num_classes})"
        )
    return adapted


def _adapts_with_batch_statistics(adapted: nn.Module, spec: ModelSpec) -> bool:
    """Whether the adaptation copy normalises with batch statistics, as WF needs: then one
    image's output depends on the other images in its batch."""
    set_mode(adapted, train=False)
    height, width = spec.input.size
    generator = torch.Generator().manual_seed(0)
    x = torch.rand(4, spec.input.channels, height, width, generator=generator)
    other = x.clone()
    other[1:] = torch.rand(3, spec.input.channels, height, width, generator=generator)
    with torch.no_grad():
        return not torch.allclose(logits_of(adapted(x))[0], logits_of(adapted(other))[0])


def _first_lines(text: str, n: int = 3) -> str:
    return " ".join(text.strip().splitlines()[:n])

"""The fast path computes the reference RDumb (spec §3) and the same trajectories as the plain
path: grouped BN, masked on-device steps, per-device plans, compile fallback."""

from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from flipwatch.workers.estimation import fastpath
from flipwatch.workers.estimation.adapt import RDumb, bn_affine_parameters, prepare_adaptation_copy
from flipwatch.workers.estimation.config import EstimateConfig
from flipwatch.workers.estimation.fastpath import (
    FastPlan,
    GroupedRDumb,
    fast_path_blocker,
    grouped_copy,
    normalize_fast,
    run_trajectories,
)
from flipwatch.workers.estimation.images import normalize
from flipwatch.workers.estimation.trajectory import run_trajectory
from tests.tiny_models import ViewFlattenNet, blob_images, confident_tiny

CPU = torch.device("cpu")
SMALL = EstimateConfig(steps=12, checkpoints=(0, 6, 12), probe_size=200, epsilon=1.0)
PLAIN = replace(SMALL, fast=False)
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _plan(device: torch.device, *, channels_last: bool = True) -> FastPlan:
    if device.type == "cuda":
        return replace(fastpath.cuda_plan(device, compile=False), bf16=False)
    return FastPlan(CPU, channels_last=channels_last)


class TestGroupedBatchNorm:
    def test_each_group_is_normalised_like_its_own_batchnorm(self):
        bn = nn.BatchNorm2d(4)
        with torch.no_grad():
            bn.weight.copy_(torch.tensor([1.0, 2.0, 0.5, -1.0]))
            bn.bias.copy_(torch.tensor([0.0, 1.0, -1.0, 2.0]))
        model, state = grouped_copy(nn.Sequential(bn), groups=3)
        with torch.no_grad():
            state.flat[1].mul_(2.0)
        x = torch.randn(3 * 5, 4, 6, 6, generator=torch.Generator().manual_seed(0))
        out = model(x)
        for v, part in enumerate(x.chunk(3)):
            w, b = state.flat[v, :4], state.flat[v, 4:]
            expected = F.batch_norm(part, None, None, w, b, True, 0.0, bn.eps)
            torch.testing.assert_close(out[5 * v : 5 * v + 5], expected, rtol=0, atol=0)

    def test_gradients_reach_only_their_own_group(self):
        model, state = grouped_copy(nn.Sequential(nn.BatchNorm2d(3)), groups=2)
        x = torch.randn(8, 3, 4, 4, generator=torch.Generator().manual_seed(1))
        (grad,) = torch.autograd.grad(model(x)[:4].square().sum(), state.flat)
        assert grad[0].abs().sum() > 0
        assert torch.equal(grad[1], torch.zeros_like(grad[1]))

    def test_flat_layout_follows_the_plain_paths_parameter_order(self, tiny_model):
        _, state = grouped_copy(tiny_model, groups=1)
        plain = torch.cat([p.detach().flatten() for p in bn_affine_parameters(tiny_model)])
        assert torch.equal(state.theta0, plain)

    def test_source_model_is_left_untouched(self, tiny_model):
        before = {k: v.clone() for k, v in tiny_model.state_dict().items()}
        grouped_copy(tiny_model, groups=2)
        assert all(torch.equal(before[k], v) for k, v in tiny_model.state_dict().items())
        assert all(type(m) is not fastpath.GroupedBatchNorm2d for m in tiny_model.modules())


class TestGroupedRDumbStep:
    @pytest.mark.parametrize("epsilon", [1.0, 0.5])
    def test_matches_the_reference_rdumb_step_by_step(
        self, tiny_model, tiny_spec, tiny_images, epsilon
    ):
        """Parameters, EMA and selection counts track adapt.RDumb through 8 steps (ε = 0.5 makes
        the redundancy filter drop some samples after the first step)."""
        config = EstimateConfig(epsilon=epsilon)
        reference = RDumb(prepare_adaptation_copy(tiny_model), num_classes=10, epsilon=epsilon)
        fast = GroupedRDumb(tiny_model, 1, plan=_plan(CPU), num_classes=10, config=config)
        selected = 0
        for k in range(8):
            images = tiny_images[(k % 4) * 64 : (k % 4) * 64 + 64]
            selected += reference.step(normalize(images, tiny_spec.input)).selected
            fast.step(fast.normalize(images, tiny_spec.input))
            plain = torch.cat([p.detach().flatten() for p in reference.params])
            torch.testing.assert_close(fast.state.flat[0], plain, rtol=1e-5, atol=1e-6)
            assert reference.mean_probs is not None
            torch.testing.assert_close(fast.mean_probs[0], reference.mean_probs, atol=1e-5, rtol=0)
        assert selected > 0
        assert int(fast.selected_total[0]) == selected

    def test_a_step_with_no_survivors_changes_nothing_but_the_count(
        self, tiny_model, tiny_spec, tiny_images
    ):
        """Uniform logits have entropy ln C > E0: nothing passes, nothing moves (spec §11)."""
        flat_head = confident_tiny()
        with torch.no_grad():
            flat_head.fc.weight.zero_()
            flat_head.fc.bias.zero_()
        fast = GroupedRDumb(flat_head, 2, plan=_plan(CPU), num_classes=10, config=SMALL)
        before = fast.state.flat.detach().clone()
        fast.step(fast.normalize(tiny_images[:128], tiny_spec.input))
        assert torch.equal(fast.state.flat.detach(), before)
        assert torch.equal(fast.buf, torch.zeros_like(fast.buf))
        assert not bool(fast.has_mean.any())
        assert fast.k == 1

    def test_reset_interval_restores_theta0_bit_exactly(self, tiny_model, tiny_spec, tiny_images):
        config = replace(SMALL, reset_interval=3)
        fast = GroupedRDumb(tiny_model, 1, plan=_plan(CPU), num_classes=10, config=config)
        x = fast.normalize(tiny_images[:64], tiny_spec.input)
        for _ in range(3):
            fast.step(x)
        assert not torch.equal(fast.state.flat.detach()[0], fast.state.theta0)
        fast.reset()
        assert torch.equal(fast.state.flat.detach()[0], fast.state.theta0)
        assert not bool(fast.has_mean.any())

    def test_a_failing_compiled_step_falls_back_to_eager_with_the_same_result(
        self, tiny_model, tiny_spec, tiny_images
    ):
        eager = GroupedRDumb(tiny_model, 1, plan=_plan(CPU), num_classes=10, config=SMALL)
        broken = GroupedRDumb(tiny_model, 1, plan=_plan(CPU), num_classes=10, config=SMALL)

        def compiled_that_fails(x: torch.Tensor) -> torch.Tensor:
            raise RuntimeError("inductor: no C++ compiler")

        broken._forward, broken._compiled = compiled_that_fails, True
        x = eager.normalize(tiny_images[:64], tiny_spec.input)
        eager.step(x)
        broken.step(x)
        assert not broken._compiled
        assert torch.equal(broken.state.flat.detach(), eager.state.flat.detach())


class TestRunTrajectories:
    def test_fast_and_plain_paths_give_the_same_signals(
        self, tiny_model, tiny_spec, tiny_images, device
    ):
        plain = run_trajectory(tiny_model, tiny_images, spec=tiny_spec, config=PLAIN, device=device)
        (fast,) = run_trajectories(
            tiny_model,
            [tiny_images],
            spec=tiny_spec,
            config=SMALL,
            device=device,
            plan=_plan(device),
        )
        assert plain.path == "plain" and fast.path.endswith("fp32")
        for name, by_step in plain.signals.items():
            for step, value in by_step.items():
                assert fast.signals[name][step] == pytest.approx(value, abs=1.0)
        torch.testing.assert_close(
            fast.adapted[12].probs, plain.adapted[12].probs, atol=1e-4, rtol=0
        )
        torch.testing.assert_close(fast.source.probs, plain.source.probs, atol=1e-5, rtol=0)
        assert fast.used_fraction == pytest.approx(plain.used_fraction, abs=1e-6)

    def test_a_group_of_windows_equals_running_them_one_by_one(self, tiny_model, tiny_spec, device):
        windows = [blob_images(300, seed=s) for s in range(3)]
        plan = _plan(device)
        grouped = run_trajectories(
            tiny_model, windows, spec=tiny_spec, config=SMALL, device=device, plan=plan
        )
        for window, together in zip(windows, grouped, strict=True):
            (alone,) = run_trajectories(
                tiny_model, [window], spec=tiny_spec, config=SMALL, device=device, plan=plan
            )
            torch.testing.assert_close(
                together.adapted[12].probs, alone.adapted[12].probs, atol=1e-4, rtol=0
            )
            assert together.signals["uf_source"] == pytest.approx(
                alone.signals["uf_source"], abs=1.0
            )

    def test_records_features_at_the_source_and_the_last_checkpoint(
        self, tiny_model, tiny_spec, tiny_images
    ):
        (t,) = run_trajectories(
            tiny_model, [tiny_images], spec=tiny_spec, config=SMALL, device=CPU, features=True
        )
        assert t.source.features is not None and t.source.features.shape == (200, 16)
        assert t.adapted[12].features is not None and t.adapted[0].features is None
        assert torch.isfinite(t.adapted[12].features).all()

    def test_windows_of_unequal_size_are_refused(self, tiny_model, tiny_spec):
        with pytest.raises(ValueError, match="equal size"):
            run_trajectories(
                tiny_model,
                [blob_images(100), blob_images(120)],
                spec=tiny_spec,
                config=SMALL,
                device=CPU,
            )

    def test_too_few_images_are_refused_with_the_minimum(self, tiny_model, tiny_spec):
        with pytest.raises(ValueError, match="at least 64"):
            run_trajectories(
                tiny_model, [blob_images(40)], spec=tiny_spec, config=SMALL, device=CPU
            )

    def test_run_trajectory_takes_the_fast_path_by_default_and_plain_on_request(
        self, tiny_model, tiny_spec, tiny_images
    ):
        fast = run_trajectory(tiny_model, tiny_images, spec=tiny_spec, config=SMALL, device=CPU)
        plain = run_trajectory(tiny_model, tiny_images, spec=tiny_spec, config=PLAIN, device=CPU)
        assert fast.path.startswith("cpu ") and plain.path == "plain"

    def test_torchscript_models_run_the_plain_path(self, tiny_model, tiny_spec, tiny_images):
        scripted = torch.jit.script(tiny_model)
        t = run_trajectory(scripted, tiny_images, spec=tiny_spec, config=SMALL, device=CPU)
        assert t.path == "plain"


class TestBlockers:
    def test_plain_batchnorm_models_are_supported(self, tiny_model):
        assert fast_path_blocker(tiny_model) is None

    def test_batchnorm_subclasses_are_not_regrouped(self):
        class BatchNormReLU(nn.BatchNorm2d):
            def forward(self, x: torch.Tensor) -> torch.Tensor:
                return torch.relu(super().forward(x))

        model = nn.Sequential(nn.Conv2d(3, 4, 3), BatchNormReLU(4))
        assert "BatchNormReLU" in (fast_path_blocker(model) or "")

    def test_torchscript_is_not_regrouped(self, tiny_model):
        assert "TorchScript" in (fast_path_blocker(torch.jit.script(tiny_model)) or "")


class TestPlans:
    def test_cpu_candidates_include_bf16_only_with_native_support(self):
        candidates = fastpath.cpu_candidates(threads=2)
        assert any(p.bf16 for p in candidates) == fastpath.cpu_supports_bf16()
        assert {p.threads for p in candidates} == {None, 1}

    def test_cpu_plan_is_a_fixed_rule_so_estimates_do_not_depend_on_load(
        self, tiny_model, tiny_spec
    ):
        plan = fastpath.choose_plan(tiny_model, tiny_spec, CPU, batch_size=64)
        bf16 = fastpath.cpu_supports_bf16()
        assert plan == fastpath.FastPlan(CPU, channels_last=True, bf16=bf16)

    def test_a_model_that_flattens_with_view_runs_contiguous(self, tiny_spec, tiny_images):
        model = ViewFlattenNet().eval()
        assert not fastpath.runs_channels_last(model, tiny_spec.input)
        assert fastpath.runs_channels_last(confident_tiny(), tiny_spec.input)
        plan = fastpath.choose_plan(model, tiny_spec, CPU, batch_size=64)
        bf16 = fastpath.cpu_supports_bf16()
        assert plan == fastpath.FastPlan(CPU, channels_last=False, bf16=bf16)
        config = EstimateConfig(steps=12, checkpoints=(0, 6, 12), probe_size=200, epsilon=1.0)
        trajectory = run_trajectory(model, tiny_images, spec=tiny_spec, config=config, device=CPU)
        assert set(trajectory.signals["uf_source"]) == {0, 6, 12}
        assert trajectory.used_fraction > 0

    def test_a_model_that_breaks_channels_last_only_in_train_mode_runs_contiguous(self, tiny_spec):
        class TrainOnlyView(nn.Module):  # an auxiliary branch that runs only in train mode
            def __init__(self) -> None:
                super().__init__()
                self.model = confident_tiny()

            def forward(self, x: torch.Tensor) -> torch.Tensor:
                if self.training:
                    x.view(x.size(0), -1)
                return self.model(x)

        assert not fastpath.runs_channels_last(TrainOnlyView().eval(), tiny_spec.input)

    def test_tuned_choice_measures_once_per_model_shape(self, tiny_model, tiny_spec):
        first = fastpath.choose_plan(tiny_model, tiny_spec, CPU, batch_size=64, tune=True)
        again = fastpath.choose_plan(
            confident_tiny(seed=5), tiny_spec, CPU, batch_size=64, tune=True
        )
        assert first is again
        assert first in fastpath.cpu_candidates(torch.get_num_threads())
        assert first.device == CPU and not first.compile

    def test_fast_normalisation_equals_the_plain_one(self, tiny_spec, tiny_images):
        fast = normalize_fast(tiny_images, tiny_spec.input, CPU, channels_last=True)
        assert fast.is_contiguous(memory_format=torch.channels_last)
        torch.testing.assert_close(fast, normalize(tiny_images, tiny_spec.input), atol=1e-5, rtol=0)


@needs_cuda
@pytest.mark.gpu
class TestCuda:
    def test_step_loop_never_synchronises_with_the_host(self, tiny_model, tiny_spec, tiny_images):
        cuda = torch.device("cuda")
        fast = GroupedRDumb(tiny_model, 2, plan=_plan(cuda), num_classes=10, config=SMALL)
        x = fast.normalize(tiny_images[:128].to(cuda), tiny_spec.input)
        fast.step(x)  # warm-up: cuDNN autotuning may synchronise once
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            for _ in range(3):
                fast.step(x)
        finally:
            torch.cuda.set_sync_debug_mode("default")
        assert fast.k == 4

    def test_bf16_plan_keeps_the_flip_signals_close_to_fp32(
        self, tiny_model, tiny_spec, tiny_images
    ):
        cuda = torch.device("cuda")
        fp32 = run_trajectory(tiny_model, tiny_images, spec=tiny_spec, config=PLAIN, device=cuda)
        (bf16,) = run_trajectories(
            tiny_model,
            [tiny_images],
            spec=tiny_spec,
            config=SMALL,
            device=cuda,
            plan=fastpath.cuda_plan(cuda, compile=False),
        )
        assert bf16.path.startswith("cuda channels_last bf16")
        assert bf16.signals["wf_source"][12] == pytest.approx(fp32.signals["wf_source"][12], abs=25)

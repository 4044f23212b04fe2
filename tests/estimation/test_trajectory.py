"""Spec §4 and §11: batches, probe snapshots and the signals of one trajectory."""

import copy
from dataclasses import replace

import pytest
import torch

from flipwatch.workers.estimation.adapt import prepare_adaptation_copy, set_mode
from flipwatch.workers.estimation.config import EstimateConfig
from flipwatch.workers.estimation.trajectory import (
    SIGNALS,
    batch_order,
    predict,
    resolve_device,
    run_trajectory,
)
from tests.tiny_models import TwoLogits, WithAuxHead, confident_tiny

SMALL = EstimateConfig(steps=12, checkpoints=(0, 6, 12), probe_size=200, epsilon=1.0)


class TestBatchOrder:
    @pytest.mark.parametrize("batches_per_pass", [1, 2, 3, 5, 9, 10, 11, 15])
    def test_every_step_gets_a_batch_whatever_the_pass_length(self, batches_per_pass):
        """The reference loses its final snapshot when the pass length divides 990 (§4.2)."""
        order = batch_order(64 * batches_per_pass + 7, 64, 990, torch.Generator().manual_seed(0))
        assert order.shape == (990, 64)

    def test_each_pass_is_a_permutation_without_the_trailing_partial_batch(self):
        order = batch_order(200, 64, 6, torch.Generator().manual_seed(0))
        first_pass = order[:3].flatten()
        assert first_pass.unique().numel() == 192

    def test_fewer_images_than_a_batch_are_refused(self):
        with pytest.raises(ValueError, match="at least 64 images"):
            batch_order(63, 64, 10, torch.Generator())


class TestSnapshots:
    def test_chunk_composition_matters_and_same_order_reproduces_bit_exactly(
        self, tiny_model, tiny_spec, tiny_images
    ):
        adapted = prepare_adaptation_copy(tiny_model)
        set_mode(adapted, train=False)
        cpu = torch.device("cpu")
        first = predict(adapted, tiny_images, tiny_spec, device=cpu, chunk_size=100)
        again = predict(adapted, tiny_images, tiny_spec, device=cpu, chunk_size=100)
        assert torch.equal(first.probs, again.probs)
        perm = torch.randperm(len(tiny_images), generator=torch.Generator().manual_seed(3))
        shuffled = predict(adapted, tiny_images[perm], tiny_spec, device=cpu, chunk_size=100)
        assert not torch.equal(first.probs[perm], shuffled.probs)


class TestRunTrajectory:
    def test_same_seed_gives_identical_signals(self, tiny_model, tiny_spec, tiny_images, device):
        a = run_trajectory(tiny_model, tiny_images, spec=tiny_spec, config=SMALL, device=device)
        b = run_trajectory(tiny_model, tiny_images, spec=tiny_spec, config=SMALL, device=device)
        assert a.signals == b.signals
        assert torch.equal(a.adapted[12].probs, b.adapted[12].probs)

    def test_records_every_signal_at_every_checkpoint(self, tiny_model, tiny_spec, tiny_images):
        t = run_trajectory(
            tiny_model, tiny_images, spec=tiny_spec, config=SMALL, device=torch.device("cpu")
        )
        assert set(t.signals) == set(SIGNALS)
        assert set(t.signals["wf_source"]) == {0, 6, 12}
        assert set(t.signals["wf"]) == {6, 12}  # step 0 against itself is always 0
        assert t.probe_size == 200 and t.num_images == 300
        # uf_source: the share of probe predictions that differ from the source's, per 1000
        changed = (t.source.labels != t.adapted[12].labels).double().mean()
        assert t.signals["uf_source"][12] == pytest.approx(1000 * float(changed), abs=1e-9)
        assert t.used_fraction > 0  # with ε = 1 some samples pass the filters and adapt
        assert t.source.features is not None and t.source.features.shape == (200, 16)

    @pytest.mark.parametrize("fast", [False, True], ids=["plain", "fast"])
    def test_auxiliary_outputs_in_train_mode_adapt_as_the_main_head_alone(
        self, tiny_model, tiny_spec, tiny_images, fast
    ):
        # GoogLeNet and Inception v3 return (logits, aux logits) where adaptation runs them
        config = replace(SMALL, fast=fast)
        cpu = torch.device("cpu")
        plain = run_trajectory(tiny_model, tiny_images, spec=tiny_spec, config=config, device=cpu)
        aux = WithAuxHead(copy.deepcopy(tiny_model)).eval()
        both = run_trajectory(aux, tiny_images, spec=tiny_spec, config=config, device=cpu)
        assert plain.used_fraction > 0
        assert both.signals == plain.signals
        assert torch.equal(both.adapted[12].probs, plain.adapted[12].probs)

    @pytest.mark.parametrize("fast", [False, True], ids=["plain", "fast"])
    def test_a_sigmoid_binary_model_adapts_as_its_two_logit_equivalent(
        self, tiny_spec, tiny_images, fast
    ):
        single = confident_tiny(num_classes=1)  # one logit z per image (BCEWithLogitsLoss)
        two = TwoLogits(copy.deepcopy(single)).eval()  # (−z/2, z/2), written out
        spec = tiny_spec.model_copy(update={"num_classes": 2})
        config, cpu = replace(SMALL, fast=fast), torch.device("cpu")
        a = run_trajectory(single, tiny_images, spec=spec, config=config, device=cpu)
        b = run_trajectory(two, tiny_images, spec=spec, config=config, device=cpu)
        assert a.used_fraction > 0 and a.source.probs.shape == (200, 2)
        assert a.signals == b.signals
        assert torch.equal(a.adapted[12].probs, b.adapted[12].probs)

    def test_source_model_is_untouched(self, tiny_model, tiny_spec, tiny_images):
        before = {k: v.clone() for k, v in tiny_model.state_dict().items()}
        run_trajectory(
            tiny_model, tiny_images, spec=tiny_spec, config=SMALL, device=torch.device("cpu")
        )
        assert all(torch.equal(before[k], v) for k, v in tiny_model.state_dict().items())

    def test_too_few_images_are_refused_with_the_minimum(self, tiny_model, tiny_spec, tiny_images):
        with pytest.raises(ValueError, match="at least 64"):
            run_trajectory(
                tiny_model,
                tiny_images[:40],
                spec=tiny_spec,
                config=SMALL,
                device=torch.device("cpu"),
            )

    def test_progress_counts_steps(self, tiny_model, tiny_spec, tiny_images):
        seen: list[tuple[int, int]] = []
        run_trajectory(
            tiny_model,
            tiny_images,
            spec=tiny_spec,
            config=SMALL,
            device=torch.device("cpu"),
            progress=lambda d, t: seen.append((d, t)),
        )
        assert seen[0] == (1, 12) and seen[-1] == (12, 12) and len(seen) == 12


def test_cuda_without_gpu_is_a_clear_error():
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(ValueError, match="no CUDA GPU"):
        resolve_device("cuda")

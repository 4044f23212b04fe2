"""Spec §2, §3 and §11: the adaptation copy and one RDumb step."""

import math
from collections import namedtuple

import pytest
import torch
from torch import nn

from flipwatch.workers.estimation.adapt import (
    RDumb,
    batchnorm_layers,
    bn_affine_parameters,
    entropy,
    logits_of,
    prepare_adaptation_copy,
    set_mode,
)
from flipwatch.workers.estimation.images import normalize


def _batch(images: torch.Tensor, spec) -> torch.Tensor:
    return normalize(images[:64], spec.input)


def test_entropy_of_uniform_logits_is_log_c():
    assert float(entropy(torch.zeros(1, 10))) == pytest.approx(math.log(10))


class TestLogitsOf:
    def test_a_tensor_is_the_logits(self):
        out = torch.ones(2, 3)
        assert logits_of(out) is out

    def test_a_named_tuple_gives_its_logits_field_wherever_it_stands(self):
        outputs = namedtuple("Outputs", "aux_logits logits")
        out = outputs(torch.zeros(2, 3), torch.ones(2, 3))
        assert logits_of(out) is out.logits

    def test_a_plain_tuple_gives_its_first_element(self):
        logits, features = torch.ones(2, 3), torch.zeros(2, 8)
        assert logits_of((logits, features)) is logits

    def test_a_dict_gives_its_logits_key(self):
        logits = torch.ones(2, 3)
        assert logits_of({"features": torch.zeros(2, 8), "logits": logits}) is logits

    def test_a_single_logit_is_a_binary_sigmoid_classifier(self):
        z = torch.tensor([[0.0], [2.0], [-1.0]])
        logits = logits_of(z)
        assert torch.equal(logits, torch.tensor([[0.0, 0.0], [-1.0, 1.0], [0.5, -0.5]]))
        torch.testing.assert_close(torch.softmax(logits, 1)[:, 1:], torch.sigmoid(z))

    @pytest.mark.parametrize("out", ["text", (), {"out": torch.ones(2, 3)}, ("text",)])
    def test_anything_else_is_a_type_error_naming_what_came_back(self, out):
        with pytest.raises(TypeError, match=f"returned a {type(out).__name__}, not logits"):
            logits_of(out)


class TestPrepareAdaptationCopy:
    def test_only_batchnorm_affine_parameters_are_trainable(self, tiny_model):
        adapted = prepare_adaptation_copy(tiny_model)
        trainable = {id(p) for p in adapted.parameters() if p.requires_grad}
        assert trainable == {id(p) for p in bn_affine_parameters(adapted)}
        assert len(trainable) == 2 * len(batchnorm_layers(adapted))

    def test_batch_statistics_in_train_and_eval_mode_alike(
        self, tiny_model, tiny_spec, tiny_images
    ):
        adapted = prepare_adaptation_copy(tiny_model)
        x = _batch(tiny_images, tiny_spec)
        with torch.no_grad():
            set_mode(adapted, train=True)
            train_out = adapted(x)
            set_mode(adapted, train=False)
            eval_out = adapted(x)
        torch.testing.assert_close(train_out, eval_out, rtol=0, atol=0)

    def test_refuses_a_model_without_batchnorm(self):
        with pytest.raises(ValueError, match="no BatchNorm2d"):
            prepare_adaptation_copy(nn.Sequential(nn.Flatten(), nn.Linear(4, 2)))


class TestRDumbStep:
    def test_source_model_stays_bit_identical(self, tiny_model, tiny_spec, tiny_images):
        before = {k: v.clone() for k, v in tiny_model.state_dict().items()}
        rdumb = RDumb(prepare_adaptation_copy(tiny_model), num_classes=10, lr=0.1)
        for start in range(0, 256, 64):
            rdumb.step(normalize(tiny_images[start : start + 64], tiny_spec.input))
        after = tiny_model.state_dict()
        assert before.keys() == after.keys()
        assert all(torch.equal(before[k], after[k]) for k in before)

    def test_only_bn_weight_and_bias_move_in_the_copy(self, tiny_model, tiny_spec, tiny_images):
        adapted = prepare_adaptation_copy(tiny_model)
        frozen = {n: p.clone() for n, p in adapted.named_parameters() if not p.requires_grad}
        rdumb = RDumb(adapted, num_classes=10, lr=0.1, epsilon=1.0)
        stats = rdumb.step(_batch(tiny_images, tiny_spec))
        assert stats.selected > 0
        assert all(torch.equal(p, frozen[n]) for n, p in adapted.named_parameters() if n in frozen)
        moved = [not torch.equal(p, p0) for p, p0 in zip(rdumb.params, rdumb.theta0, strict=True)]
        assert any(moved)

    def test_reset_restores_affine_values_bit_exactly(self, tiny_model, tiny_spec, tiny_images):
        rdumb = RDumb(
            prepare_adaptation_copy(tiny_model),
            num_classes=10,
            lr=0.1,
            epsilon=1.0,
            reset_interval=3,
        )
        theta0 = [p.detach().clone() for p in rdumb.params]
        x = _batch(tiny_images, tiny_spec)
        for _ in range(3):
            rdumb.step(x)
        assert any(not torch.equal(p, p0) for p, p0 in zip(rdumb.params, theta0, strict=True))
        rdumb.reset()
        assert all(torch.equal(p, p0) for p, p0 in zip(rdumb.params, theta0, strict=True))
        assert rdumb.mean_probs is None
        assert rdumb.optimizer.state_dict()["state"] == {}

    def test_step_with_no_survivors_changes_nothing_but_counts(
        self, tiny_model, tiny_spec, tiny_images
    ):
        rdumb = RDumb(prepare_adaptation_copy(tiny_model), num_classes=10, entropy_factor=0.0)
        theta0 = [p.detach().clone() for p in rdumb.params]
        stats = rdumb.step(_batch(tiny_images, tiny_spec))
        assert (stats.reliable, stats.selected, rdumb.k) == (0, 0, 1)
        assert all(torch.equal(p, p0) for p, p0 in zip(rdumb.params, theta0, strict=True))

    def test_first_step_after_reset_skips_the_redundancy_filter(
        self, tiny_model, tiny_spec, tiny_images
    ):
        rdumb = RDumb(prepare_adaptation_copy(tiny_model), num_classes=10, epsilon=0.0)
        first = rdumb.step(_batch(tiny_images, tiny_spec))
        second = rdumb.step(_batch(tiny_images, tiny_spec))
        assert first.selected == first.reliable > 0
        assert second.selected == 0  # |cos| < 0 never holds

    def test_reference_epsilon_blocks_ten_class_updates_after_the_first_step(
        self, tiny_model, tiny_spec, tiny_images
    ):
        """offline-data.md: ε = 0.05 passes no sample when C = 10."""
        rdumb = RDumb(prepare_adaptation_copy(tiny_model), num_classes=10, epsilon=0.05)
        rdumb.step(_batch(tiny_images, tiny_spec))
        assert rdumb.step(_batch(tiny_images, tiny_spec)).selected == 0

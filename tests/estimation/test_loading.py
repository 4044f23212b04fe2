"""The three model formats and the loader's refusals (the spec itself: test_spec.py)."""

import pytest
import torch
import torchvision

from flipwatch.workers.estimation.adapt import batchnorm_layers, prepare_adaptation_copy
from flipwatch.workers.estimation.config import EstimateConfig
from flipwatch.workers.estimation.loading import ModelLoadError, load_model, resolve_builders
from flipwatch.workers.estimation.spec import ModelSpec
from flipwatch.workers.estimation.trajectory import run_trajectory
from flipwatch.workers.estimation.zoo import tiny
from tests.tiny_models import WithAuxHead, no_batchnorm

NO_BATCHNORM = "tests.tiny_models:no_batchnorm"

TINY_INPUT = {"color": "RGB", "size": [32, 32], "mean": [0.5], "std": [0.25]}


def _spec(**fields) -> ModelSpec:
    return ModelSpec.model_validate({"name": "m", "num_classes": 10, "input": TINY_INPUT, **fields})


@pytest.fixture
def tiny_weights(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "tiny.pt"
    torch.save(tiny().state_dict(), path)
    return path


class _AuxTiny(WithAuxHead):
    """WithAuxHead whose state dict is the tiny model's own (no `model.` prefix)."""

    def state_dict(self, *args, **kwargs):
        return self.model.state_dict(*args, **kwargs)

    def load_state_dict(self, state, strict=True, assign=False):
        return self.model.load_state_dict(state, strict=strict, assign=assign)


def _aux_tiny(num_classes: int, aux_size: int) -> WithAuxHead:
    return _AuxTiny(tiny(num_classes=num_classes), aux_size=aux_size)


class TestFormats:
    def test_entrypoint_loads_a_state_dict_into_the_built_architecture(self, tiny_weights):
        model = load_model(
            _spec(
                format="entrypoint",
                entrypoint="tiny",
                weights=str(tiny_weights),
            )
        )
        expected = torch.load(tiny_weights, weights_only=True)
        assert all(torch.equal(model.state_dict()[k], v) for k, v in expected.items())
        assert not model.training

    def test_torchvision_arch_loads_its_state_dict(self, tmp_path):
        path = tmp_path / "r18.pt"
        torch.save(torchvision.models.resnet18(num_classes=10).state_dict(), path)
        model = load_model(_spec(format="torchvision", arch="resnet18", weights=str(path)))
        assert len(batchnorm_layers(model)) == 20

    def test_torchscript_module_loads_and_its_batchnorm_is_found_by_type_name(self, tmp_path):
        torch.manual_seed(0)
        path = tmp_path / "tiny.ts"
        torch.jit.script(tiny().eval()).save(str(path))
        model = load_model(_spec(format="torchscript", weights=str(path)))
        assert isinstance(model, torch.jit.ScriptModule)
        assert len(batchnorm_layers(model)) == 3

    def test_torchscript_model_adapts_like_the_eager_one(
        self, tmp_path, tiny_model, tiny_images, tiny_spec
    ):
        eager = tiny_model
        path = tmp_path / "tiny.ts"
        torch.jit.script(eager).save(str(path))
        scripted = load_model(_spec(format="torchscript", weights=str(path)))
        # both on the plain loop (TorchScript has no fast path), so only the format differs
        config = EstimateConfig(
            steps=10, checkpoints=(0, 10), probe_size=200, epsilon=1.0, fast=False
        )
        device = torch.device("cpu")
        a = run_trajectory(eager, tiny_images, spec=tiny_spec, config=config, device=device)
        b = run_trajectory(scripted, tiny_images, spec=tiny_spec, config=config, device=device)
        torch.testing.assert_close(a.adapted[10].probs, b.adapted[10].probs, rtol=1e-4, atol=1e-5)
        assert a.signals == b.signals


class TestRefusals:
    def test_missing_weights_file(self, tmp_path):
        spec = _spec(
            format="entrypoint",
            entrypoint="tiny",
            weights=str(tmp_path / "nope.pt"),
        )
        with pytest.raises(ModelLoadError, match="nope.pt does not exist"):
            load_model(spec)

    def test_unknown_torchvision_arch(self):
        with pytest.raises(ModelLoadError, match="unknown torchvision arch 'resnet5000'"):
            load_model(_spec(format="torchvision", arch="resnet5000"))

    def test_class_count_mismatch_with_the_weights(self, tiny_weights):
        spec = _spec(
            format="entrypoint",
            entrypoint="tiny",
            weights=str(tiny_weights),
            num_classes=7,
        )
        with pytest.raises(ModelLoadError, match="do not match the architecture"):
            load_model(spec)

    def test_class_count_mismatch_of_the_output(self, tmp_path):
        path = tmp_path / "tiny7.ts"
        torch.jit.script(tiny(num_classes=7).eval()).save(str(path))
        with pytest.raises(
            ModelLoadError, match="returns 7 logits but the spec says num_classes 10"
        ):
            load_model(_spec(format="torchscript", weights=str(path)))

    def test_traced_module_with_its_batchnorm_mode_baked_in(self, tmp_path, tiny_model):
        path = tmp_path / "traced.ts"
        torch.jit.trace(tiny_model, torch.rand(2, 3, 32, 32)).save(str(path))
        with pytest.raises(ModelLoadError, match="torch.jit.script"):
            load_model(_spec(format="torchscript", weights=str(path)))

    def test_model_that_fails_only_in_train_mode_is_refused_at_load(self, tiny_weights):
        # Inception v3's auxiliary head needs larger inputs than its main one, in train mode only
        spec = _spec(format="entrypoint", entrypoint="aux", weights=str(tiny_weights))
        with pytest.raises(ModelLoadError, match=r"fails in train mode.*\(4, 3, 32, 32\) input"):
            load_model(spec, builders={"aux": lambda num_classes: _aux_tiny(num_classes, 64)})

    def test_model_with_auxiliary_outputs_in_train_mode_loads(self, tiny_weights):
        spec = _spec(format="entrypoint", entrypoint="aux", weights=str(tiny_weights))
        model = load_model(spec, builders={"aux": lambda num_classes: _aux_tiny(num_classes, 8)})
        assert isinstance(model, WithAuxHead)

    def test_weights_holding_nan_are_refused_naming_the_tensor(self, tmp_path):
        torch.manual_seed(0)
        model = tiny()
        with torch.no_grad():
            model.fc.weight[0, :3] = torch.tensor([float("nan"), float("inf"), -float("inf")])
        path = tmp_path / "diverged.pt"
        torch.save(model.state_dict(), path)
        spec = _spec(format="entrypoint", entrypoint="tiny", weights=str(path))
        with pytest.raises(ModelLoadError, match="fc.weight holds 3 NaN or inf values of 160"):
            load_model(spec)

    def test_a_single_logit_model_is_a_two_class_model(self):
        one_logit = {"sigmoid": lambda num_classes: tiny(num_classes=1)}
        model = load_model(
            _spec(format="entrypoint", entrypoint="sigmoid", num_classes=2), one_logit
        )
        assert model.fc.out_features == 1
        spec = _spec(format="entrypoint", entrypoint="sigmoid", num_classes=10)
        with pytest.raises(
            ModelLoadError, match=r"returns one logit \(a binary sigmoid classifier"
        ):
            load_model(spec, one_logit)

    def test_batchnorm_without_affine_parameters_is_refused_at_load(self):
        def frozen(num_classes: int) -> torch.nn.Module:
            model = tiny(num_classes=num_classes)
            model.features[1] = torch.nn.BatchNorm2d(model.features[1].num_features, affine=False)
            return model

        spec = _spec(format="entrypoint", entrypoint="frozen")
        with pytest.raises(ModelLoadError, match=r"'m': a BatchNorm2d layer has no affine weight"):
            load_model(spec, builders={"frozen": frozen})

    def test_model_without_batchnorm(self):
        spec = _spec(format="entrypoint", entrypoint="no_batchnorm")
        with pytest.raises(ModelLoadError, match="no BatchNorm2d layer"):
            load_model(spec, builders=resolve_builders({"no_batchnorm": NO_BATCHNORM}))

    def test_entrypoint_outside_the_registry_is_refused_without_importing_it(self):
        spec = _spec(format="entrypoint", entrypoint="no_batchnorm")
        with pytest.raises(ModelLoadError, match="'no_batchnorm' is not a registered builder"):
            load_model(spec)

    def test_pickled_module_instead_of_state_dict(self, tmp_path):
        path = tmp_path / "pickled.pt"
        torch.save(tiny(), path)
        spec = _spec(
            format="entrypoint",
            entrypoint="tiny",
            weights=str(path),
        )
        with pytest.raises(ModelLoadError, match="weights_only=True"):
            load_model(spec)

    def test_adaptation_copy_of_scripted_model_leaves_source_intact(self, tmp_path):
        path = tmp_path / "tiny.ts"
        torch.jit.script(tiny().eval()).save(str(path))
        model = load_model(_spec(format="torchscript", weights=str(path)))
        before = {k: v.clone() for k, v in model.state_dict().items()}
        prepare_adaptation_copy(model)
        assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())


class TestBuilderRegistry:
    def test_import_path_in_a_spec_is_refused(self):
        with pytest.raises(ValueError, match="must be a registered builder name"):
            _spec(format="entrypoint", entrypoint="os:system")

    def test_legacy_zoo_import_paths_map_to_registry_names(self):
        for legacy in ("workers.estimation.zoo:tiny", "flipwatch.workers.estimation.zoo:tiny"):
            assert _spec(format="entrypoint", entrypoint=legacy).entrypoint == "tiny"

    def test_operator_builders_are_imported_from_configuration(self):
        builders = resolve_builders({"nobn": NO_BATCHNORM})
        assert builders["nobn"] is no_batchnorm

    def test_operator_builder_that_cannot_be_imported_is_named(self):
        with pytest.raises(ModelLoadError, match="model builder 'x': cannot import 'no.such'"):
            resolve_builders({"x": "no.such:thing"})

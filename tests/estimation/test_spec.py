"""The model spec: its validation (messages naming the field and the fix) and the spec file."""

import json
from pathlib import Path

import pytest

from flipwatch.workers.estimation.spec import InputSpec, ModelSpec, SpecError, read_spec

TINY_INPUT = {"color": "RGB", "size": [32, 32], "mean": [0.5], "std": [0.25]}


def _spec(**fields) -> ModelSpec:
    return ModelSpec.model_validate({"name": "m", "num_classes": 10, "input": TINY_INPUT, **fields})


class TestSpec:
    def test_relative_weights_resolve_against_the_spec_folder(self, tmp_path):
        (tmp_path / "spec.json").write_text(
            json.dumps(
                {
                    "name": "m",
                    "format": "entrypoint",
                    "entrypoint": "tiny",
                    "weights": "w.pt",
                    "num_classes": 10,
                }
            )
        )
        assert read_spec(tmp_path / "spec.json").weights == str(tmp_path / "w.pt")

    def test_torchvision_format_needs_arch(self, tmp_path):
        (tmp_path / "spec.json").write_text(
            json.dumps({"name": "m", "format": "torchvision", "num_classes": 10})
        )
        with pytest.raises(SpecError, match="needs 'arch'"):
            read_spec(tmp_path / "spec.json")

    def test_imagenet_flag_needs_a_thousand_classes(self):
        with pytest.raises(ValueError, match="num_classes 1000"):
            _spec(format="torchvision", arch="resnet18", imagenet=True)

    def test_missing_spec_file_is_named(self, tmp_path):
        with pytest.raises(SpecError, match="does not exist"):
            read_spec(tmp_path / "missing.json")

    def test_invalid_json_is_named(self, tmp_path):
        (tmp_path / "spec.json").write_text("{name: m}")
        with pytest.raises(SpecError, match="is not valid JSON"):
            read_spec(tmp_path / "spec.json")

    def test_invalid_fields_are_listed_by_path(self, tmp_path):
        (tmp_path / "spec.json").write_text(
            json.dumps(
                {"name": "m", "format": "entrypoint", "entrypoint": "tiny", "num_classes": 1}
            )
        )
        with pytest.raises(SpecError, match="invalid: num_classes: Input should be greater"):
            read_spec(tmp_path / "spec.json")

    def test_absolute_weights_stay_as_they_are(self, tmp_path):
        spec = _spec(format="entrypoint", entrypoint="tiny", weights="/models/w.pt")
        assert spec.weights_path(tmp_path) == Path("/models/w.pt")


class TestEntrypointNames:
    def test_legacy_import_paths_of_zoo_builders_become_names(self):
        for legacy in ("workers.estimation.zoo:tiny", "flipwatch.workers.estimation.zoo:tiny"):
            assert _spec(format="entrypoint", entrypoint=legacy).entrypoint == "tiny"

    def test_an_import_path_is_refused_naming_the_registry(self):
        with pytest.raises(ValueError, match="must be a registered builder name"):
            _spec(format="entrypoint", entrypoint="os:system")

    @pytest.mark.parametrize(
        ("fields", "message"),
        [
            ({"format": "entrypoint"}, "needs 'entrypoint'"),
            ({"format": "torchscript"}, "needs 'weights'"),
        ],
    )
    def test_each_format_needs_its_field(self, fields, message):
        with pytest.raises(ValueError, match=message):
            _spec(**fields)


class TestInputSpec:
    def test_one_mean_and_std_apply_to_every_channel_or_one_per_channel(self):
        assert InputSpec(mean=[0.5], std=[0.25]).channels == 3
        assert InputSpec(color="L", mean=[0.1307], std=[0.3081]).channels == 1
        with pytest.raises(ValueError, match="input.mean has 2 values; color 'RGB' needs 3"):
            InputSpec(mean=[0.5, 0.5])

    def test_std_must_be_positive(self):
        with pytest.raises(ValueError, match="input.std values must be positive"):
            InputSpec(std=[0.2, 0.0, 0.2])

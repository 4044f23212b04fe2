"""EstimateResult: the typed contract between the worker that stores an estimate and the API and
metrics that read it back."""

from __future__ import annotations

import json
import subprocess
import sys

from flipwatch.workers.estimation.result import EstimateResult

RESULT = EstimateResult(
    estimated_accuracy=0.85133775,
    signal="wf@8",
    signal_value=4.65,
    calibration="fitted",
    calibration_mae=0.03,
    weighted_flips=4.65,
    signals={"wf": {4: 0.575, 8: 4.65}, "uf_source": {0: 955.0, 8: 955.0}},
    baselines={"ac": 0.3857, "doc": 0.8687, "atc": 1.0, "atc_ne": None, "cot": 0.3439},
    embedding={"frechet": 0.003, "silhouette": None, "centroid_shift": 1.53},
    steps=8,
    probe_size=200,
    num_images=300,
    seconds=1.25,
    device="cpu",
    used_fraction=0.421875,
    epsilon=1.0,
    warnings=["probe of 80 images: below 100 the estimate degrades clearly (spec §10.1)"],
)


def test_to_dict_writes_signal_steps_as_json_object_keys() -> None:
    data = RESULT.to_dict()
    assert data["signals"] == {"wf": {"4": 0.575, "8": 4.65}, "uf_source": {"0": 955.0, "8": 955.0}}
    assert data["baselines"] == RESULT.baselines
    assert set(data) == set(EstimateResult.__dataclass_fields__)


def test_round_trips_through_json_exactly() -> None:
    stored = json.loads(json.dumps(RESULT.to_dict()))
    assert EstimateResult.from_dict(stored) == RESULT


def test_a_newer_results_extra_keys_are_ignored_and_missing_warnings_default() -> None:
    stored = RESULT.to_dict() | {"probe_seed": 7}
    del stored["warnings"]
    again = EstimateResult.from_dict(stored)
    assert again.warnings == []
    assert again.signals == RESULT.signals


def test_the_contract_module_does_not_import_torch() -> None:
    code = (
        "import sys; import flipwatch.workers.estimation.result; "
        "print(sorted({'torch', 'numpy'} & set(sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"

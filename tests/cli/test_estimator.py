"""`flipwatch estimate` and `flipwatch calibrate`: one JSON object, or one clear error line."""

import json
import math

import pytest
import torch

from flipwatch.cli import main
from flipwatch.demos.data import write_image_folder
from flipwatch.workers.estimation.calibration_result import Calibration, Fit
from flipwatch.workers.estimation.flips import QuadraticMap
from tests.tiny_models import confident_tiny


def estimate_cli(spec_file, calibration_file, folder, *options: str) -> int:
    """`flipwatch estimate --model SPEC --calibration CALIB [options] FOLDER`, in-process."""
    return main(
        [
            "estimate",
            "--model",
            str(spec_file),
            "--calibration",
            str(calibration_file),
            *options,
            str(folder),
        ]
    )


@pytest.fixture
def spec_file(tmp_path):
    torch.save(confident_tiny().state_dict(), tmp_path / "tiny.pt")
    spec = {
        "name": "tiny",
        "format": "entrypoint",
        "entrypoint": "tiny",
        "weights": "tiny.pt",
        "num_classes": 10,
        "input": {"color": "RGB", "size": [32, 32], "mean": [0.5], "std": [0.25]},
    }
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(spec))
    return path


@pytest.fixture
def calibration_file(tmp_path):
    """A hand-made calibration: accuracy = 0.9 − 0.001·wf_source@0."""
    fit = Fit("wf_source", 0, QuadraticMap(0.0, -0.001, 0.9, 0.0, 500.0), mae=0.05)
    calibration = Calibration(
        model_name="tiny",
        num_classes=10,
        probe_size=100,
        steps=10,
        source="fitted",
        fits=(fit,),
        selected=fit.key,
    )
    path = tmp_path / "calib.json"
    path.write_text(json.dumps(calibration.to_dict()))
    return path


@pytest.fixture
def image_dir(tmp_path, tiny_images):
    folder = tmp_path / "window"
    write_image_folder(tiny_images[:128], folder)
    return folder


def test_estimate_json_is_one_object_with_the_documented_fields(
    spec_file, calibration_file, image_dir, capsys
):
    code = estimate_cli(
        spec_file,
        calibration_file,
        str(image_dir),
        "--steps",
        "10",
        "--probe-size",
        "100",
        "--device",
        "cpu",
        "--json",
    )
    out = capsys.readouterr().out
    assert code == 0
    result = json.loads(out)
    assert out.count("\n") == 1
    assert result["signal"] == "wf_source@0"
    assert result["estimated_accuracy"] == pytest.approx(0.9 - 0.001 * result["signal_value"])
    assert set(result["baselines"]) == {"ac", "doc", "atc", "atc_ne", "cot"}
    assert {"frechet", "silhouette", "centroid_shift", "class_distance"} <= set(result["embedding"])
    assert (result["steps"], result["probe_size"], result["num_images"]) == (10, 100, 128)
    assert result["device"] == "cpu" and result["seconds"] > 0
    assert set(result["signals"]["wf_source"]) == {"0", "10"}
    # A version-1 style calibration (no held-out residuals): ±ln(10)·MAE at 90 %.
    half = math.log(10) * 0.05
    assert result["interval_level"] == 0.9
    assert result["lower"] == pytest.approx(max(0.0, result["estimated_accuracy"] - half))
    assert result["upper"] == pytest.approx(min(1.0, result["estimated_accuracy"] + half))
    assert result["estimator"] == "fit:wf_source@0"
    assert len(result["class_proportions"]) == 10
    assert sum(result["class_proportions"]) == pytest.approx(1.0)
    assert 0.0 <= result["label_shift"] <= 1.0


def test_estimate_without_calibration_for_a_non_imagenet_model_says_to_calibrate(
    spec_file, image_dir, capsys
):
    code = main(["estimate", "--model", str(spec_file), "--steps", "5", str(image_dir)])
    err = capsys.readouterr().err
    assert code == 2
    assert "has no calibration" in err and "flipwatch calibrate" in err
    assert "Traceback" not in err


def test_empty_folder_is_a_clear_error(spec_file, calibration_file, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    code = estimate_cli(spec_file, calibration_file, str(tmp_path / "empty"))
    assert code == 2
    assert "holds no images" in capsys.readouterr().err


def test_non_image_and_truncated_files_are_named(spec_file, calibration_file, image_dir, capsys):
    (image_dir / "notes.txt").write_text("not an image")
    png = (image_dir / "00000.png").read_bytes()
    (image_dir / "cut.png").write_bytes(png[: len(png) // 2])
    code = estimate_cli(spec_file, calibration_file, str(image_dir))
    err = capsys.readouterr().err
    assert code == 2
    assert "2 file(s) are not usable images" in err
    assert "notes.txt" in err and "cut.png" in err


def test_too_few_images_is_a_clear_error(
    spec_file, calibration_file, tmp_path, tiny_images, capsys
):
    write_image_folder(tiny_images[:10], tmp_path / "few")
    code = estimate_cli(spec_file, calibration_file, str(tmp_path / "few"))
    assert code == 2
    assert "at least 64" in capsys.readouterr().err


def test_calibrate_refuses_a_wrong_class_count(spec_file, tmp_path, tiny_images, capsys):
    labels = torch.arange(len(tiny_images)) % 3
    write_image_folder(tiny_images, tmp_path / "labeled", labels=labels)
    code = main(
        [
            "calibrate",
            "--model",
            str(spec_file),
            "--labeled",
            str(tmp_path / "labeled"),
            "--out",
            str(tmp_path / "c.json"),
        ]
    )
    assert code == 2
    assert "3 class folders but model 'tiny' has 10 classes" in capsys.readouterr().err


def test_calibrate_writes_a_calibration_that_estimate_reads(
    spec_file, tmp_path, tiny_images, capsys
):
    labels = torch.arange(len(tiny_images)) % 10
    write_image_folder(tiny_images, tmp_path / "labeled", labels=labels)
    out = tmp_path / "c.json"
    code = main(
        [
            "calibrate",
            "--model",
            str(spec_file),
            "--labeled",
            str(tmp_path / "labeled"),
            "--out",
            str(out),
            "--steps",
            "4",
            "--probe-size",
            "100",
            "--families",
            "contrast,gaussian_noise",
            "--severities",
            "1,2,3,4,5",
            "--mixes",
            "--lr-grid",
            "--processes",
            "1",
            "--json",
        ]
    )
    summary = json.loads(capsys.readouterr().out)
    assert code == 0
    # clean + 2 families × 5 severities + a half-corrupted mix each (--mixes), 3 clean class
    # mixes, 2 skewed shifted variants, 3 subsampled ones for the small-window spread
    assert summary["variants"] == 1 + 2 * 5 + 2 + 3 + 2 + 3
    calibration = Calibration.from_dict(json.loads(out.read_text()))
    assert calibration.selected == summary["selected"]
    assert [s.name for s in calibration.settings] == ["", "lr2e-3", "lr2e-3b16"]  # --lr-grid
    assert {f.key for f in calibration.fits} >= {"wf_source@0", "wf@4", "uf_source@4"}


def test_a_folder_larger_than_a_trajectory_needs_is_sampled_not_loaded_whole(
    spec_file, calibration_file, tmp_path, tiny_images, capsys
):
    write_image_folder(tiny_images, tmp_path / "big")  # 300 images; 2 steps × 64 + probe 100
    code = estimate_cli(
        spec_file,
        calibration_file,
        str(tmp_path / "big"),
        "--steps",
        "2",
        "--probe-size",
        "100",
        "--json",
    )
    assert code == 0
    assert json.loads(capsys.readouterr().out)["num_images"] == 128


def test_calibrate_refuses_severities_that_are_not_numbers(spec_file, tmp_path, capsys):
    code = main(
        ["calibrate", "--model", str(spec_file), "--labeled", str(tmp_path), "--out",
         str(tmp_path / "c.json"), "--severities", "mild"]
    )  # fmt: skip
    assert code == 2
    assert "--severities must be integers 1..5, got 'mild'" in capsys.readouterr().err


def test_plain_flag_runs_the_reference_loop_with_the_same_estimate(
    spec_file, calibration_file, image_dir, capsys
):
    options = ("--steps", "4", "--probe-size", "100", "--json")
    assert estimate_cli(spec_file, calibration_file, image_dir, *options) == 0
    fast = json.loads(capsys.readouterr().out)
    assert estimate_cli(spec_file, calibration_file, image_dir, *options, "--plain") == 0
    plain = json.loads(capsys.readouterr().out)
    assert fast["estimated_accuracy"] == pytest.approx(plain["estimated_accuracy"], abs=0.01)
    assert fast["signals"]["uf_source"] == plain["signals"]["uf_source"]

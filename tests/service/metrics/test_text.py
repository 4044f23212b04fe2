"""The fast text writer is byte for byte what prometheus_client's generate_latest writes for the
same families: label values that need escaping (quotes, backslashes, newlines), unicode, empty
values, and every kind of float floatToGoString treats apart (NaN, ±inf, -0.0, exponents, values
from 1e6 up that Go writes with an exponent)."""

from __future__ import annotations

import math
import random
from collections.abc import Iterable

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import Metric
from prometheus_client.registry import Collector

from flipwatch.service.metrics.families import (
    ACCURACY,
    ALERTS,
    BASELINES,
    FAMILIES,
    IMAGES,
    JOBS,
    LAST_ESTIMATE,
    StreamSnapshot,
    to_metric_families,
)
from flipwatch.service.metrics.text import render_text

AWKWARD_NAMES = (
    "plain",
    'say "cheese"',
    "back\\slash",
    "two\nlines",
    'all \\" of\n them\\n',
    "kassë-東京-🛒",
    "",
    "trailing\\",
    "=,{}",
)
SPECIAL_VALUES = (
    0.0,
    -0.0,
    1.0,
    0.1 + 0.2,
    1e-05,
    123456.789,
    999999.9999999999,
    1e6,
    1234567.0,
    1.7672256e9,
    1e16,
    1e22,
    1.5e300,
    -1e6,
    -1234567.0,
    -1.5e300,
    5e-324,
    math.nan,
    math.inf,
    -math.inf,
)


class _Families(Collector):
    def __init__(self, families: list[Metric]) -> None:
        self._families = families

    def collect(self) -> Iterable[Metric]:
        return self._families


def generate_latest_of(snapshot: StreamSnapshot) -> bytes:
    """The oracle: prometheus_client's own writer over the same families as objects."""
    registry = CollectorRegistry()
    registry.register(_Families(to_metric_families(snapshot)))
    return generate_latest(registry)


def add(snapshot: StreamSnapshot, name: str, key: int, value: float, extra: str = "") -> None:
    samples = snapshot.samples[name]
    samples.keys.append(key)
    samples.values.append(value)
    if next(spec for spec in FAMILIES if spec.name == name).extra is not None:
        samples.extras.append(extra)


def awkward_snapshot(seed: int, streams: int) -> StreamSnapshot:
    """Streams named and valued to hit every escaping and float-formatting branch, every family
    filled (some streams left out of some families, as streams without estimates are)."""
    rng = random.Random(seed)
    snapshot = StreamSnapshot()
    for key in range(streams):
        name = f"{rng.choice(AWKWARD_NAMES)}-{key}"
        model = rng.choice(AWKWARD_NAMES)
        snapshot.labels.append((name, model, rng.choice(("1", "2", 'v"3"', ""))))
    for spec in FAMILIES:
        for key in range(streams):
            if rng.random() < 0.2:
                continue
            extras = [""] if spec.extra is None else rng.sample(AWKWARD_NAMES, 3)
            for extra in extras:
                value = rng.choice(SPECIAL_VALUES + (rng.random(), rng.uniform(-1e7, 1e7)))
                add(snapshot, spec.name, key, value, extra)
    return snapshot


def test_render_text_is_byte_for_byte_what_generate_latest_writes() -> None:
    for seed in range(5):
        snapshot = awkward_snapshot(seed, streams=60)

        assert render_text(snapshot).encode() == generate_latest_of(snapshot), seed


def test_every_special_value_is_written_as_prometheus_client_writes_it() -> None:
    snapshot = StreamSnapshot(labels=[("s", "m", "1")])
    for value in SPECIAL_VALUES:
        add(snapshot, ACCURACY.name, 0, value)

    text = render_text(snapshot)

    assert text.encode() == generate_latest_of(snapshot)
    values = [line.split(" ")[1] for line in text.splitlines() if line.startswith(ACCURACY.name)]
    assert values == [
        "0.0",
        "-0.0",
        "1.0",
        "0.30000000000000004",
        "1e-05",
        "123456.789",
        "999999.9999999999",
        "1e+06",
        "1.234567e+06",
        "1.7672256e+09",
        "1e+16",
        "1e+22",
        "1.5e+300",
        "-1000000.0",
        "-1234567.0",
        "-1.5e+300",
        "5e-324",
        "NaN",
        "+Inf",
        "-Inf",
    ]


def test_labels_are_sorted_by_name_and_escaped_once_per_stream() -> None:
    snapshot = StreamSnapshot(
        labels=[('shelf "A"\\1\nnorth', "resnet-東京", "3"), ("", "calibration-model", "1")]
    )
    add(snapshot, IMAGES.name, 0, 1234.0)
    add(snapshot, BASELINES.name, 0, 0.91, extra="atc_ne")
    add(snapshot, ALERTS.name, 0, 1.0, extra='floor "hard"')
    add(snapshot, JOBS.name, 1, 2.0, extra="failed")
    add(snapshot, LAST_ESTIMATE.name, 0, 1767225600.5)

    lines = [line for line in render_text(snapshot).splitlines() if not line.startswith("#")]

    model = 'model="resnet-東京",model_version="3"'
    stream = r'stream="shelf \"A\"\\1\nnorth"'
    assert lines == [
        f'flipwatch_baseline_accuracy_ratio{{method="atc_ne",{model},{stream}}} 0.91',
        f'flipwatch_drift_alert{{{model},rule="floor \\"hard\\"",{stream}}} 1.0',
        f"flipwatch_last_estimate_timestamp_seconds{{{model},{stream}}} 1.7672256005e+09",
        f"flipwatch_images_ingested_total{{{model},{stream}}} 1234.0",
        'flipwatch_jobs{model="calibration-model",model_version="1",state="failed",stream=""} 2.0',
    ]
    assert render_text(snapshot).encode() == generate_latest_of(snapshot)


def test_every_family_has_its_help_and_type_even_without_samples() -> None:
    text = render_text(StreamSnapshot())

    assert text.encode() == generate_latest_of(StreamSnapshot())
    assert text.splitlines()[:2] == [
        f"# HELP {ACCURACY.name} {ACCURACY.documentation}",
        f"# TYPE {ACCURACY.name} gauge",
    ]
    assert "# TYPE flipwatch_images_ingested_total counter" in text.splitlines()
    assert [line for line in text.splitlines() if not line.startswith("#")] == []

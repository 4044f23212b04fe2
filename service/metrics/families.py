"""The per-stream metric families: their names, help texts, labels and exposition order, and the
container one scrape fills (`StreamSnapshot`).

A snapshot stores each family's samples as three parallel columns (label-set index, extra label
value, value): ints, strings and floats, which the garbage collector does not track. At 10,000
streams a scrape holds about 272,000 samples; as tuples they were as many tracked objects, and the
full collections they set off cost more CPU than the queries (docs/deploy.md, "Metrics at scale").
`to_metric_families` turns a snapshot into prometheus_client objects for any registry consumer;
`text.render_text` writes the text format straight from the columns.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from flipwatch.service.metrics.names import STREAM_LABELS


@dataclass(frozen=True)
class FamilySpec:
    """One per-stream family: labels are STREAM_LABELS plus `extra` when set."""

    name: str
    documentation: str
    kind: str = "gauge"  # or "counter" (exposed as <name>_total)
    extra: str | None = None


ACCURACY = FamilySpec(
    "flipwatch_estimated_accuracy_ratio",
    "Estimated accuracy (Weighted Flips, no labels) of the stream's latest window.",
)
LOWER = FamilySpec(
    "flipwatch_estimated_accuracy_lower_ratio",
    "Lower bound of the estimate's prediction interval (90 %: split conformal on the "
    "calibration's held-out families, widened for small windows).",
)
UPPER = FamilySpec(
    "flipwatch_estimated_accuracy_upper_ratio",
    "Upper bound of the estimate's prediction interval: alert on it to page only when "
    "even the optimistic end is below the floor.",
)
LABEL_SHIFT = FamilySpec(
    "flipwatch_label_shift_distance",
    "Total variation between the window's estimated class proportions (MLLS) and the "
    "reference set's: a different class mix, not model failure.",
)
FLIPS = FamilySpec(
    "flipwatch_weighted_flips", "Weighted Flips signal of the stream's latest window."
)
BASELINES = FamilySpec(
    "flipwatch_baseline_accuracy_ratio",
    "Baseline accuracy estimates (AC, DoC, ATC, ATC-NE, COT) of the latest window.",
    extra="method",
)
EMBEDDING = FamilySpec(
    "flipwatch_embedding_distance",
    "Embedding distances of the latest window to the reference (frechet, "
    "centroid_shift, class_distance) and its post-adaptation silhouette.",
    extra="kind",
)
ALERTS = FamilySpec(
    "flipwatch_drift_alert",
    "Drift rule state: 1 firing, 0 not (rules with hysteresis, set through the API).",
    extra="rule",
)
LAST_ESTIMATE = FamilySpec(
    "flipwatch_last_estimate_timestamp_seconds",
    "Unix time the stream's most recent estimate was stored.",
)
IMAGES = FamilySpec(
    "flipwatch_images_ingested",
    "Images accepted into the stream since it was created.",
    kind="counter",
)
JOBS = FamilySpec(
    "flipwatch_jobs",
    'Jobs per state: estimate jobs per stream; calibration jobs with stream="".',
    extra="state",
)
SIGNAL = FamilySpec(
    "flipwatch_estimate_signal_value",
    "Value of the signal that produced the latest estimate (the calibration's selected "
    "signal@step, e.g. uf_source@250; bounded: 4 signals x the checkpoints).",
    extra="signal",
)
CALIBRATION_ERROR = FamilySpec(
    "flipwatch_calibration_error_ratio",
    "Held-out (leave-one-family-out) mean absolute error of the calibration fit behind "
    "the latest estimate.",
    extra="signal",
)
USED_FRACTION = FamilySpec(
    "flipwatch_estimate_used_fraction_ratio",
    "Share of the latest window's adaptation samples that passed the entropy and "
    "redundancy filters (below one batch in all, the flips measured nothing: see the "
    "estimate's warnings).",
)
REALIZED = FamilySpec(
    "flipwatch_realized_accuracy_ratio",
    "Accuracy measured on posted labels, of the stream's latest window that has one.",
)
ESTIMATOR_ERROR = FamilySpec(
    "flipwatch_estimator_abs_error_ratio",
    "The estimator's running error on the stream: mean |estimated - realized accuracy| "
    "over the most recent windows with labels (FLIPWATCH_ESTIMATOR_ERROR_WINDOWS).",
)
REALIZED_WINDOWS = FamilySpec(
    "flipwatch_realized_windows",
    "Windows behind flipwatch_estimator_abs_error_ratio (at most "
    "FLIPWATCH_ESTIMATOR_ERROR_WINDOWS).",
)
# The exposition order of the families (unchanged since the first collector).
FAMILIES: tuple[FamilySpec, ...] = (
    ACCURACY,
    LOWER,
    UPPER,
    LABEL_SHIFT,
    FLIPS,
    BASELINES,
    EMBEDDING,
    ALERTS,
    LAST_ESTIMATE,
    IMAGES,
    JOBS,
    SIGNAL,
    CALIBRATION_ERROR,
    USED_FRACTION,
    REALIZED,
    ESTIMATOR_ERROR,
    REALIZED_WINDOWS,
)


@dataclass
class FamilySamples:
    """One family's samples as parallel columns: `keys[i]` indexes `StreamSnapshot.labels`,
    `extras[i]` is the value of the family's extra label (left empty for families without one),
    `values[i]` the sample value."""

    keys: list[int] = field(default_factory=list)
    extras: list[str] = field(default_factory=list)
    values: list[float] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.keys)


@dataclass
class StreamSnapshot:
    """What one scrape read: the label sets (stream, model, model_version), each stored once, and
    every family's samples pointing at them."""

    labels: list[tuple[str, str, str]] = field(default_factory=list)
    samples: dict[str, FamilySamples] = field(
        default_factory=lambda: {spec.name: FamilySamples() for spec in FAMILIES}
    )


def to_metric_families(snapshot: StreamSnapshot) -> list[Metric]:
    """The snapshot as prometheus_client families (for `generate_latest`, OpenMetrics)."""
    families: list[Metric] = []
    for spec in FAMILIES:
        kind = CounterMetricFamily if spec.kind == "counter" else GaugeMetricFamily
        samples = snapshot.samples[spec.name]
        if spec.extra is None:
            family: Metric = kind(spec.name, spec.documentation, labels=STREAM_LABELS)
            for key, value in zip(samples.keys, samples.values, strict=True):
                family.add_metric(list(snapshot.labels[key]), value)
        else:
            family = kind(spec.name, spec.documentation, labels=(*STREAM_LABELS, spec.extra))
            for key, extra, value in zip(samples.keys, samples.extras, samples.values, strict=True):
                family.add_metric([*snapshot.labels[key], extra], value)
        families.append(family)
    return families

"""Calibration of ``predicted_success`` against results: Brier score and ECE over 10 bins.

Brier score (0–1): mean of ``(predicted − actual)²`` over the executed tasks that have a
prediction (actual: 1 when the task succeeded, else 0); 0 is perfect, 0.25 is what always
predicting 0.5 scores. Expected calibration error, ECE (0–1): predictions fall in 10 equal
bins ``[0, .1), [.1, .2), …, [.9, 1]``; ``ECE = Σ_bins (n_bin / n) · |mean predicted − share
succeeded|``. Used by the feedback loop and the wave metrics (docs/architecture.md, "Learning
between waves").
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from pydantic import BaseModel, Field, computed_field

from buddy.analysis.outcomes import executed
from buddy.models import Outcome, TaskStatus

N_BINS = 10


class CalibrationBin(BaseModel):
    """One bin of predictions ``[lower, upper)`` (the last bin includes 1.0)."""

    lower: float
    upper: float
    n: int = 0
    sum_predicted: float = 0.0
    sum_actual: float = 0.0

    @computed_field  # type: ignore[prop-decorator]
    @property
    def mean_predicted(self) -> float:
        """Mean prediction in the bin (0 when empty)."""
        return self.sum_predicted / self.n if self.n else 0.0

    @computed_field  # type: ignore[prop-decorator]
    @property
    def observed(self) -> float:
        """Share of the bin's tasks that succeeded (0 when empty)."""
        return self.sum_actual / self.n if self.n else 0.0


def _empty_bins() -> list[CalibrationBin]:
    return [CalibrationBin(lower=i / N_BINS, upper=(i + 1) / N_BINS) for i in range(N_BINS)]


def bin_index(p: float) -> int:
    """The bin of prediction ``p``: ``floor(10 p)``, 1.0 in the last bin."""
    return min(int(p * N_BINS + 1e-9), N_BINS - 1)


class Calibration(BaseModel):
    """Calibration of ``predicted_success`` against results: Brier score and ECE (10 bins).

    Holds sums, not means, so two calibrations merge exactly (:meth:`merge`): a running
    calibration is the merge of the waves'. ``brier`` and ``ece`` are 0 with no data.
    """

    n: int = 0
    sum_sq_error: float = 0.0
    bins: list[CalibrationBin] = Field(default_factory=_empty_bins)

    @computed_field  # type: ignore[prop-decorator]
    @property
    def brier(self) -> float:
        """Mean squared error of the predictions, 0–1."""
        return self.sum_sq_error / self.n if self.n else 0.0

    @computed_field  # type: ignore[prop-decorator]
    @property
    def ece(self) -> float:
        """Σ_bins (n_bin / n) · |mean predicted − observed|, 0–1."""
        if not self.n:
            return 0.0
        return sum(b.n * abs(b.mean_predicted - b.observed) for b in self.bins) / self.n

    @computed_field  # type: ignore[prop-decorator]
    @property
    def mean_predicted(self) -> float:
        """Mean prediction, 0–1 (0 with no data)."""
        return sum(b.sum_predicted for b in self.bins) / self.n if self.n else 0.0

    @computed_field  # type: ignore[prop-decorator]
    @property
    def observed(self) -> float:
        """Share of the predicted tasks that succeeded, 0–1 (0 with no data)."""
        return sum(b.sum_actual for b in self.bins) / self.n if self.n else 0.0

    def add(self, predicted: float, actual: bool) -> None:
        """Count one prediction and its result."""
        y = 1.0 if actual else 0.0
        b = self.bins[bin_index(predicted)]
        b.n += 1
        b.sum_predicted += predicted
        b.sum_actual += y
        self.n += 1
        self.sum_sq_error += (predicted - y) ** 2

    def merge(self, other: Calibration) -> Calibration:
        """A new calibration holding both sets of predictions."""
        out = self.model_copy(deep=True)
        out.n += other.n
        out.sum_sq_error += other.sum_sq_error
        for mine, theirs in zip(out.bins, other.bins, strict=True):
            mine.n += theirs.n
            mine.sum_predicted += theirs.sum_predicted
            mine.sum_actual += theirs.sum_actual
        return out

    @classmethod
    def of(cls, pairs: Iterable[tuple[float, bool]]) -> Calibration:
        """The calibration of ``(predicted, succeeded)`` pairs (what :meth:`add` would count,
        summed in plain floats first: a wave's thousands of model attribute writes cost more
        than the rest of its analysis)."""
        counts, predicted, actual = [0] * N_BINS, [0.0] * N_BINS, [0.0] * N_BINS
        n, sse = 0, 0.0
        for p, ok in pairs:
            y = 1.0 if ok else 0.0
            i = bin_index(p)
            counts[i] += 1
            predicted[i] += p
            actual[i] += y
            n += 1
            sse += (p - y) ** 2
        bins = [
            CalibrationBin(
                lower=i / N_BINS, upper=(i + 1) / N_BINS, n=counts[i], sum_predicted=predicted[i],
                sum_actual=actual[i],
            )
            for i in range(N_BINS)
        ]  # fmt: skip
        return cls(n=n, sum_sq_error=sse, bins=bins)


def calibration_of(outcomes: Iterable[Outcome], predicted: Mapping[str, float]) -> Calibration:
    """Calibration over the executed outcomes that have a prediction in ``predicted``."""
    return Calibration.of(
        (predicted[o.task_id], o.status is TaskStatus.SUCCEEDED)
        for o in outcomes
        if executed(o) and o.task_id in predicted
    )

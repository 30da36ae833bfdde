"""Out-of-scope scores on a classifier's logits and on its features: what its output layer
reads (BERT: the pooled [CLS]), the representation its classes were fitted in.

Each is higher for inputs less like the training data:

- `max_softmax`: 1 - the largest class probability (Hendrycks & Gimpel, 2017), the baseline;
- `energy`: -logsumexp of the logits (Liu et al., 2020): the logits' overall scale, which
  softmax throws away;
- `mahalanobis`: squared Mahalanobis distance of the feature vector to the nearest class
  mean under one shared covariance (Lee et al., 2018; Podolskiy et al., 2021 for BERT);
- `knn`: cosine distance to the k-th nearest L2-normalised training feature vector (Sun et
  al., 2022). Normalising makes it blind to how far out along a class direction an input
  lies, which Mahalanobis sees.

`attnops.models.ood` fits, compares and chooses among them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Protocol

import numpy as np
from scipy.special import logsumexp, softmax

_CHUNK = 4096  # query rows per block: bounds memory to chunk x (classes or anchors)


class Scorer(Protocol):
    name: ClassVar[str]

    def score(self, logits: np.ndarray, features: np.ndarray) -> np.ndarray: ...

    def state(self) -> dict[str, np.ndarray]: ...


@dataclass(frozen=True)
class MaxSoftmax:
    name: ClassVar[str] = "max_softmax"

    def score(self, logits: np.ndarray, features: np.ndarray) -> np.ndarray:
        return 1.0 - softmax(logits.astype(np.float64), axis=1).max(axis=1)

    def state(self) -> dict[str, np.ndarray]:
        return {}


@dataclass(frozen=True)
class Energy:
    name: ClassVar[str] = "energy"

    def score(self, logits: np.ndarray, features: np.ndarray) -> np.ndarray:
        return -logsumexp(logits.astype(np.float64), axis=1)

    def state(self) -> dict[str, np.ndarray]:
        return {}


@dataclass(frozen=True)
class Mahalanobis:
    means: np.ndarray
    """(classes, width) class means of the training features."""
    precision: np.ndarray
    """(width, width) inverse of the shared within-class covariance."""
    name: ClassVar[str] = "mahalanobis"

    @classmethod
    def fit(cls, features: np.ndarray, labels: np.ndarray) -> Mahalanobis:
        x = features.astype(np.float64)
        classes, index = np.unique(labels, return_inverse=True)
        means = np.stack([x[index == i].mean(axis=0) for i in range(len(classes))])
        centred = x - means[index]
        covariance = centred.T @ centred / len(x)
        # A ridge of 1e-6 of the mean variance: features often have near-zero
        # directions (fewer rows than dimensions, or anisotropy) that would blow up.
        ridge = 1e-6 * np.trace(covariance) / len(covariance)
        precision = np.linalg.inv(covariance + ridge * np.eye(len(covariance)))
        return cls(means=means, precision=precision)

    def score(self, logits: np.ndarray, features: np.ndarray) -> np.ndarray:
        mean_term = ((self.means @ self.precision) * self.means).sum(axis=1)

        def nearest(z: np.ndarray) -> np.ndarray:
            zp = z @ self.precision
            squared = (zp * z).sum(axis=1)[:, None] - 2 * zp @ self.means.T + mean_term
            return squared.min(axis=1)

        return _chunked(nearest, features.astype(np.float64))

    def state(self) -> dict[str, np.ndarray]:
        return {"means": self.means, "precision": self.precision}


@dataclass(frozen=True)
class NearestNeighbour:
    anchors: np.ndarray
    """(rows, width) L2-normalised training features, float32."""
    k: int
    name: ClassVar[str] = "knn"

    @classmethod
    def fit(cls, features: np.ndarray, k: int) -> NearestNeighbour:
        if k > len(features):
            raise ValueError(
                f"evaluation.out_of_scope_knn_k is {k} but only {len(features)} training "
                "features were fitted; lower it"
            )
        return cls(anchors=_normalise(features).astype(np.float32), k=k)

    def score(self, logits: np.ndarray, features: np.ndarray) -> np.ndarray:
        def kth_distance(q: np.ndarray) -> np.ndarray:
            similarity = q @ self.anchors.T
            kth = np.partition(similarity, -self.k, axis=1)[:, -self.k]
            return 1.0 - kth

        return _chunked(kth_distance, _normalise(features).astype(np.float32))

    def state(self) -> dict[str, np.ndarray]:
        return {"anchors": self.anchors, "k": np.asarray(self.k)}


SCORERS: dict[str, type] = {s.name: s for s in (MaxSoftmax, Energy, Mahalanobis, NearestNeighbour)}


def fit_scorers(
    names: tuple[str, ...], features: np.ndarray, labels: np.ndarray, *, knn_k: int
) -> dict[str, Scorer]:
    """The named scores, fitted on training `features` with their class `labels`."""
    fitted: dict[str, Scorer] = {}
    for name in names:
        if name == Mahalanobis.name:
            fitted[name] = Mahalanobis.fit(features, labels)
        elif name == NearestNeighbour.name:
            fitted[name] = NearestNeighbour.fit(features, knn_k)
        else:
            fitted[name] = SCORERS[name]()
    return fitted


def scorer_from_state(name: str, state: dict[str, np.ndarray]) -> Scorer:
    """The scorer `name` rebuilt from what its `state()` returned."""
    if name == NearestNeighbour.name:
        return NearestNeighbour(anchors=state["anchors"], k=int(state["k"]))
    if name == Mahalanobis.name:
        return Mahalanobis(means=state["means"], precision=state["precision"])
    return SCORERS[name]()


def _normalise(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def _chunked(fn, x: np.ndarray) -> np.ndarray:
    if len(x) == 0:
        return np.zeros(0)
    return np.concatenate([fn(x[start : start + _CHUNK]) for start in range(0, len(x), _CHUNK)])

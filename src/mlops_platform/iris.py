"""The platform's domain: iris flowers, described by four measurements in centimetres."""

from __future__ import annotations

import math
import random
from typing import Any

FEATURE_NAMES = ("sepal length", "sepal width", "petal length", "petal width")

# Mean and standard deviation of each measurement per species, from the iris data set: enough to
# make up flowers that look like real ones without loading the data set.
SPECIES_MEASUREMENTS = {
    "setosa": ((5.01, 0.35), (3.43, 0.38), (1.46, 0.17), (0.25, 0.11)),
    "versicolor": ((5.94, 0.52), (2.77, 0.31), (4.26, 0.47), (1.33, 0.20)),
    "virginica": ((6.59, 0.64), (2.97, 0.32), (5.55, 0.55), (2.03, 0.27)),
}


def parse_features(value: Any) -> list[float]:
    """The four measurements of a request, or ValueError saying what is wrong with them."""
    if not isinstance(value, list) or len(value) != len(FEATURE_NAMES):
        raise ValueError(f"features must be a list of {len(FEATURE_NAMES)} numbers: {', '.join(FEATURE_NAMES)}")
    for item in value:
        # bool is an int in Python, but true is no measurement.
        if isinstance(item, bool) or not isinstance(item, (int, float)) or not math.isfinite(item):
            raise ValueError(f"features must be finite numbers, got {item!r}")
    return [float(item) for item in value]


def random_flower(rng: random.Random) -> list[float]:
    """Measurements of a made-up flower of a random species."""
    measurements = SPECIES_MEASUREMENTS[rng.choice(list(SPECIES_MEASUREMENTS))]
    return [round(max(0.1, rng.gauss(mean, deviation)), 1) for mean, deviation in measurements]

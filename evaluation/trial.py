"""Trial mode: which incidents are offered EVR and which are kept for comparison, and
the statistics that compare the two arms.

Forces evaluated video response with randomised trials: Dorset by the incident
number's last digit, Kent with a block design. With ``[trial] enabled = true`` each new
incident gets an arm when it is entered: ``treatment`` (offered EVR: triage, queue,
call as usual) or ``control`` (normal dispatch: kept in EVR only for comparison, in the
state ``control``, its attendance time and outcome recorded through the API).

- ``assign = "last_digit"``: a CAD reference ending in an even digit is treatment, odd
  control (one ending in no digit is outside the trial: no arm).
- ``assign = "block"``: a seeded random permuted-block design: the incidents in the
  trial, in the order entered, fall in blocks of ``block_size`` (even), each holding
  as many of either arm in an order drawn from ``seed`` and the block's number, so the
  arms stay balanced and the assignment can be re-derived by anyone holding the seed.

The statistics, all 95 %: Wilson score intervals for shares, the distribution-free
interval of a median from order statistics (the values at two ranks about n/2, from
the binomial distribution; no resampling, so the database gives the values), and for
the difference between arms Newcombe's hybrid score interval (shares) and, for
medians, the interval from the two arms' intervals (wider than needed: conservative).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Any, Optional

ARMS = ("treatment", "control")
Z = 1.959963984540054  # the normal quantile for 95 %


@dataclass(frozen=True)
class TrialDesign:
    enabled: bool = False
    assign: str = "last_digit"
    seed: int = 0
    block_size: int = 4

    @classmethod
    def from_config(cls, table: Any) -> "TrialDesign":
        """The ``[trial]`` table of the settings (ValueError naming what is wrong)."""
        if not table:
            return cls()
        if not isinstance(table, dict):
            raise ValueError("[trial] must be a table: enabled, assign, seed, block_size")
        unknown = sorted(set(table) - {"enabled", "assign", "seed", "block_size"})
        if unknown:
            raise ValueError(f"[trial]: unknown setting(s) {', '.join(unknown)}")
        enabled, assign = table.get("enabled", False), table.get("assign", "last_digit")
        seed, size = table.get("seed", 0), table.get("block_size", 4)
        if not isinstance(enabled, bool):
            raise ValueError("[trial] enabled must be true or false")
        if assign not in ("last_digit", "block"):
            raise ValueError('[trial] assign must be "last_digit" or "block"')
        if not isinstance(seed, int) or isinstance(seed, bool):
            raise ValueError("[trial] seed must be a whole number")
        if not isinstance(size, int) or isinstance(size, bool) or size < 2 or size % 2 or size > 100:
            raise ValueError("[trial] block_size must be an even number from 2 to 100")
        return cls(enabled, assign, seed, size)

    def arm(self, cad_ref: str, position: int) -> Optional[str]:
        """The arm of an incident entered with ``cad_ref``, the ``position``-th (from 0)
        in the trial; None outside the trial."""
        if not self.enabled:
            return None
        if self.assign == "last_digit":
            last = cad_ref[-1:]
            if not (last.isascii() and last.isdigit()):
                return None
            return "treatment" if int(last) % 2 == 0 else "control"
        block, place = divmod(position, self.block_size)
        order = [*ARMS] * (self.block_size // 2)
        random.Random(f"{self.seed}:{block}").shuffle(order)
        return order[place]


# -- 95 % intervals ---------------------------------------------------------------------------


def _wilson(successes: int, n: int) -> tuple[float, float]:
    p = successes / n
    centre = (p + Z * Z / (2 * n)) / (1 + Z * Z / n)
    half = Z * math.sqrt(p * (1 - p) / n + Z * Z / (4 * n * n)) / (1 + Z * Z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def wilson(successes: int, n: int) -> Optional[tuple[float, float]]:
    """The Wilson score interval of a share, in percent (None for no observations)."""
    if n <= 0:
        return None
    low, high = _wilson(successes, n)
    return (round(100 * low, 1), round(100 * high, 1))


def newcombe(a: tuple[int, int], b: tuple[int, int]) -> Optional[tuple[float, float, float]]:
    """The difference of two shares (``(successes, n)`` each) in percentage points, with
    Newcombe's hybrid score interval: (difference, low, high)."""
    if a[1] <= 0 or b[1] <= 0:
        return None
    (la, ua), (lb, ub) = _wilson(*a), _wilson(*b)  # unrounded: rounding is for the answer only
    pa, pb = a[0] / a[1], b[0] / b[1]
    d = pa - pb
    low = d - math.sqrt((pa - la) ** 2 + (ub - pb) ** 2)
    high = d + math.sqrt((ua - pa) ** 2 + (pb - lb) ** 2)
    return (round(100 * d, 1), round(100 * low, 1), round(100 * high, 1))


def median_ranks(n: int) -> Optional[tuple[int, int]]:
    """The ranks (1-based, of the sorted values) bounding a median's distribution-free 95 %
    interval: the normal approximation of the binomial, n/2 ± z·√n/2 (None below 6
    values, where no interval reaches 95 %)."""
    if n < 6:
        return None
    half = Z * math.sqrt(n) / 2
    return (max(1, math.floor(n / 2 - half)), min(n, math.ceil(n / 2 + 1 + half)))

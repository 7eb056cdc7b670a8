"""Monitoring-plugin semantics: threshold ranges, states, performance data.

Follows the Monitoring Plugins Development Guidelines: states 0 OK, 1 WARNING,
2 CRITICAL, 3 UNKNOWN; ranges ``10`` (outside 0..10), ``10:`` (below 10),
``~:10`` (above 10), ``10:20`` (outside), ``@10:20`` (inside) alert.
"""

import math
import re
from dataclasses import dataclass, field
from typing import List, Optional

OK, WARNING, CRITICAL, UNKNOWN = 0, 1, 2, 3
STATE_NAMES = {OK: "OK", WARNING: "WARNING", CRITICAL: "CRITICAL", UNKNOWN: "UNKNOWN"}


class RangeError(ValueError):
    pass


_NUMBER = r"-?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)"  # the perfdata's [-0-9.] and nothing else
# @? then either "end" alone, or "start:" / "start:end" / ":end" with start a number or ~
_RANGE = re.compile(rf"(@)?(?:({_NUMBER}|~)?(:))?({_NUMBER})?")


@dataclass(frozen=True)
class Range:
    """A threshold range; ``alerts(value)`` says whether the value is outside it
    (or inside, for ``@`` ranges)."""

    text: str
    start: float
    end: float
    inside: bool = False

    @classmethod
    def parse(cls, text: str) -> "Range":
        """Strictly the guidelines' ``[@][start:]end`` with ``~`` for minus infinity:
        the text goes into the perfdata as given, so anything Python's float() would
        also take ("nan", " 5", "infinity", "1e3", "1_0") is refused."""
        match = _RANGE.fullmatch(text)
        if not match or not (match.group(2) or match.group(4)):  # "", "@", ":" say nothing
            raise RangeError(f"'{text}' is not a threshold range (e.g. 10, 10:, ~:10, 10:20, @10:20)")
        inside, low, colon, high = match.groups()
        if colon:
            start = -math.inf if low == "~" else float(low or 0)
            end = math.inf if not high else float(high)
        else:
            start, end = 0.0, float(high)
        if start > end:
            raise RangeError(f"threshold range '{text}' starts above its end")
        return cls(text, start, end, bool(inside))

    def alerts(self, value: float) -> bool:
        within = self.start <= value <= self.end
        return within if self.inside else not within


@dataclass
class Outcome:
    """What a check reports: state, one status line, perfdata, detail lines."""

    state: int
    message: str
    perfdata: List[str] = field(default_factory=list)
    details: List[str] = field(default_factory=list)

    @property
    def state_name(self):
        return STATE_NAMES[self.state]


def perfdata(label, value, unit="", warning=None, critical=None, minimum=None, maximum=None) -> str:
    """``label=value[UOM];warn;crit;min;max`` with trailing empty fields dropped."""
    def number(x):
        return "" if x is None else (f"{x:.6f}".rstrip("0").rstrip(".") if isinstance(x, float) else str(x))

    shown = "U" if value is None else number(value) + unit
    fields = [shown, warning.text if warning else "", critical.text if critical else "",
              number(minimum), number(maximum)]
    while len(fields) > 1 and fields[-1] == "":
        fields.pop()
    quoted = f"'{label}'" if " " in label or "=" in label else label
    return f"{quoted}={';'.join(fields)}"


def threshold_state(value: Optional[float], warning: Optional[Range], critical: Optional[Range]) -> int:
    if value is None:
        return OK
    if critical and critical.alerts(value):
        return CRITICAL
    if warning and warning.alerts(value):
        return WARNING
    return OK

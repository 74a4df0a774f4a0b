"""Command-line value types that refuse what a float() accepts but no run can use."""
from __future__ import annotations

import math

import click

MAX_SECONDS = 10 ** 9       # about 31 years: more is a typo, and overflows nanoseconds


class Seconds(click.ParamType):
    """A duration in seconds: finite, above 0 (or at 0 with `zero_ok`), at most MAX_SECONDS.
    `float("nan")`, "inf" and "1e308" parse as floats; each is a one-line usage error here."""
    name = "seconds"

    def __init__(self, zero_ok: bool = False):
        self.zero_ok = zero_ok

    def convert(self, value, param, ctx):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            number = float(value)
        else:
            try:
                number = float(str(value).strip())
            except ValueError:
                self.fail(f"{value!r} is not a number of seconds", param, ctx)
        low_ok = number >= 0 if self.zero_ok else number > 0
        if not (math.isfinite(number) and low_ok and number <= MAX_SECONDS):
            bound = "0 or more" if self.zero_ok else "more than 0"
            self.fail(f"{value!r}: a finite number of seconds, {bound} and at most "
                      f"{MAX_SECONDS:,}", param, ctx)
        return number


SECONDS = Seconds()

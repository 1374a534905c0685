"""The duration histogram's bucket scheme, shared by the timing plugin and the C accelerator.

Owns one thing: how a duration maps to a log-linear bucket and back. A bucket is
the duration's bit length plus its ``MANTISSA_BITS + 1`` leading bits, so there
are ``2**MANTISSA_BITS`` buckets per power of two (relative width 1/64) and one
bucket per unit below 128. ``agent/_speedups.c`` uses the same scheme on clock
ticks; ``agent.speedups`` maps tick buckets to nanosecond buckets with it.
"""

from __future__ import annotations

MANTISSA_BITS = 6
"""Buckets per power of two are ``2**MANTISSA_BITS``: relative bucket width 1/64."""
LINEAR = 1 << (MANTISSA_BITS + 1)
"""Below this, one bucket per unit."""


def bucket_of(duration: int) -> int:
    """Histogram bucket of a duration (``>= 0``); buckets are ordered like durations."""
    shift = duration.bit_length() - MANTISSA_BITS - 1
    if shift <= 0:
        return duration
    return (shift << MANTISSA_BITS) + (duration >> shift)


def bucket_bounds(bucket: int) -> tuple[int, int]:
    """The smallest and largest duration that fall in ``bucket`` (inclusive)."""
    if bucket < LINEAR:
        return bucket, bucket
    shift = (bucket >> MANTISSA_BITS) - 1
    mantissa = bucket - (shift << MANTISSA_BITS)
    return mantissa << shift, ((mantissa + 1) << shift) - 1

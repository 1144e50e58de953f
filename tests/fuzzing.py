"""Hypothesis settings and strategies the property tests share.

Two sizes: the default ``fast`` profile runs a tenth of the examples, so the
whole suite stays quick; ``ALPACA_PROXY_FUZZ=deep`` runs them all (before a
release, or after touching a codec, a dialect or the client handler).
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

#: "fast" (default) or "deep".
PROFILE = os.environ.get("ALPACA_PROXY_FUZZ", "fast").strip().lower()


def examples(deep: int) -> settings:
    """Settings for a property: ``deep`` examples in the deep profile, a tenth otherwise."""
    count = deep if PROFILE == "deep" else max(20, deep // 10)
    return settings(max_examples=count, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


scalars = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2 ** 63), max_value=2 ** 64 - 1),
    st.floats(allow_nan=True), st.text(max_size=20), st.binary(max_size=20),
)
#: Any value a decoded JSON or MessagePack message may hold.
values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=5), st.dictionaries(st.text(max_size=8), inner, max_size=5)),
    max_leaves=30)

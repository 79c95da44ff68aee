"""Token statistics per endpoint and model, as NOMYO Router keeps them.

Every upstream answer that reports its usage is counted here with
:meth:`TokenStats.record` (prompt and completion tokens, by the endpoint URL and the
model name the endpoint knows). Counting is synchronous and never fails a request.
"""

from __future__ import annotations

import time
from collections import defaultdict

__all__ = ["TokenStats"]


class TokenStats:
    """The token counts of this process, per ``(endpoint, model)``."""

    def __init__(self) -> None:
        #: ``(endpoint, model)`` -> ``[input_tokens, output_tokens]`` since start-up.
        self.totals: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0])
        self.started = time.time()

    def record(self, endpoint: str, model: str, input_tokens: int | None, output_tokens: int | None) -> None:
        """Count one answer's usage (``None`` counts as 0; negative or non-int values are ignored)."""
        counts = self.totals[(endpoint, model)]
        for i, value in enumerate((input_tokens, output_tokens)):
            if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                counts[i] += value

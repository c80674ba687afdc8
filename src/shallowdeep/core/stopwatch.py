"""Where a job's time went: seconds by part, as run.json's and report.json's ``time_parts`` hold them."""

from __future__ import annotations

import time


class Stopwatch:
    """Seconds by part. ``lap(part)`` adds the time since the last reading (or the start) to
    ``part``; ``add(part, since)`` the time since a clock reading of the caller's. Both return now."""

    def __init__(self) -> None:
        self.parts: dict[str, float] = {}
        self._last = time.perf_counter()

    def lap(self, part: str) -> float:
        """Add the time since the last reading to ``part``."""
        return self.add(part, self._last)

    def add(self, part: str, since: float) -> float:
        """Add the time since ``since`` (a ``time.perf_counter()`` reading) to ``part``."""
        now = time.perf_counter()
        self.add_seconds(part, now - since)
        self._last = now
        return now

    def add_seconds(self, part: str, seconds: float) -> None:
        """Add ``seconds`` to ``part``."""
        self.parts[part] = self.parts.get(part, 0.0) + seconds

    def merged(self, earlier: dict[str, float]) -> dict[str, float]:
        """These parts added to an earlier call's (a resumed run's), by sorted part name."""
        keys = sorted(set(earlier) | set(self.parts))
        return {k: earlier.get(k, 0.0) + self.parts.get(k, 0.0) for k in keys}

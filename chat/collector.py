"""Python's cyclic garbage collector, watched: each full collection timed for /metrics.

A full collection (generation 2) walks every container object of the process, and the event
loop writes to no client meanwhile: at 10,000 sessions (about 150,000 objects) one takes 25-120
ms on the benchmark machine. `pynet_gc_pause_seconds` shows how often that happens and for how
long, beside the fan-out's own times, when an operator looks for where clients waited.

Why the collector is only watched, not steered: a handover grows the objects of both releases at
once, so full collections were suspected in the pause. Measured at 10,000 sessions (three
handovers, every full collection logged with its time): the successor's came during its
pre-copy, while the predecessor still served, and the predecessor's after it had handed over;
none in a pause, none while a release served. Switching collection off for the handover and
freezing what was taken over (`gc.freeze()`) was built and run against the code without it, two
rounds alternating: no difference beyond the runs' spread, and the freeze would have kept the
cyclic garbage of every session taken over that ends later (about 1.1 KB each). So it was left
out (bench/README.md, "The garbage collector and handovers").
"""

from __future__ import annotations

import gc
import time

from chat.metrics import Histogram, Metrics

#: Buckets of `pynet_gc_pause_seconds`: 1 ms .. 1 s.
PAUSE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)


class PauseWatch:
    """Times every collection of the oldest generation into METRICS (`gc_pauses`). The
    collector calls it at both ends of every collection; for the younger generations (most of
    them) it only compares an int."""

    def __init__(self, metrics: Metrics) -> None:
        self.histogram = metrics.gc_pauses = Histogram(PAUSE_BUCKETS)
        self._began = 0.0

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if info.get("generation") != 2:
            return
        if phase == "start":
            self._began = time.perf_counter()
        else:
            self.histogram.observe(time.perf_counter() - self._began)

    def install(self) -> PauseWatch:
        gc.callbacks.append(self)
        return self

    def remove(self) -> None:
        if self in gc.callbacks:
            gc.callbacks.remove(self)

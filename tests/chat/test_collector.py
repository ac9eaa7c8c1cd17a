"""chat/collector.py: full garbage collections timed for /metrics, and only those."""

from __future__ import annotations

import gc

from chat import collector
from chat.metrics import Metrics


def test_only_full_collections_are_timed_and_only_while_watched() -> None:
    metrics = Metrics()
    watch = collector.PauseWatch(metrics).install()
    try:
        gc.collect(0)
        gc.collect(1)
        assert metrics.gc_pauses is not None
        assert sum(metrics.gc_pauses.counts) == 0
        gc.collect(2)
        gc.collect()
        assert sum(metrics.gc_pauses.counts) == 2
        assert 0 < metrics.gc_pauses.sum < 5
    finally:
        watch.remove()
    gc.collect()
    assert sum(metrics.gc_pauses.counts) == 2


def test_the_scrape_shows_the_pauses_once_watched() -> None:
    metrics = Metrics()
    assert "pynet_gc_pause_seconds" not in {family.name for family in metrics.families()}
    watch = collector.PauseWatch(metrics).install()
    try:
        gc.collect()
        families = {family.name: family for family in metrics.families()}
    finally:
        watch.remove()
    samples = {name: value for name, _, value in families["pynet_gc_pause_seconds"].samples}
    assert samples["pynet_gc_pause_seconds_count"] == 1
    assert samples["pynet_gc_pause_seconds_sum"] > 0

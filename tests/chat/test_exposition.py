"""chat/exposition.py against prometheus_client, the library it replaces in the server: the same
families give the same bytes, and the process figures have the same names, types and help."""

from __future__ import annotations

import math
import os
import resource

import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, ProcessCollector, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from chat import exposition
from chat.exposition import Family
from chat.metrics import Histogram, Metrics, ProcessFigures


def by_the_library(families: list[Family]) -> bytes:
    """What prometheus_client writes for FAMILIES (rebuilt as its own metric objects)."""
    rebuilt = []
    for family in families:
        name = family.name.removesuffix("_total") if family.kind == "counter" else family.name
        metric = Metric(name, family.help, family.kind)
        for sample, labels, value in family.samples:
            metric.add_sample(sample, dict(labels), value)
        rebuilt.append(metric)

    class Fixed(Collector):
        def collect(self) -> list[Metric]:
            return rebuilt

    registry = CollectorRegistry(auto_describe=False)
    registry.register(Fixed())
    return generate_latest(registry)


def a_server_that_counted() -> Metrics:
    metrics = Metrics(release='v"1\\2\n')  # every character the format escapes
    metrics.accepted = 12
    metrics.deliveries = 10**12  # Go writes an exponent sooner than Python
    metrics.bytes_sent = 123456789
    metrics.disconnect("eof", 3)
    metrics.disconnect("some new-word")
    metrics.error("flood", 2)
    metrics.fanout.observe(0.0003)
    metrics.fanout.observe(7.0)
    metrics.commit.observe(0.00001)
    metrics.handover(0.035)
    metrics.backplane_lag = math.inf
    return metrics


@pytest.mark.parametrize("metrics", [Metrics(), a_server_that_counted()], ids=["new", "counted"])
def test_the_servers_families_are_written_as_prometheus_client_writes_them(
    metrics: Metrics,
) -> None:
    families = metrics.families()
    assert exposition.render(families) == by_the_library(families)


def test_the_library_reads_back_what_was_written() -> None:
    text = exposition.render(a_server_that_counted().families()).decode()
    parsed = {family.name: family for family in text_string_to_metric_families(text)}
    assert parsed["pynet_info"].samples[0].labels == {"release": 'v"1\\2\n'}
    assert parsed["pynet_connections_accepted"].type == "counter"
    assert parsed["pynet_connections_accepted"].samples[0].value == 12
    assert parsed["pynet_deliveries"].samples[0].value == 10**12
    fanout = {
        s.name + s.labels.get("le", ""): s.value
        for s in parsed["pynet_fanout_duration_seconds"].samples
    }
    assert fanout["pynet_fanout_duration_seconds_bucket0.0005"] == 1
    assert fanout["pynet_fanout_duration_seconds_bucket+Inf"] == 2
    assert fanout["pynet_fanout_duration_seconds_count"] == 2
    assert math.isinf(parsed["pynet_backplane_lag_seconds"].samples[0].value)


label_text = st.text(st.characters(blacklist_categories=["Cs"]), max_size=20)
value = st.one_of(st.integers(-(10**20), 10**20), st.floats(allow_nan=True, allow_infinity=True))


@given(
    help=label_text,
    labels=st.dictionaries(label_text, value, max_size=4),
    observed=st.lists(st.floats(0, 10), max_size=20),
)
def test_any_help_labels_and_values_come_out_as_the_librarys(
    help: str, labels: dict[str, float], observed: list[float]
) -> None:
    histogram = Histogram()
    for seconds in observed:
        histogram.observe(seconds)
    families = [
        exposition.labelled_gauge("a_gauge", help, "who", labels),
        exposition.labelled_counter("a_counter", help, "why", labels),
        histogram.family("a_histogram_seconds", help),
    ]
    assert exposition.render(families) == by_the_library(families)


@pytest.mark.parametrize(
    ("value", "written"),
    [
        (1, "1.0"),
        (0.5, "0.5"),
        (1796670234.5147128, "1.7966702345147128e+09"),
        (1e12, "1e+12"),
        (1234567.0, "1.234567e+06"),
        (123456.0, "123456.0"),
        (-1234567.0, "-1234567.0"),
        (math.nan, "NaN"),
        (math.inf, "+Inf"),
        (-math.inf, "-Inf"),
    ],
)
def test_numbers_are_written_as_go_writes_them(value: float, written: str) -> None:
    assert exposition.number(value) == written


def test_the_process_figures_are_the_ones_prometheus_client_gives() -> None:
    """Same names, types, help and order as its ProcessCollector; the values of this process."""
    registry = CollectorRegistry(auto_describe=False)
    ProcessCollector(registry=registry)
    theirs = list(text_string_to_metric_families(generate_latest(registry).decode()))
    ours = list(
        text_string_to_metric_families(exposition.render(ProcessFigures().families()).decode())
    )
    assert [(f.name, f.type, f.documentation) for f in ours] == [
        (f.name, f.type, f.documentation) for f in theirs
    ]
    value = {f.name: f.samples[0].value for f in ours}
    expected = {f.name: f.samples[0].value for f in theirs}
    assert value["process_max_fds"] == resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    assert value["process_max_fds"] == expected["process_max_fds"]
    assert value["process_start_time_seconds"] == pytest.approx(
        expected["process_start_time_seconds"], abs=0.01
    )
    assert abs(value["process_open_fds"] - len(os.listdir("/proc/self/fd"))) <= 2
    assert value["process_resident_memory_bytes"] > 1 << 20
    assert 0 < value["process_cpu_seconds"] <= expected["process_cpu_seconds"] + 1


def test_without_proc_there_are_no_process_figures(tmp_path: os.PathLike[str]) -> None:
    assert ProcessFigures(str(tmp_path)).families() == []

"""Event sinks: where a line monitor's events go. `open_sink(url)` picks one from the URL (see urls.py)."""

from __future__ import annotations

from cseg.track.sinks.base import QueuedSink, SinkError
from cseg.track.sinks.urls import SinkUrl, parse_sink_url


def open_sink(url: str, *, station: str = "station", queue_size: int = 1000) -> QueuedSink:
    """A started sink for `url`: mqtt://..., mqtts://..., opc.tcp://..., or a JSON-lines file path."""
    target = parse_sink_url(url)
    if target.scheme == "file":
        from cseg.track.sinks.jsonl import JsonlSink

        return JsonlSink(target.path, queue_size=max(queue_size, 1))
    if target.scheme.startswith("mqtt"):
        from cseg.track.sinks.mqtt import MqttSink

        return MqttSink(url, station=station, queue_size=queue_size)
    from cseg.track.sinks.opcua import OpcUaSink

    return OpcUaSink(url, station=station, queue_size=queue_size)


__all__ = ["QueuedSink", "SinkError", "SinkUrl", "open_sink", "parse_sink_url"]

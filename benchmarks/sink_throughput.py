"""N events through the MQTT sink (a mosquitto started here: start_mosquitto, also used by rule_fanout.py) and the OPC UA sink; what arrived, lost, repeated.

    .venv/bin/python benchmarks/sink_throughput.py [--events 10000]     (also: conveyor.py --sinks N)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(check, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.01)
    return False


def start_mosquitto():
    """(a mosquitto process on 127.0.0.1, its port), or (None, None) without the binary; the caller kills it."""
    binary = shutil.which("mosquitto") or shutil.which("mosquitto", path="/usr/sbin")
    if binary is None:
        return None, None
    port = _free_port()
    config = Path(tempfile.mkdtemp()) / "mosquitto.conf"
    config.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\nmax_queued_messages 0\n")
    broker = subprocess.Popen([binary, "-c", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _wait(lambda: socket.socket().connect_ex(("127.0.0.1", port)) == 0, 10)
    return broker, port


def _events(count: int):
    from cseg.track import Event

    for seq in range(1, count + 1):
        yield Event("count", seq, "st", seq, float(seq), track_id=seq, count=seq), {"parts": seq, "frames": seq}


def mqtt_throughput(count: int) -> dict:
    import paho.mqtt.client as mqtt

    from cseg.track import Event
    from cseg.track.sinks.mqtt import MqttSink

    broker, port = start_mosquitto()
    if broker is None:
        return {"skipped": "no mosquitto binary"}
    try:
        received = []
        subscriber = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv311)
        subscribed = []
        subscriber.on_connect = lambda c, *a: c.subscribe("bench/st/events", qos=1)
        subscriber.on_subscribe = lambda *a: subscribed.append(1)
        subscriber.on_message = lambda c, u, m: received.append(Event.from_json(m.payload).seq)
        subscriber.connect("127.0.0.1", port)
        subscriber.loop_start()
        _wait(lambda: subscribed, 10)
        sink = MqttSink(f"mqtt://127.0.0.1:{port}/bench", station="st", queue_size=count)
        sink.wait_connected(10)
        started = time.perf_counter()
        for event, counts in _events(count):
            sink.send(event, counts)
        _wait(lambda: len(received) >= count, 120)
        elapsed = time.perf_counter() - started
        time.sleep(0.5)
        stats = sink.close()
        subscriber.disconnect()
        subscriber.loop_stop()
        return {"events": count, "received_unique": len(set(received)), "repeated": len(received) - len(set(received)),
                "dropped": stats["dropped"], "seconds": round(elapsed, 2),
                "ms_per_event": round(elapsed / count * 1000, 3)}  # fmt: skip
    finally:
        broker.kill()
        broker.wait(10)


def opcua_throughput(count: int) -> dict:
    from asyncua import Client

    from cseg.track.sinks.opcua import NAMESPACE, OpcUaSink

    url = f"opc.tcp://127.0.0.1:{_free_port()}/bench"
    sink = OpcUaSink(url, station="st", queue_size=count)
    received = []

    class Handler:
        def event_notification(self, event):
            received.append(event.ResultId)

    async def run():
        async with Client(url, timeout=30) as client:
            idx = await client.get_namespace_index(NAMESPACE)
            station = await client.nodes.objects.get_child(f"{idx}:st")
            event_type = await client.nodes.root.get_child(["0:Types", "0:EventTypes", "0:BaseEventType",
                                                            f"{idx}:ResultReadyEventType"])  # fmt: skip
            subscription = await client.create_subscription(50, Handler())
            await subscription.subscribe_events(station, event_type, queuesize=count)
            started = time.perf_counter()
            for event, counts in _events(count):
                sink.send(event, counts)
            deadline = time.monotonic() + 300
            while len(received) < count and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            elapsed = time.perf_counter() - started
            parts = await (await station.get_child(f"{idx}:PartsCounted")).read_value()
            return elapsed, parts

    try:
        elapsed, parts = asyncio.run(run())
    finally:
        stats = sink.close()
    return {"events": count, "received_unique": len(set(received)), "repeated": len(received) - len(set(received)),
            "dropped": stats["dropped"], "PartsCounted": parts, "seconds": round(elapsed, 2),
            "ms_per_event": round(elapsed / count * 1000, 3)}  # fmt: skip


def sink_throughput(count: int) -> dict:
    return {"mqtt": mqtt_throughput(count), "opcua": opcua_throughput(count)}


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=10000)
    print(json.dumps(sink_throughput(parser.parse_args().events), indent=1))

"""Sinks against real components on loopback: a mosquitto broker started here (killed and restarted mid-run) with a
paho subscriber, and an asyncua client of the OPC UA sink's server. Every wait is bounded."""

from __future__ import annotations

import asyncio
import getpass
import json
import shutil
import socket
import subprocess
import threading
import time

import pytest

from cseg.track import DefectRule, Event, LineMonitor
from cseg.track.synthetic import Conveyor, ConveyorSpec

MOSQUITTO = shutil.which("mosquitto") or shutil.which("mosquitto", path="/usr/sbin:/usr/local/sbin")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(check, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")


class Broker:
    """mosquitto on 127.0.0.1:port with a config of its own (no persistence: a restart forgets everything)."""

    def __init__(self, tmp_path, tls: tuple | None = None):
        self.port = free_port()
        self.config = tmp_path / "mosquitto.conf"
        lines = [f"listener {self.port} 127.0.0.1", "allow_anonymous true", "persistence false"]
        if tls is not None:  # (ca, certificate, key) files: this listener speaks TLS only. Started as root,
            # mosquitto drops to its own user, which cannot read pytest's private tmp folders: stay this user
            lines += [f"cafile {tls[0]}", f"certfile {tls[1]}", f"keyfile {tls[2]}", f"user {getpass.getuser()}"]
        self.config.write_text("\n".join(lines) + "\n")
        self.process = None

    def start(self):
        self.process = subprocess.Popen([MOSQUITTO, "-c", str(self.config)], stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL)  # fmt: skip

        def listening():
            with socket.socket() as s:
                return s.connect_ex(("127.0.0.1", self.port)) == 0

        wait_for(listening, 10, f"mosquitto on port {self.port}")

    def kill(self):
        self.process.kill()
        self.process.wait(10)


@pytest.fixture
def broker(tmp_path):
    if MOSQUITTO is None:
        pytest.skip("the mosquitto binary is missing (make install adds it where apt-get exists)")
    broker = Broker(tmp_path)
    broker.start()
    yield broker
    if broker.process.poll() is None:
        broker.kill()


class Subscriber:
    """A paho client that (re)subscribes on every connect and keeps what arrives."""

    def __init__(self, port: int, base: str, ca: str | None = None):
        import paho.mqtt.client as mqtt

        self.events, self.counts, self.subscribed = [], [], threading.Event()
        self.base = base
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv311)
        if ca is not None:
            self.client.tls_set(ca_certs=ca)
        self.client.reconnect_delay_set(0.05, 0.2)
        self.client.on_connect = lambda c, u, f, r, p=None: c.subscribe(f"{base}/#", qos=1)
        self.client.on_subscribe = lambda *args: self.subscribed.set()
        self.client.on_disconnect = lambda *args: self.subscribed.clear()
        self.client.on_message = self._message
        self.client.connect_async("127.0.0.1", port, keepalive=5)
        self.client.loop_start()

    def _message(self, client, userdata, message):
        if message.topic.endswith("/events"):
            self.events.append(Event.from_json(message.payload).seq)
        elif message.topic.endswith("/count"):
            self.counts.append(json.loads(message.payload))

    def close(self):
        self.client.disconnect()
        self.client.loop_stop()


def count_event(seq: int) -> tuple[Event, dict]:
    return Event("count", seq, "st", seq, float(seq), track_id=seq, count=seq), {"parts": seq, "frames": seq}


def send_and_receive(sink, subscriber, count: int, timeout: float, what: str) -> None:
    """Once sink and subscriber are connected, `count` count events through the broker: each arrives, once."""
    sink.wait_connected(10)
    wait_for(subscriber.subscribed.is_set, 10, f"the {what} subscription")
    for seq in range(1, count + 1):
        sink.send(*count_event(seq))
    wait_for(lambda: len(subscriber.events) >= count, timeout, f"{count} {what} events at the subscriber")
    time.sleep(0.2)  # a duplicate would arrive now
    assert sorted(subscriber.events) == list(range(1, count + 1))


def test_mqtt_every_event_arrives_once_and_the_count_is_retained(broker):
    from cseg.track.sinks import open_sink

    url = f"mqtt://127.0.0.1:{broker.port}/plant/line1"
    subscriber = Subscriber(broker.port, "plant/line1/st")
    sink = open_sink(url, station="st", queue_size=1000)
    try:
        send_and_receive(sink, subscriber, 500, 20, "MQTT")
        late = Subscriber(broker.port, "plant/line1/st")  # subscribes after the fact: gets the retained total
        wait_for(lambda: late.counts, 10, "the retained count")
        assert late.counts[-1]["parts"] == 500
        late.close()
        stats = sink.close()
        assert stats["sent"] == 500 and stats["dropped"] == 0 and stats["acked"] == stats["published"]
    finally:
        subscriber.close()


@pytest.mark.parametrize("outage_s", [0.0, pytest.param(10.0, marks=pytest.mark.slow)])
def test_mqtt_broker_killed_mid_run_counts_stay_right_and_loss_is_reported(broker, outage_s):
    from cseg.track.sinks.mqtt import MqttSink

    subscriber = Subscriber(broker.port, "plant/st")
    sink = MqttSink(f"mqtt://127.0.0.1:{broker.port}/plant", station="st", queue_size=10, reconnect=(1.0, 2.0))
    try:
        sink.wait_connected(10)
        wait_for(subscriber.subscribed.is_set, 10, "the subscription")
        for seq in range(1, 21):  # paced: a burst beyond queue_size would drop the oldest (as it should)
            sink.send(*count_event(seq))
            assert sink.flush(5)
        wait_for(lambda: len(subscriber.events) >= 20, 10, "the first 20 events")
        broker.kill()
        wait_for(lambda: not sink.connected(), 10, "the sink to notice the broker is gone")
        started = time.perf_counter()
        for seq in range(21, 51):  # the loop goes on: send() never waits for the network
            sink.send(*count_event(seq))
        assert time.perf_counter() - started < 0.5
        assert sink.stats()["dropped"] == 20 and sink.stats()["queued"] == 10  # the oldest 20 of 30 dropped, counted
        time.sleep(outage_s)
        broker.start()
        wait_for(lambda: 50 in subscriber.events, 20, "the queued events after the broker came back")
        wait_for(lambda: subscriber.counts and subscriber.counts[-1]["parts"] == 50, 10, "the retained count 50")
        time.sleep(0.2)
        assert sorted(subscriber.events) == list(range(1, 21)) + list(range(41, 51))  # each once; the gap = dropped
        assert sink.stats()["dropped"] == 20
    finally:
        sink.close(timeout=2)
        subscriber.close()


def make_certificates(folder) -> tuple[str, str, str]:
    """A throwaway CA and a server certificate for 127.0.0.1 signed by it (openssl, EC keys: fast)."""
    def run(*args):
        subprocess.run(["openssl", *args], cwd=folder, check=True, capture_output=True, timeout=60)

    key = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    run("req", "-x509", *key, "-keyout", "ca.key", "-out", "ca.crt", "-days", "2", "-subj", "/CN=cseg test CA")
    run("req", *key, "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=127.0.0.1")
    (folder / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    run("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial", "-out",
        "server.crt", "-days", "2", "-extfile", "san.ext")  # fmt: skip
    return tuple(str(folder / name) for name in ("ca.crt", "server.crt", "server.key"))


def test_mqtts_events_arrive_over_tls_and_a_wrong_ca_is_refused_by_name(tmp_path, monkeypatch):
    """mqtts:// against a mosquitto TLS listener with a throwaway CA: with CSEG_MQTT_CA every event arrives once;
    a CA file that is missing or not a certificate is named, not an ssl traceback; a CA that did not sign the
    broker's certificate never connects, and what the sink could not deliver is counted."""
    from cseg.errors import InvalidInputError
    from cseg.track.sinks.mqtt import MqttSink

    if MOSQUITTO is None or shutil.which("openssl") is None:
        pytest.skip("needs the mosquitto and openssl binaries")
    ca, certificate, key = make_certificates(tmp_path)
    broker = Broker(tmp_path, tls=(ca, certificate, key))
    broker.start()
    url = f"mqtts://127.0.0.1:{broker.port}/plant"
    try:
        monkeypatch.setenv("CSEG_MQTT_CA", ca)
        subscriber = Subscriber(broker.port, "plant/st", ca=ca)
        sink = MqttSink(url, station="st", queue_size=100)
        try:
            send_and_receive(sink, subscriber, 50, 10, "TLS")
            assert sink.close()["dropped"] == 0
        finally:
            subscriber.close()

        for bad, words in ((tmp_path / "missing.crt", "no such file"), (tmp_path / "san.ext", "not a PEM CA")):
            monkeypatch.setenv("CSEG_MQTT_CA", str(bad))
            with pytest.raises(InvalidInputError, match=words):
                MqttSink(url, station="st")

        other = tmp_path / "other"
        other.mkdir()
        monkeypatch.setenv("CSEG_MQTT_CA", make_certificates(other)[0])  # a CA that did not sign the broker's
        sink = MqttSink(url, station="st", queue_size=100, reconnect=(0.2, 0.5))
        for seq in range(1, 6):
            sink.send(*count_event(seq))
        time.sleep(1.0)  # handshakes fail meanwhile
        assert not sink.stats()["connected"]
        assert sink.close(timeout=0.5)["dropped"] == 5  # nothing delivered, all of it reported lost
    finally:
        broker.kill()


def test_mqtt_unreachable_broker_never_blocks_and_counts_the_loss():
    from cseg.track.sinks.mqtt import MqttSink

    url = f"mqtt://127.0.0.1:{free_port()}/plant"
    sink = MqttSink(url, station="st", queue_size=5)
    try:
        started = time.perf_counter()
        for seq in range(1, 13):
            sink.send(*count_event(seq))
        assert time.perf_counter() - started < 0.5
        stats = sink.stats()
        assert not stats["connected"] and stats["dropped"] == 7 and stats["queued"] == 5
        from cseg.track.sinks import SinkError

        with pytest.raises(SinkError, match=url):
            sink.wait_connected(0.5)
    finally:
        assert sink.close(timeout=0.5)["dropped"] == 12  # what never left is reported as lost at close


def test_opcua_client_reads_counters_and_receives_result_events():
    pytest.importorskip("asyncua")
    from asyncua import Client

    from cseg.track.sinks.opcua import NAMESPACE, OpcUaSink

    url = f"opc.tcp://127.0.0.1:{free_port()}/cseg"
    sink = OpcUaSink(url, station="st")
    conveyor = Conveyor(ConveyorSpec(ratio=0.75, parts=8, seed=4, defective=0.4))
    monitor = LineMonitor(conveyor.line, station="st", sinks=[sink], rule_id="r1", rule_version="v1",
                          defects=DefectRule(2, 3))
    received = []

    class Handler:
        def event_notification(self, event):
            received.append(event)

    async def client():
        async with Client(url, timeout=10) as client:
            idx = await client.get_namespace_index(NAMESPACE)
            station = await client.nodes.objects.get_child(f"{idx}:st")
            event_type = await client.nodes.root.get_child(
                ["0:Types", "0:EventTypes", "0:BaseEventType", f"{idx}:ResultReadyEventType"])
            subscription = await client.create_subscription(20, Handler())
            await subscription.subscribe_events(station, event_type)
            events = []
            for frame in conveyor:  # the loop runs in this thread; the server in its own
                events += monitor.update(frame.detections, frame.t)
            events += monitor.finish()
            for _ in range(200):
                if len(received) >= len(events):
                    break
                await asyncio.sleep(0.05)
            values = {name: await (await station.get_child(f"{idx}:{name}")).read_value()
                      for name in ("PartsCounted", "DefectsCounted", "LastResultId")}  # fmt: skip
            return events, values

    try:
        events, values = asyncio.run(asyncio.wait_for(client(), 60))
    finally:
        stats = sink.close()
    assert monitor.counts["parts"] == 8 and monitor.counts["defects"] == len(conveyor.defective_ids) > 0
    assert values["PartsCounted"] == 8 and values["DefectsCounted"] == monitor.counts["defects"]
    assert values["LastResultId"] == f"st-{events[-1].seq}"
    assert [e.ResultId for e in received] == [f"st-{e.seq}" for e in events]
    assert {e.ResultState for e in received} == {1, 2}
    assert all(e.InternalRecipeId == "r1" and e.ExternalRecipeId == "v1" for e in received)
    assert stats["sent"] == len(events) and stats["dropped"] == 0

"""`MqttSink`: events to an MQTT broker with paho-mqtt 2.x, QoS 1.

Topics under the URL's base topic, per station: `<base>/<station>/events` (every event, QoS 1, not retained) and
`<base>/<station>/count` (the station's counts, QoS 1, RETAINED: a dashboard that subscribes later, or after the
broker restarted, gets the current total at once; it is republished on every (re)connect).

paho reconnects by itself (`reconnect` bounds its back-off) and resends QoS-1 messages that were in flight when the
connection dropped; the sink hands paho a message only while connected and caps paho's own queue, so what waits is
bounded by this sink's queue (oldest dropped and counted) plus `queue_size` messages inside paho. QoS 1 is at least
once: a consumer drops repeats by the event's `seq`. Credentials: from the URL, else CSEG_MQTT_USERNAME /
CSEG_MQTT_PASSWORD; TLS with mqtts:// (CA file from CSEG_MQTT_CA, else the system's).
"""

from __future__ import annotations

import json
import os
import ssl
import threading
import uuid

from cseg.errors import InvalidInputError
from cseg.track.sinks.base import QueuedSink, SinkError
from cseg.track.sinks.urls import SinkUrl, parse_sink_url


def mqtt_client(target: SinkUrl, name: str, reconnect: tuple[float, float]):
    """(a paho 2.x client for an mqtt:// or mqtts:// target, paho.mqtt.client): MQTT 3.1.1, a unique client id
    starting with `name`, credentials from the URL else CSEG_MQTT_USERNAME / CSEG_MQTT_PASSWORD, TLS for mqtts://
    (CA file from CSEG_MQTT_CA, else the system's), paho's reconnect back-off bounded by `reconnect` (first, longest
    wait in seconds). Shared by the events sink and the rules feed (cseg.runtime.rule_feed)."""
    try:
        import paho.mqtt.client as mqtt
    except ImportError as exc:
        raise ImportError("MQTT needs paho-mqtt: pip install 'cseg[line]'") from exc
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"{name}-{uuid.uuid4().hex[:8]}",
                         protocol=mqtt.MQTTv311)  # fmt: skip
    username = target.username if target.username is not None else os.environ.get("CSEG_MQTT_USERNAME")
    password = target.password if target.password is not None else os.environ.get("CSEG_MQTT_PASSWORD")
    if username is not None:
        client.username_pw_set(username, password)
    if target.scheme == "mqtts":
        ca = os.environ.get("CSEG_MQTT_CA") or None
        if ca is not None and not os.path.isfile(ca):  # else ssl's FileNotFoundError names no variable
            raise InvalidInputError(f"CSEG_MQTT_CA={ca!r}: no such file (the CA certificate that signed the broker's)")
        try:
            client.tls_set(ca_certs=ca)
        except ssl.SSLError as exc:
            raise InvalidInputError(f"CSEG_MQTT_CA={ca!r} is not a PEM CA certificate: {exc}") from None
    client.reconnect_delay_set(*reconnect)
    return client, mqtt


class MqttSink(QueuedSink):
    def __init__(self, url: str, *, station: str = "station", queue_size: int = 1000, keepalive: int = 10,
                 reconnect: tuple[float, float] = (0.5, 5.0)):  # fmt: skip
        target = parse_sink_url(url)
        if not target.scheme.startswith("mqtt"):
            raise InvalidInputError(f"MqttSink needs an mqtt:// or mqtts:// URL, got {url!r}")
        super().__init__(url, queue_size)
        client, self._mqtt = mqtt_client(target, f"cseg-{station}", reconnect)
        self.events_topic = f"{target.path}/{station}/events"
        self.count_topic = f"{target.path}/{station}/count"
        self.published = self.acked = 0  # messages handed to paho (events and retained counts) / PUBACKs received
        self._connected = threading.Event()
        self._lock = threading.Lock()
        client.max_queued_messages_set(queue_size)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        self._client = client
        client.connect_async(target.host, target.port, keepalive=keepalive)
        client.loop_start()
        self._start_worker()

    def _on_connect(self, client, userdata, flags, reason, properties=None):
        if reason.is_failure:
            self.last_error = f"broker refused the connection: {reason}"
            return
        self._connected.set()
        if self.counts:  # the retained total again: the broker may have restarted without it
            client.publish(self.count_topic, json.dumps(self.counts), qos=1, retain=True)

    def _on_disconnect(self, client, userdata, flags, reason, properties=None):
        self._connected.clear()
        if reason.is_failure:
            self.last_error = f"disconnected from {self.url}: {reason}"

    def _on_publish(self, client, userdata, mid, reason, properties=None):
        with self._lock:
            self.acked += 1

    def connected(self) -> bool:
        return self._connected.is_set()

    def wait_connected(self, timeout: float = 10.0) -> None:
        """Raise (naming the URL) when the broker is not reached within `timeout` seconds; the sink keeps trying."""
        if not self._connected.wait(timeout):
            why = self.last_error or "no answer"
            raise SinkError(f"MQTT broker {self.url} not reached in {timeout:g} s ({why})")

    def _deliver(self, event, counts: dict) -> bool:
        if not self._connected.is_set():
            return False
        info = self._client.publish(self.events_topic, event.to_json(), qos=1)
        if info.rc == self._mqtt.MQTT_ERR_QUEUE_SIZE:  # paho's own queue is full: keep it in ours, retry later
            return False
        self.published += 1
        if event.kind in ("count", "reverse", "defect"):
            self._client.publish(self.count_topic, json.dumps(counts), qos=1, retain=True)
            self.published += 1
        return True  # paho owns it now (it resends a QoS-1 message that was in flight when the connection dropped)

    def _extra_stats(self) -> dict:
        return {"published": self.published, "acked": self.acked}

    def _shutdown(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()

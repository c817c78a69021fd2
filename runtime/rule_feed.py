"""Rules to a fleet (issue 31 item 4): the reasoner publishes each rule as one retained MQTT message (QoS 1); every
edge loop subscribed to the topic takes the newest good one between two frames, without restarting.

The message (one payload, UTF-8 JSON; `encode_message` writes it, `decode_message` checks it):

    {"cseg_rule_message": 1,
     "version": "3f2a9c...",          # 1-64 of [A-Za-z0-9._:-]; default: the first 16 hex of sha256
     "sam3_weights": "<64 hex>"|null, # the SAM 3 weights the rule is bound to (equal to the rule JSON's)
     "sha256": "<64 hex>",            # sha256 of the rule JSON's bytes followed by the npz's bytes
     "published": "2026-12-07T14:00:00+00:00",
     "rule": "<the rule JSON text, exactly as Rule.save writes it>",
     "arrays": "<the rule's npz, base64>"}

Published from a rule file, the JSON and npz are the files' own bytes, so the default version is the one `cseg serve`
gives the same file (cseg.serve.server.rule_version). A receiver checks, in this order: the size, the JSON, the
fields, the base64, the sha256 over the rule's bytes (a truncated or altered message fails here), the rule itself as
Rule.load checks a file (its arrays' own sha256, npz members, dtypes, shapes, finite values), that the envelope's
weights id is the rule's, and Rule.check_bundle against the edge's bundle (other SAM 3 weights: refused). Any failure
is reported and the last good rule stays in force; an empty retained payload (the topic cleared) is reported too.
The sha256 detects corruption, it does not authenticate: who may publish is the broker's ACL (and mqtts://) to say.

The runtime stays torch-free; paho-mqtt (the `line` extra) is imported when a feed or a publish starts.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import hashlib
import json
import logging
import re
import threading
import time
from collections import deque
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from cseg.errors import BundleError, CsegError, InvalidInputError
from cseg.runtime.rules import MAX_ARRAYS_BYTES, MAX_RULE_BYTES, Rule, rule_files

MESSAGE_FORMAT = 1
MAX_MESSAGE_BYTES = MAX_RULE_BYTES + MAX_ARRAYS_BYTES * 4 // 3 + 4096  # the rule JSON + base64 npz + the envelope
_VERSION = re.compile(r"[A-Za-z0-9._:-]{1,64}")
_SHA256 = re.compile(r"[0-9a-f]{64}")
log = logging.getLogger("cseg.rules")


class RuleFeedError(CsegError):
    """A rules feed that cannot start (bad URL, broker not reached) or delivers no valid rule in time; a publish
    that the broker does not acknowledge."""


def digest(text: bytes, blob: bytes) -> str:
    """The sha256 a message carries: over the rule JSON's bytes followed by the npz's."""
    return hashlib.sha256(text + blob).hexdigest()


def check_version(version) -> str:
    if not isinstance(version, str) or not _VERSION.fullmatch(version):
        raise InvalidInputError(f"rule version {version!r}: 1-64 characters of letters, digits and . _ : -")
    return version


def encode_message(rule: Rule | str | Path, version: str | None = None) -> tuple[bytes, dict]:
    """(payload, its header fields without the rule) for a Rule or a rule file (its exact bytes, checked first)."""
    if isinstance(rule, Rule):
        text, blob = rule.to_bytes()
    else:
        text, blob = rule_files(rule)
        rule = Rule.from_bytes(text, blob, f"rule {rule}")
    signed = digest(text, blob)
    version = signed[:16] if version is None else check_version(version)
    header = {"cseg_rule_message": MESSAGE_FORMAT, "version": version, "sam3_weights": rule.sam3_weights,
              "sha256": signed,
              "published": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}  # fmt: skip
    message = {**header, "rule": text.decode("utf-8"), "arrays": base64.b64encode(blob).decode("ascii")}
    return json.dumps(message).encode("utf-8"), header


def decode_message(payload: bytes, where: str = "rule message") -> tuple[Rule, str]:
    """(rule, version) from a payload, every check of the module docstring but the bundle's; InvalidInputError
    naming the first problem otherwise."""
    if len(payload) > MAX_MESSAGE_BYTES:
        raise InvalidInputError(f"{where}: {len(payload)} bytes, more than the {MAX_MESSAGE_BYTES} a rule takes")
    try:
        message = json.loads(payload)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise InvalidInputError(f"{where} is not JSON: {exc}") from None
    if not isinstance(message, dict) or message.get("cseg_rule_message") != MESSAGE_FORMAT:
        raise InvalidInputError(f"{where} is not a cseg rule message of format {MESSAGE_FORMAT}")
    version, signed, weights = message.get("version"), message.get("sha256"), message.get("sam3_weights")
    if not isinstance(version, str) or not _VERSION.fullmatch(version):
        raise InvalidInputError(f"{where}: 'version' must be 1-64 of letters, digits and . _ : -")
    if not isinstance(signed, str) or not _SHA256.fullmatch(signed):
        raise InvalidInputError(f"{where}: 'sha256' must be 64 lowercase hex digits")
    if not (isinstance(message.get("rule"), str) and isinstance(message.get("arrays"), str)):
        raise InvalidInputError(f"{where}: 'rule' (the rule JSON) and 'arrays' (base64 npz) must be strings")
    try:
        blob = base64.b64decode(message["arrays"], validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidInputError(f"{where}: 'arrays' is not base64: {exc}") from None
    try:
        text = message["rule"].encode("utf-8")
    except UnicodeEncodeError as exc:  # JSON may escape a lone surrogate ("\\ud800"), which no UTF-8 rule file holds
        raise InvalidInputError(f"{where}: 'rule' is not valid text: {exc}") from None
    if digest(text, blob) != signed:
        raise InvalidInputError(f"{where} (version {version}): the rule and arrays do not match its sha256 "
                                "(truncated, altered or corrupt)")  # fmt: skip
    rule = Rule.from_bytes(text, blob, f"{where} (version {version})")
    if weights != rule.sam3_weights:
        raise InvalidInputError(f"{where} (version {version}): its sam3_weights is not the rule's own")
    return rule, version


def publish_rule(url: str, rule: Rule | str | Path, *, version: str | None = None, timeout: float = 10.0) -> dict:
    """Publish `rule` (a Rule or a rule file) to the topic of mqtt[s]://HOST:PORT/TOPIC, retained, QoS 1, and wait
    for the broker's PUBACK. Returns the header (version, sam3_weights, sha256, published) plus topic and bytes."""
    from cseg.track.sinks.mqtt import mqtt_client

    target = parse_rules_url(url)
    payload, header = encode_message(rule, version)
    client, mqtt = mqtt_client(target, "cseg-publish", (0.2, 1.0))
    connected, refused = threading.Event(), []

    def on_connect(client, userdata, flags, reason, properties=None):
        if reason.is_failure:  # e.g. bad credentials: said at once, not after the timeout
            refused.append(str(reason))
        connected.set()

    client.on_connect = on_connect
    try:
        client.connect(target.host, target.port, keepalive=10)
    except (OSError, ValueError) as exc:
        raise RuleFeedError(f"MQTT broker {redact(url)} not reached: {exc}") from None
    client.loop_start()
    try:
        if not connected.wait(timeout):
            raise RuleFeedError(f"MQTT broker {redact(url)} did not accept the connection in {timeout:g} s")
        if refused:
            raise RuleFeedError(f"MQTT broker {redact(url)} refused the connection: {refused[0]}")
        info = client.publish(target.path, payload, qos=1, retain=True)
        try:
            info.wait_for_publish(timeout)
        except (RuntimeError, ValueError):  # paho: the message could not be queued (the connection dropped)
            pass
        if not info.is_published():
            raise RuleFeedError(f"MQTT broker {redact(url)} did not acknowledge the rule in {timeout:g} s")
    finally:
        client.disconnect()
        client.loop_stop()
    return {**header, "topic": target.path, "bytes": len(payload)}


def parse_rules_url(url: str):
    from cseg.track.sinks.urls import parse_sink_url

    target = parse_sink_url(url, "rules feed")
    if not target.scheme.startswith("mqtt"):
        raise InvalidInputError(f"rules feed {url!r}: give mqtt://HOST:PORT/TOPIC or mqtts://HOST:PORT/TOPIC")
    return target


def redact(url: str) -> str:
    """The URL with its password (if any) as ***, for messages and logs."""
    parts = urlsplit(url)
    userinfo, at, hostport = parts.netloc.rpartition("@")
    if not at or ":" not in userinfo:
        return url
    return urlunsplit(parts._replace(netloc=f"{userinfo.split(':')[0]}:***@{hostport}"))


class RuleFeed:
    """The edge side: subscribes to the rules topic and keeps the newest good rule for this bundle.

    paho's network thread receives and checks each message (a rule is kilobytes: milliseconds); the loop calls
    `rule()` before each frame and gets the rule in force, never blocking on the network. `initial`: a local rule
    (checked against the bundle) in force until a valid message arrives. Problems and each switch to a new version go
    to `report` (default: the "cseg.rules" logger); problems also into `problems` (the last 100), counted by
    `stats()`. Pass a feed wherever Runtime.stream / Runtime.track take a rule."""

    def __init__(self, url: str, manifest: dict, *, initial: Rule | None = None, initial_version: str | None = None,
                 report=None, keepalive: int = 10, reconnect: tuple[float, float] = (0.2, 2.0)):  # fmt: skip
        from cseg.track.sinks.mqtt import mqtt_client

        target = parse_rules_url(url)
        self.url, self.topic, self.manifest = redact(url), target.path, manifest
        self._report = report or log.warning
        self.problems: deque = deque(maxlen=100)
        self.received = self.updates = self.refused = self.corrupt = 0
        self.last_error: str | None = None
        self._current: tuple[Rule, str] | None = None
        self.in_use: str | None = None  # the version the last rule() call handed out
        self._changed = threading.Condition()
        self._connected = threading.Event()
        self._lost = False
        if initial is not None:
            initial.check_bundle(manifest)
            self._current = (initial, initial_version or digest(*initial.to_bytes())[:16])
        client, _ = mqtt_client(target, "cseg-rules", reconnect)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_connect_fail = lambda client, userdata: setattr(self, "last_error", "the connection failed")
        self._client = client
        client.connect_async(target.host, target.port, keepalive=keepalive)
        client.loop_start()

    # --- what the loop calls ------------------------------------------------------------------------------------------

    def rule(self) -> Rule:
        """The rule in force now (raises RuleFeedError before any good rule: call wait() first)."""
        current = self._current
        if current is None:
            raise RuleFeedError(f"no valid rule has arrived on {self.url} yet (RuleFeed.wait, or give a local rule)")
        if current[1] != self.in_use:
            if self.in_use is not None:
                self._report(f"rules feed {self.url}: now applying rule version {current[1]} (was {self.in_use}), "
                             f"answer {current[0].answer!r}")  # fmt: skip
            self.in_use = current[1]
        return current[0]

    @property
    def version(self) -> str | None:
        """The version of the newest good rule received (or the initial one), None before any."""
        return None if self._current is None else self._current[1]

    def wait(self, timeout: float) -> Rule:
        """The rule in force, waiting up to `timeout` seconds for the first good one; RuleFeedError saying why not."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while self._current is None and (left := deadline - time.monotonic()) > 0:
                self._changed.wait(left)
        if self._current is None:
            state = "connected" if self._connected.is_set() else "broker not reached"
            why = f"; last problem: {self.last_error}" if self.last_error else ""
            raise RuleFeedError(f"no valid rule arrived on {self.url} in {timeout:g} s ({state}{why}). Publish one "
                                "(cseg publish-rule RULE.json URL), or start with a local --rule")  # fmt: skip
        return self.rule()

    def wait_connected(self, timeout: float) -> None:
        if not self._connected.wait(timeout):
            why = f" ({self.last_error})" if self.last_error else ""
            raise RuleFeedError(f"MQTT broker {self.url} not reached in {timeout:g} s{why}")

    def connected(self) -> bool:
        return self._connected.is_set()

    def stats(self) -> dict:
        return {"url": self.url, "version": self.version, "connected": self.connected(), "received": self.received,
                "updates": self.updates, "refused": self.refused, "corrupt": self.corrupt,
                "last_error": self.last_error}  # fmt: skip

    def close(self) -> dict:
        self._client.disconnect()
        self._client.loop_stop()
        return self.stats()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # --- paho's thread ------------------------------------------------------------------------------------------------

    def _problem(self, text: str) -> None:
        self.last_error = text
        self.problems.append(text)
        self._report(text)

    def _on_connect(self, client, userdata, flags, reason, properties=None):
        if reason.is_failure:
            text = f"MQTT broker {self.url} refused the connection: {reason}"
            if text != self.last_error:  # paho retries with its back-off: said once, not at every try
                self._problem(text)
            return
        client.subscribe(self.topic, qos=1)  # again on every reconnect: the retained rule comes with it
        self._connected.set()
        if self._lost:
            self._lost = False
            self._report(f"rules feed {self.url}: reconnected")

    def _on_disconnect(self, client, userdata, flags, reason, properties=None):
        was = self._connected.is_set()
        self._connected.clear()
        if reason.is_failure and was:
            self._lost = True
            self._problem(f"rules feed {self.url}: lost the broker ({reason}); reconnecting, rule version "
                          f"{self.version} stays in force")  # fmt: skip

    def _on_message(self, client, userdata, message):
        self.received += 1
        keeps = f"; rule version {self.version} stays in force"
        if not message.payload:
            self._problem(f"rules feed {self.url}: the retained rule was cleared (empty message){keeps}")
            return
        try:
            rule, version = decode_message(message.payload, f"rule message on {self.url}")
        except InvalidInputError as exc:
            self.corrupt += 1
            self._problem(f"{exc}{keeps}")
            return
        except Exception as exc:  # noqa: BLE001 - whatever a message does, paho's thread (and the feed) must go on
            self.corrupt += 1
            self._problem(f"rule message on {self.url} could not be read ({type(exc).__name__}: {exc}){keeps}")
            return
        if self._current is not None and version == self._current[1]:
            return  # a repeat (QoS 1 is at least once; the retained copy again after a reconnect)
        try:
            rule.check_bundle(self.manifest)
        except (BundleError, InvalidInputError) as exc:
            self.refused += 1
            self._problem(f"rule version {version} on {self.url} refused: {exc}{keeps}")
            return
        with self._changed:
            self._current = (rule, version)
            self.updates += 1
            self._changed.notify_all()

"""Rules to a fleet (issue 31 item 4) against a real mosquitto broker on loopback: the message format and what a
receiver refuses, 10 edge loops taking a new version between fake frames within 1 s, a rule for other SAM 3 weights
refused everywhere, corrupt messages reported with the last good rule kept, a broker restart reported, and
`cseg watch --rules` switching versions mid-run on the tiny rule-only bundle. Every wait is bounded."""

from __future__ import annotations

import base64
import hashlib
import json
import threading
import time

import numpy as np
import pytest

from cseg.errors import InvalidInputError
from cseg.runtime.rule_feed import (RuleFeed, RuleFeedError, decode_message, encode_message, parse_rules_url,
                                    publish_rule)
from cseg.runtime.rules import Rule, bundle_id
from test_track_sinks import broker, free_port, wait_for  # noqa: F401 - broker is the mosquitto fixture

OTHER_WEIGHTS = "f" * 64
LOOPS = 10


@pytest.fixture(scope="module")
def manifest(rule_only_bundle):
    from cseg.bundle.schema import read_manifest

    return read_manifest(rule_only_bundle)


def make_rule(manifest, name: str, weights: str | None = None, queries: int = 4) -> Rule:
    """A valid rule for the bundle's decoder (its values do not matter here); `name` tells versions apart."""
    declared = {t["name"]: t["shape"] for t in manifest["graphs"]["sam3_decoder"]["inputs"]}
    width = declared["concept_tokens"][2]
    length = declared.get("text_mask", [1, 32])[1]
    mask = np.zeros((1, length), np.int64)
    mask[0, :2] = 1
    return Rule(question=name, answer=name, rule=f"rule {name}", think="", text="",
                concept_tokens=np.full((1, queries, width), 0.01, np.float32),
                text_features=np.full((1, length, width), 0.02, np.float32), text_mask=mask,
                bundle=bundle_id(manifest), sam3_weights=weights or manifest["source"]["sam3"]["weights"])  # fmt: skip


def raw_publish(port: int, topic: str, payload: bytes) -> None:
    """A payload as is (retained, QoS 1), acknowledged: how a corrupt message reaches the broker."""
    import paho.mqtt.client as mqtt

    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv311)
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        info = client.publish(topic, payload, qos=1, retain=True)
        info.wait_for_publish(5)
        assert info.is_published()
    finally:
        client.disconnect()
        client.loop_stop()


def corrupt_payloads(manifest) -> dict[str, tuple[bytes, str]]:
    """name -> (payload, what the report says)."""
    good, _ = encode_message(make_rule(manifest, "corrupt"), "c1")
    message = json.loads(good)
    blob = base64.b64decode(message["arrays"])
    wrong_sha = {**message, "sha256": "0" * 64}
    truncated = {**message, "arrays": base64.b64encode(blob[: len(blob) // 2]).decode()}

    # truncated arrays whose envelope is re-signed: the sha256 passes, the npz check does not
    resigned = {**truncated, "sha256": hashlib.sha256(message["rule"].encode() + blob[: len(blob) // 2]).hexdigest()}
    # and with the rule JSON's own arrays sha256 re-signed too: the npz reader refuses it
    meta = json.loads(message["rule"])
    meta["arrays"]["sha256"] = hashlib.sha256(blob[: len(blob) // 2]).hexdigest()
    text = json.dumps(meta)
    deep = {**truncated, "rule": text, "sha256": hashlib.sha256(text.encode() + blob[: len(blob) // 2]).hexdigest()}
    weights = {**message, "sam3_weights": OTHER_WEIGHTS}
    return {
        "bad json": (b"{not json", "is not JSON"),
        "wrong sha256": (json.dumps(wrong_sha).encode(), "do not match its sha256"),
        "truncated arrays": (json.dumps(truncated).encode(), "do not match its sha256"),
        "truncated arrays, re-signed": (json.dumps(resigned).encode(), "rule.npz does not match its sha256"),
        "truncated arrays, all re-signed": (json.dumps(deep).encode(), "cannot be read as npz"),
        "envelope weights": (json.dumps(weights).encode(), "its sam3_weights is not the rule's own"),
        "not a rule message": (b'{"hello": 1}', "is not a cseg rule message"),
        "bad base64": (json.dumps({**message, "arrays": "@@@"}).encode(), "is not base64"),
        "lone surrogate": (json.dumps({**message, "rule": "\ud800"}).encode(), "'rule' is not valid text"),
    }


def test_message_round_trip_and_refusals(manifest, tmp_path):
    rule = make_rule(manifest, "a")
    payload, header = encode_message(rule)
    back, version = decode_message(payload)
    assert version == header["version"] == header["sha256"][:16] and back.answer == "a"
    assert np.array_equal(back.concept_tokens, rule.concept_tokens) and back.sam3_weights == rule.sam3_weights
    # from a file: its own bytes, so the version is the one cseg serve gives the same file
    path = rule.save(tmp_path / "a.json")
    from cseg.serve.server import rule_version

    assert encode_message(path)[1]["version"] == rule_version(path)
    assert encode_message(rule, "v-2.1")[1]["version"] == "v-2.1"
    with pytest.raises(InvalidInputError, match="rule version 'a b'"):
        encode_message(rule, "a b")
    for name, (payload, says) in corrupt_payloads(manifest).items():
        with pytest.raises(InvalidInputError, match=says):
            decode_message(payload)


@pytest.mark.parametrize("url, says", [
    ("mqtt://127.0.0.1:1883", "names no topic"),
    ("mqtt://127.0.0.1:99999/t", "port is not a number"),
    ("ftp://host/rules", "scheme 'ftp'"),
    ("rules.json", "give mqtt://HOST:PORT/TOPIC"),
    ("mqtt://host/rules/#", "wildcards"),
    ("mqtt:///rules", "names no host"),
])  # fmt: skip
def test_malformed_urls_are_refused_naming_the_feed(url, says):
    with pytest.raises(InvalidInputError, match=says) as info:
        parse_rules_url(url)
    assert "rules feed" in str(info.value)


def test_urls_in_messages_hide_the_password():
    from cseg.runtime.rule_feed import redact

    assert redact("mqtt://line3:s3cret@broker:1883/plant/rules") == "mqtt://line3:***@broker:1883/plant/rules"
    assert redact("mqtt://line3@broker/a@b") == "mqtt://line3@broker/a@b"
    assert redact("mqtt://broker:1883/a@b") == "mqtt://broker:1883/a@b"


def test_unreachable_broker_is_a_clear_error(manifest):
    url = f"mqtt://127.0.0.1:{free_port()}/plant/rules"
    with pytest.raises(RuleFeedError, match="not reached"):
        publish_rule(url, make_rule(manifest, "a"), timeout=1)
    feed = RuleFeed(url, manifest, report=lambda line: None)
    try:
        with pytest.raises(RuleFeedError, match="not reached in 0.5 s"):
            feed.wait_connected(0.5)
        with pytest.raises(RuleFeedError, match="no valid rule arrived .*broker not reached"):
            feed.wait(0.3)
        with pytest.raises(RuleFeedError, match="no valid rule has arrived"):
            feed.rule()
    finally:
        feed.close()


def edge_loop(feed: RuleFeed, seen: list, stop: threading.Event) -> None:
    """A loop's frames, faked: the rule in force before each (what Runtime.stream does), then 5 ms of 'work'."""
    deadline = time.monotonic() + 30  # bounded whatever happens
    while not stop.is_set() and time.monotonic() < deadline:
        rule = feed.rule()
        if not seen or seen[-1][1] != feed.in_use:
            seen.append((time.perf_counter(), feed.in_use, rule.answer))
        time.sleep(0.005)


def test_ten_edge_loops_take_a_new_rule_within_a_second(manifest, broker):  # noqa: F811
    url = f"mqtt://127.0.0.1:{broker.port}/plant/line1/rules"
    first = publish_rule(url, make_rule(manifest, "v1"), version="v1")
    assert first["topic"] == "plant/line1/rules" and first["version"] == "v1"
    reports: list[str] = []
    feeds = [RuleFeed(url, manifest, report=reports.append) for _ in range(LOOPS)]
    stop = threading.Event()
    seen = [[] for _ in feeds]
    threads = [threading.Thread(target=edge_loop, args=(f, s, stop)) for f, s in zip(feeds, seen)]
    try:
        for feed in feeds:
            assert feed.wait(10).answer == "v1"  # the retained rule arrives on subscribe
        for thread in threads:
            thread.start()
        started = time.perf_counter()
        publish_rule(url, make_rule(manifest, "v2"), version="v2")
        wait_for(lambda: all(s and s[-1][1] == "v2" for s in seen), 5, "v2 in every loop")
        delays = [next(t for t, v, _ in s if v == "v2") - started for s in seen]
        assert max(delays) <= 1.0, delays

        # a rule for other SAM 3 weights: refused by every feed, reported, v2 stays
        publish_rule(url, make_rule(manifest, "other", weights=OTHER_WEIGHTS), version="other")
        wait_for(lambda: all(f.refused == 1 for f in feeds), 5, "the refusals")
        # corrupt messages: each reported, v2 stays
        cases = corrupt_payloads(manifest)
        for count, (payload, says) in enumerate(cases.values(), 1):
            raw_publish(broker.port, "plant/line1/rules", payload)
            wait_for(lambda: all(f.corrupt == count for f in feeds), 5, f"corrupt message {count}")
            assert all(says in f.problems[-1] and "v2 stays in force" in f.problems[-1] for f in feeds)
        raw_publish(broker.port, "plant/line1/rules", b"")  # the retained rule cleared
        wait_for(lambda: all("cleared" in f.problems[-1] for f in feeds), 5, "the cleared topic reported")
        time.sleep(0.05)
        assert all(f.version == "v2" and f.rule().answer == "v2" for f in feeds)
        # the loops go on: the next good rule is taken
        publish_rule(url, make_rule(manifest, "v3"), version="v3")
        wait_for(lambda: all(s[-1][1] == "v3" for s in seen), 5, "v3 in every loop")
    finally:
        stop.set()
        for thread in threads:
            thread.join(5)
        stats = [f.close() for f in feeds]
    for s in seen:
        assert [v for _, v, _ in s] == ["v1", "v2", "v3"]  # never the other weights' rule, nothing corrupt
    assert all(x["updates"] == 3 and x["refused"] == 1 and x["corrupt"] == len(cases) for x in stats)
    assert sum("refused: this rule was induced for SAM 3 weights ffffffffffffffff" in r for r in reports) == LOOPS


def test_broker_restart_is_reported_and_the_rule_kept(manifest, broker):  # noqa: F811
    url = f"mqtt://127.0.0.1:{broker.port}/rules"
    publish_rule(url, make_rule(manifest, "v1"), version="v1")
    reports: list[str] = []
    feed = RuleFeed(url, manifest, report=reports.append, reconnect=(0.1, 0.5))
    try:
        feed.wait(10)
        broker.kill()
        wait_for(lambda: any("lost the broker" in r for r in reports), 10, "the lost broker reported")
        assert feed.rule().answer == "v1" and "rule version v1 stays in force" in feed.last_error
        broker.start()  # without persistence: the retained rule is gone, the feed keeps its own
        wait_for(lambda: any("reconnected" in r for r in reports), 10, "the reconnection reported")
        publish_rule(url, make_rule(manifest, "v2"), version="v2")
        wait_for(lambda: feed.version == "v2", 5, "v2 after the restart")
    finally:
        feed.close()


def test_a_local_rule_for_other_weights_is_refused_at_start(manifest, broker):  # noqa: F811
    from cseg.errors import BundleError

    with pytest.raises(BundleError, match="induced for SAM 3 weights"):
        RuleFeed(f"mqtt://127.0.0.1:{broker.port}/rules", manifest, initial=make_rule(manifest, "x", OTHER_WEIGHTS))


def frames_folder(tmp_path, count: int):
    from PIL import Image

    folder = tmp_path / "frames"
    folder.mkdir()
    for index in range(count):
        Image.new("RGB", (64, 48), (index * 20, 90, 40)).save(folder / f"{index:04d}.png")
    return folder


def test_cli_watch_takes_a_new_version_mid_run(rule_only_bundle, manifest, broker, tmp_path, monkeypatch,  # noqa: F811
                                               capsys):  # fmt: skip
    """cseg watch --rules on the tiny rule-only bundle (the real model): v1 retained before the start; during frame 2
    a rule for other weights, during frame 3 a corrupt one, during frame 4 v2 are published; frames 0-4 apply v1,
    frames 5-7 v2; both problems reported; the summary counts them."""
    from cseg.cli import main
    from cseg.runtime import Runtime

    url = f"mqtt://127.0.0.1:{broker.port}/plant/rules"
    publish_rule(url, make_rule(manifest, "v1"), version="v1")
    feeds: list = []
    original_init, original_apply = RuleFeed.__init__, Runtime.apply

    def init(self, *args, **kwargs):
        original_init(self, *args, **kwargs)
        feeds.append(self)

    def apply(self, rule, frame, *, bgr=False):
        index = int(str(frame)[-8:-4])
        if index == 2:
            publish_rule(url, make_rule(manifest, "other", OTHER_WEIGHTS), version="other")
            wait_for(lambda: feeds[0].refused == 1, 5, "the refusal")
        elif index == 3:
            raw_publish(broker.port, "plant/rules", b'{"cseg_rule_message": 1, "version": "x", "sha256": "00"}')
            wait_for(lambda: feeds[0].corrupt == 1, 5, "the corrupt message")
        elif index == 4:
            publish_rule(url, make_rule(manifest, "v2"), version="v2")
            wait_for(lambda: feeds[0].version == "v2", 5, "v2 at the feed")
        return original_apply(self, rule, frame, bgr=bgr)

    monkeypatch.setattr(RuleFeed, "__init__", init)
    monkeypatch.setattr(Runtime, "apply", apply)
    folder = frames_folder(tmp_path, 8)
    argv = ["watch", str(folder), "--bundle", str(rule_only_bundle), "--rules", url, "--rules-wait", "10",
            "--jsonl", str(tmp_path / "log.jsonl")]  # fmt: skip
    assert main(argv) == 0
    records = [json.loads(x) for x in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [r["rule_version"] for r in records] == ["v1"] * 5 + ["v2"] * 3
    assert all("error" not in r for r in records)
    err = capsys.readouterr().err
    assert "refused: this rule was induced for SAM 3 weights" in err and "'sha256' must be 64" in err
    assert "now applying rule version v2 (was v1)" in err and "Traceback" not in err
    assert ("rules: version v2 at the end, 2 received and applied, 1 refused (other SAM 3 weights or shapes), "
            "1 corrupt") in err


def test_cli_bad_inputs(rule_only_bundle, manifest, broker, tmp_path, capsys):  # noqa: F811
    from cseg.cli import main

    folder = frames_folder(tmp_path, 2)
    base = ["watch", str(folder), "--bundle", str(rule_only_bundle)]
    assert main(base) == 2
    assert "give --rule RULE.json, --rules mqtt://HOST:PORT/TOPIC, or both" in capsys.readouterr().err
    assert main([*base, "--rules", "mqtt://127.0.0.1:1883"]) == 2
    assert "rules feed 'mqtt://127.0.0.1:1883' names no topic" in capsys.readouterr().err
    closed = f"mqtt://127.0.0.1:{free_port()}/rules"
    assert main([*base, "--rules", closed, "--rules-wait", "1"]) == 2
    err = capsys.readouterr().err
    assert "error: MQTT broker" in err and "not reached in 1 s" in err and "Traceback" not in err
    # with a local rule the loop starts on it, the unreachable broker is a warning
    local = make_rule(manifest, "local").save(tmp_path / "local.json")
    assert main([*base, "--rules", closed, "--rules-wait", "1", "--rule", str(local), "--jsonl",
                 str(tmp_path / "log.jsonl")]) == 0  # fmt: skip
    err = capsys.readouterr().err
    assert "warning: MQTT broker" in err and "applying" in err and "2 frames, 0 errors" in err
    # with a broker but no rule on the topic: the bounded wait says so
    empty = f"mqtt://127.0.0.1:{broker.port}/nothing"
    assert main([*base, "--rules", empty, "--rules-wait", "0.5"]) == 2
    assert "no valid rule arrived on" in capsys.readouterr().err
    # publish-rule: a bad version, an unreachable broker, then a good publish that a feed receives
    assert main(["publish-rule", str(local), f"mqtt://127.0.0.1:{broker.port}/r", "--version", "a b"]) == 2
    assert "rule version 'a b'" in capsys.readouterr().err
    assert main(["publish-rule", str(local), closed, "--timeout", "1"]) == 2
    assert "not reached" in capsys.readouterr().err
    assert main(["publish-rule", str(local), f"mqtt://127.0.0.1:{broker.port}/r"]) == 0
    assert "published rule version" in capsys.readouterr().out
    with RuleFeed(f"mqtt://127.0.0.1:{broker.port}/r", manifest) as feed:
        assert feed.wait(5).answer == "local"


def test_runtime_track_events_name_the_rule_in_force(rule_only_bundle, manifest, broker, monkeypatch):  # noqa: F811
    """Runtime.track with a RuleFeed: the conveyor's known instances in place of the model's; v2 is published halfway,
    so the count events before it name v1 and those after it v2 (id and version), in that order."""
    from cseg.runtime import Runtime
    from cseg.track import LineMonitor, rule_identity
    from cseg.track.synthetic import Conveyor, ConveyorSpec
    from test_track_runtime import SPEC, conveyor_apply

    conveyor = Conveyor(ConveyorSpec(**SPEC))
    url = f"mqtt://127.0.0.1:{broker.port}/rules"
    first, second = make_rule(manifest, "v1"), make_rule(manifest, "v2", queries=5)
    publish_rule(url, first, version="v1")
    apply, half = conveyor_apply(conveyor), len(conveyor) // 2

    def switching(self, rule, frame, *, bgr=False):
        if frame == half:
            publish_rule(url, second, version="v2")
            wait_for(lambda: feed.version == "v2", 5, "v2 at the feed")
        return apply(self, rule, frame)

    monkeypatch.setattr(Runtime, "apply", switching)
    runtime = Runtime.open(rule_only_bundle, verify=False)
    with RuleFeed(url, manifest, report=lambda line: None) as feed:
        feed.wait(10)
        monitor = LineMonitor(conveyor.line)
        run = runtime.track(list(range(len(conveyor))), feed, monitor, times=conveyor.times.tolist())
        events = [(tracked.result.index, e) for tracked in run for e in tracked.events]
    counts = [(index, e.rule_id, e.rule_version) for index, e in events if e.kind == "count"]
    assert len(counts) == 6
    ids = {"v1": rule_identity(first)[0], "v2": rule_identity(second)[0]}
    assert all((rule_id, version) == (ids["v1"], "v1") if index <= half else (ids["v2"], "v2")
               for index, rule_id, version in counts)  # fmt: skip
    assert {version for _, _, version in counts} == {"v1", "v2"}


def test_a_broker_that_refuses_the_client_is_said_at_once(manifest, tmp_path):
    from test_track_sinks import MOSQUITTO, Broker

    if MOSQUITTO is None:
        pytest.skip("the mosquitto binary is missing (make install adds it where apt-get exists)")
    closed = Broker(tmp_path)
    closed.config.write_text(f"listener {closed.port} 127.0.0.1\nallow_anonymous false\npersistence false\n")
    closed.start()
    url = f"mqtt://line3:wrong@127.0.0.1:{closed.port}/rules"
    try:
        started = time.monotonic()
        with pytest.raises(RuleFeedError, match=r"mqtt://line3:\*\*\*@127.* refused the connection: Not authorized"):
            publish_rule(url, make_rule(manifest, "a"), timeout=10)
        assert time.monotonic() - started < 5
        reports: list[str] = []
        with RuleFeed(url, manifest, report=reports.append) as feed:
            wait_for(lambda: any("refused the connection" in r for r in reports), 5, "the refusal reported")
            assert "wrong" not in " ".join(reports)
    finally:
        closed.kill()

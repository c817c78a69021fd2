"""Sink URLs: `mqtt://[user:pass@]host[:port]/topic`, `mqtts://...` (TLS), `opc.tcp://host:port[/path]`, or a
file path (`events.jsonl`, `file:events.jsonl`). A malformed one is refused here, naming it, before anything starts."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

from cseg.errors import InvalidInputError

DEFAULT_PORTS = {"mqtt": 1883, "mqtts": 8883, "opc.tcp": 4840}


@dataclass(frozen=True)
class SinkUrl:
    scheme: str  # "mqtt", "mqtts", "opc.tcp" or "file"
    host: str = ""
    port: int = 0
    path: str = ""  # the MQTT base topic, the OPC UA endpoint path, or the file path
    username: str | None = None
    password: str | None = None


def parse_sink_url(url: str, what: str = "events sink") -> SinkUrl:
    """`what` names the URL's role in the errors (cseg watch --rules parses its feed's URL here too)."""
    if not isinstance(url, str) or not url.strip():
        raise InvalidInputError(f"{what} {url!r} is not a URL or a file path")
    if url.startswith("file:"):
        return SinkUrl("file", path=url[len("file:"):].removeprefix("//"))
    if "://" not in url:
        return SinkUrl("file", path=url)
    scheme = url.split("://", 1)[0].lower()
    if scheme not in DEFAULT_PORTS:
        raise InvalidInputError(f"{what} {url!r}: scheme {scheme!r} is not one of mqtt://, mqtts://, opc.tcp:// "
                                "(or give a file path)")  # fmt: skip
    if scheme.startswith("mqtt") and ("#" in url or "+" in url.split("@")[-1]):
        raise InvalidInputError(f"{what} {url!r}: the topic may not hold wildcards (+, #)")
    parts = urlsplit(url)
    try:
        port = parts.port or DEFAULT_PORTS[scheme]
    except ValueError:
        raise InvalidInputError(f"{what} {url!r}: the port is not a number in 1-65535") from None
    if not parts.hostname:
        raise InvalidInputError(f"{what} {url!r} names no host")
    if parts.query or parts.fragment:
        raise InvalidInputError(f"{what} {url!r}: no ?query or #fragment is understood here")
    path = parts.path.strip("/")
    if scheme.startswith("mqtt"):
        if not path:
            raise InvalidInputError(f"{what} {url!r} names no topic: mqtt://host:port/plant/line1")
        if "//" in path:
            raise InvalidInputError(f"{what} {url!r}: the topic may not hold empty levels (//)")
    username = unquote(parts.username) if parts.username is not None else None
    password = unquote(parts.password) if parts.password is not None else None
    return SinkUrl(scheme, parts.hostname, port, path, username, password)

"""`Event`: what the line monitor tells the plant, one JSON object per event.

kinds: "count" (a part crossed the line: `count` is the station's total after it), "reverse" (a counted part went
back across), "defect" (one per defective part: `count` is the defect total), "error" (a frame that could not be
tracked: `error` says why; counts are unchanged). `seq` numbers a monitor's events from 1 with no gap: a consumer that
sees a gap knows an event was lost on the way, and one that sees a number twice drops the repeat (MQTT QoS 1 is at
least once).
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass, field, fields

KINDS = ("count", "reverse", "defect", "error")


@dataclass(frozen=True)
class Event:
    kind: str
    seq: int
    station: str
    frame: int  # index of the frame in the stream
    time: float  # the frame's timestamp (seconds, as given to the monitor)
    track_id: int | None = None
    box: tuple[float, float, float, float] | None = None  # xyxy pixels of the part in that frame
    score: float | None = None
    count: int | None = None
    rule_id: str = ""
    rule_version: str = ""
    source: str = ""  # the frame's source: camera, file, folder
    error: str | None = None
    wall_time: float = field(default_factory=time.time)  # when the event was made (Unix seconds)

    def to_dict(self) -> dict:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str | bytes) -> "Event":
        data = json.loads(text)
        known = {f.name for f in fields(cls)}
        data = {k: v for k, v in data.items() if k in known}
        if data.get("box") is not None:
            data["box"] = tuple(data["box"])
        return cls(**data)


def rule_identity(rule) -> tuple[str, str]:
    """(id, version) of a cseg Rule: the id is a hash of what makes it segment (phrase and concept tokens), so a rule
    re-induced identically keeps its id; the version is when it was made."""
    digest = hashlib.sha256(rule.answer.encode())
    digest.update(rule.concept_tokens.tobytes())
    return digest.hexdigest()[:16], str(rule.created)

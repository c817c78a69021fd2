"""`cseg watch --track`: the flags that turn a watch into a counting station (issue 30), as one argument group in the
manner of cli/args.py. parse() checks every flag and builds the LineMonitor before the bundle is opened, so a bad
line, direction, vote or sink URL costs nothing; open_sinks() starts the sinks last (an OPC UA server binds a port)."""

from __future__ import annotations

import argparse
import logging
import math
import sys
from dataclasses import dataclass, field

from cseg.errors import InvalidInputError
from cseg.outputs import output_file

TRACKERS = ("belt", "bytetrack", "ocsort")
WAIT_S = 2.0  # how long a start waits for an MQTT broker before it says it is not reached (events queue meanwhile)


@dataclass
class TrackSetup:
    monitor: object  # cseg.track.LineMonitor
    urls: list[str]
    defect_rule: object = None  # cseg.runtime.Rule: the second rule that marks defective parts
    fps: float | None = None  # the frames' rate for the tracker's clock (None: see runtime/watch.py frame_clock)
    sinks: list = field(default_factory=list)

    def open_sinks(self, queue_size: int = 10000) -> None:
        """Start every --events sink. A sink that cannot start (a port taken, an unwritable file) stops the run
        before any frame, after closing the ones already started; a broker not reached yet only warns."""
        from cseg.track.sinks import SinkError, open_sink

        if any(url.startswith("opc.tcp://") for url in self.urls):
            # asyncua logs a traceback of its own when its server cannot start (a port taken): the SinkError says it
            # in one line, and a command line prints no tracebacks
            logging.getLogger("asyncua").setLevel(logging.CRITICAL)
        try:
            for url in self.urls:
                self.sinks.append(open_sink(url, station=self.monitor.station, queue_size=queue_size))
        except BaseException:
            self.close()
            raise
        for sink in self.sinks:
            if hasattr(sink, "wait_connected"):
                try:
                    sink.wait_connected(WAIT_S)
                except SinkError as exc:
                    print(f"cseg watch: warning: {exc}; its events queue (the oldest dropped past {queue_size}) "
                          "until it is reached", file=sys.stderr)  # fmt: skip
        self.monitor.sinks = list(self.sinks)

    def close(self) -> list[dict]:
        """Deliver what is queued (bounded), stop every sink; their final stats (what never left counts as dropped)."""
        stats = [sink.close() for sink in self.sinks]
        self.sinks = []
        return stats


class TrackArgs:
    """--track and its options: parse() -> a TrackSetup (None without --track; its options alone are refused)."""

    def add_parser_args(self, parser: argparse.ArgumentParser) -> None:
        group = parser.add_argument_group("tracking and line events (--track)")
        group.add_argument("--track", action="store_true",
                           help="give each part a track id, count parts crossing --line, emit events")
        group.add_argument("--line", metavar="X1,Y1,X2,Y2", help="the counting line in frame pixels (with --track)")
        group.add_argument("--direction", default="right",
                           help="the way parts move across the line: right, left, up or down (default right)")
        group.add_argument("--events", action="append", default=[], metavar="FILE|URL",
                           help="where events go (repeatable): a JSON-lines file, mqtt[s]://HOST:PORT/TOPIC, or "
                                "opc.tcp://HOST:PORT (an OPC UA server cseg starts)")  # fmt: skip
        group.add_argument("--station", default="station", help="the station's name in events and topics")
        group.add_argument("--tracker", default="belt",
                           help=f"association: {', '.join(TRACKERS)} (bytetrack/ocsort need Roboflow's trackers)")
        group.add_argument("--belt-speed", type=float, default=None, metavar="PX_PER_S",
                           help="the belt's speed in frame pixels per second, e.g. from its encoder (belt tracker; "
                                "default: found from the frames, no part reported before it has held ~12 frames)")
        group.add_argument("--fps", type=float, default=None,
                           help="frame i is at i/FPS seconds for the tracker (default: a video's own rate, a folder's "
                                "files 1 s apart, a camera's arrival time)")  # fmt: skip
        group.add_argument("--defect-rule", metavar="RULE.json",
                           help="a second rule (from cseg induce) whose instances mark a part defective")
        group.add_argument("--defect-votes", default="2/3", metavar="K/N",
                           help="a part is defective when K of its first N judged frames are (default 2/3)")
        group.add_argument("--defect-near", type=float, default=None, metavar="PX",
                           help="judge only frames with the part within PX pixels of the line (default: all)")

    def parse(self, args) -> TrackSetup | None:
        from cseg.track import BeltTracker, DefectRule, Line, LineMonitor, TrackersAdapter
        from cseg.track.sinks import parse_sink_url

        if not args.track:
            given = [flag for flag, value in (("--line", args.line), ("--events", args.events or None),
                                              ("--defect-rule", args.defect_rule), ("--fps", args.fps),
                                              ("--belt-speed", args.belt_speed))
                     if value is not None]  # fmt: skip
            if given:
                raise InvalidInputError(f"{', '.join(given)} {'needs' if len(given) == 1 else 'need'} --track")
            return None
        if not args.line:
            raise InvalidInputError("--track needs --line X1,Y1,X2,Y2: the counting line in frame pixels")
        line = Line.parse(args.line, args.direction)
        if args.fps is not None and not (math.isfinite(args.fps) and args.fps > 0):
            raise InvalidInputError(f"--fps must be a positive number of frames per second, got {args.fps}")
        if args.tracker not in TRACKERS:
            raise InvalidInputError(f"--tracker {args.tracker!r} is not one of {', '.join(TRACKERS)}")
        if args.belt_speed is not None and args.tracker != "belt":
            raise InvalidInputError(f"--belt-speed is for --tracker belt, not {args.tracker}")
        try:  # BeltTracker checks the speed itself (a number >= 0)
            tracker = (BeltTracker(line.direction, speed=args.belt_speed) if args.tracker == "belt"
                       else TrackersAdapter(args.tracker))  # fmt: skip
        except ImportError as exc:  # trackers is installed apart (see the README): say so in one line
            raise InvalidInputError(f"--tracker {args.tracker}: {exc}") from None
        if args.defect_near is not None and not args.defect_rule:
            raise InvalidInputError("--defect-near needs --defect-rule")
        defects = defect_rule = None
        if args.defect_rule:
            from cseg.runtime import Rule

            defects = DefectRule(*parse_votes(args.defect_votes), near=args.defect_near)
            defect_rule = Rule.load(args.defect_rule)
        for url in args.events:
            if parse_sink_url(url).scheme == "file":
                output_file(parse_sink_url(url).path, "--events")
        if len(set(args.events)) != len(args.events):
            raise InvalidInputError("--events names the same sink twice")
        monitor = LineMonitor(line, tracker=tracker, defects=defects, station=args.station, source=args.source)
        return TrackSetup(monitor, list(args.events), defect_rule, args.fps)


def parse_votes(text: str) -> tuple[int, int]:
    """"K/N" -> (k, n); DefectRule checks 1 <= k <= n."""
    try:
        k, n = (int(v) for v in str(text).split("/"))
    except ValueError:
        raise InvalidInputError(f"--defect-votes must be K/N (e.g. 2/3), got {text!r}") from None
    return k, n

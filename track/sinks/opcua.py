"""`OpcUaSink`: an OPC UA server (asyncua) exposing one station's counters, its last result and a result event.

Modelled on OPC 40100 (Machine Vision) as far as it maps: a result has an id, a timestamp, the recipe it came from
(our rule) and a state; a client learns of new results through a ResultReady event. Here, under Objects:

    <station>                 object; emits ResultReadyEventType events (subscribe to it)
      PartsCounted, DefectsCounted, ReversedCount, FramesSeen, FrameErrors   UInt64 counters
      LastResult              String: the last event's JSON
      LastResultId            String
    ResultReadyEventType      (our namespace, subtype of BaseEventType) with properties named after 40100's
                              ResultDataType fields: ResultId, PartId (the track id), MeasId (the frame index),
                              ResultState (1 part counted, 2 defect, 3 reverse, 0 frame error), InternalRecipeId
                              (rule id), ExternalRecipeId (rule version), CreationTime, IsPartial, IsSimulated,
                              ResultContent (the event's JSON)

The full 40100 information model (RecipeManagement, the ResultDataType structure, the state machine) is not
implemented: the properties carry the same names and meanings, flat. The server runs in its own thread and asyncio
loop; the inspection loop only queues (see base.py). No security (anonymous, no encryption): bind it to a plant-network
address behind the line's firewall, as OPC UA servers on a line usually are, or add certificates before exposing it.
"""

from __future__ import annotations

import asyncio
import datetime
import threading

from cseg.errors import InvalidInputError
from cseg.track.sinks.base import QueuedSink, SinkError
from cseg.track.sinks.urls import parse_sink_url

NAMESPACE = "urn:cseg:line"
COUNTERS = {"PartsCounted": "parts", "DefectsCounted": "defects", "ReversedCount": "reversed", "FramesSeen": "frames",
            "FrameErrors": "errors"}  # fmt: skip
RESULT_STATES = {"count": 1, "defect": 2, "reverse": 3, "error": 0}
START_S = 60.0  # asyncua builds the standard address space at start: seconds on a loaded machine


class OpcUaSink(QueuedSink):
    def __init__(self, url: str, *, station: str = "station", queue_size: int = 1000, simulated: bool = False):
        target = parse_sink_url(url)
        if target.scheme != "opc.tcp":
            raise InvalidInputError(f"OpcUaSink needs an opc.tcp:// URL, got {url!r}")
        try:
            import asyncua  # noqa: F401
        except ImportError as exc:
            raise ImportError("the OPC UA sink needs asyncua: pip install 'cseg[line]'") from exc
        super().__init__(url, queue_size)
        self.station, self.simulated = station, simulated
        self._loop: asyncio.AbstractEventLoop | None = None
        self._started = threading.Event()
        self._stopped: asyncio.Event | None = None
        self._error: str | None = None
        self._server_thread = threading.Thread(target=lambda: asyncio.run(self._serve()), name=f"cseg-opcua {url}",
                                               daemon=True)  # fmt: skip
        self._server_thread.start()
        if not self._started.wait(START_S) or self._error:
            raise SinkError(f"OPC UA server {url} did not start: {self._error or f'not ready in {START_S:g} s'}")
        self._start_worker()

    async def _serve(self) -> None:
        from asyncua import Server, ua

        try:
            server = Server()
            await server.init()
            server.set_endpoint(self.url)
            server.set_server_name(f"cseg line station {self.station}")
            server.set_security_policy([ua.SecurityPolicyType.NoSecurity])
            idx = await server.register_namespace(NAMESPACE)
            station = await server.nodes.objects.add_object(idx, self.station)
            self._vars = {}
            for name in COUNTERS:
                self._vars[name] = await station.add_variable(idx, name, ua.Variant(0, ua.VariantType.UInt64))
            self._vars["LastResult"] = await station.add_variable(idx, "LastResult", "")
            self._vars["LastResultId"] = await station.add_variable(idx, "LastResultId", "")
            properties = [("ResultId", ua.VariantType.String), ("PartId", ua.VariantType.String),
                          ("MeasId", ua.VariantType.String), ("ResultState", ua.VariantType.Int32),
                          ("InternalRecipeId", ua.VariantType.String), ("ExternalRecipeId", ua.VariantType.String),
                          ("CreationTime", ua.VariantType.DateTime), ("IsPartial", ua.VariantType.Boolean),
                          ("IsSimulated", ua.VariantType.Boolean),
                          ("ResultContent", ua.VariantType.String)]  # fmt: skip
            event_type = await server.create_custom_event_type(idx, "ResultReadyEventType", ua.ObjectIds.BaseEventType,
                                                               properties)  # fmt: skip
            self._generator = await server.get_event_generator(event_type, station)
            self._ua, self._server = ua, server
            self._loop = asyncio.get_running_loop()
            self._stopped = asyncio.Event()
            async with server:
                self._started.set()
                await self._stopped.wait()
        except Exception as exc:  # a port in use, a bad bind address: reported to the constructor
            self._error = f"{type(exc).__name__}: {exc}"
            self._started.set()

    async def _publish(self, event, counts: dict) -> None:
        ua, write = self._ua, self._server.write_attribute_value  # the server's direct write: no service round trip
        for name, key in COUNTERS.items():
            value = ua.Variant(int(counts.get(key, 0)), ua.VariantType.UInt64)
            await write(self._vars[name].nodeid, ua.DataValue(value))
        result_id = f"{event.station}-{event.seq}"
        await write(self._vars["LastResult"].nodeid, ua.DataValue(ua.Variant(event.to_json(), ua.VariantType.String)))
        await write(self._vars["LastResultId"].nodeid, ua.DataValue(ua.Variant(result_id, ua.VariantType.String)))
        fields = self._generator.event
        fields.ResultId, fields.PartId = result_id, "" if event.track_id is None else str(event.track_id)
        fields.MeasId, fields.ResultState = str(event.frame), RESULT_STATES[event.kind]
        fields.InternalRecipeId, fields.ExternalRecipeId = event.rule_id, event.rule_version
        fields.CreationTime = datetime.datetime.fromtimestamp(event.wall_time, datetime.timezone.utc)
        fields.IsPartial, fields.IsSimulated, fields.ResultContent = False, self.simulated, event.to_json()
        await self._generator.trigger(message=f"{event.kind} {result_id}")

    def connected(self) -> bool:
        return self._loop is not None and not self._error

    def _deliver(self, event, counts: dict) -> bool:
        future = asyncio.run_coroutine_threadsafe(self._publish(event, counts), self._loop)
        future.result(timeout=10)
        return True

    def _shutdown(self) -> None:
        if self._loop is not None and self._stopped is not None:
            self._loop.call_soon_threadsafe(self._stopped.set)
            self._server_thread.join(10)

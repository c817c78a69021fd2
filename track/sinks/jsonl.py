"""`JsonlSink`: one JSON object per line in a file (append), flushed per event so a crash loses nothing written."""

from __future__ import annotations

from pathlib import Path

from cseg.track.sinks.base import QueuedSink, SinkError


class JsonlSink(QueuedSink):
    def __init__(self, path: str | Path, queue_size: int = 10000):
        super().__init__(str(path), queue_size)
        try:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            self._file = open(path, "a", encoding="utf-8")
        except OSError as exc:
            raise SinkError(f"events file {path} cannot be opened for writing: {exc.strerror or exc}") from None
        self._start_worker()

    def _deliver(self, event, counts: dict) -> bool:
        self._file.write(event.to_json() + "\n")
        self._file.flush()
        return True

    def _shutdown(self) -> None:
        self._file.close()

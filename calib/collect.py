"""`cseg calib collect`: run the fp32 bundle over a calibration set and keep every graph's inputs as .npz files.

One folder per graph, one `NNNN.npz` per call, keyed by ONNX input name, so every quantizer (and every re-run) sees
exactly the same inputs. Decode steps are many and alike: the prefill and every DECODE_STRIDE-th step are kept.
Each sample runs both routes (shortcut and full) so both uses of the SAM 3 decoder are represented.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np
from tqdm import tqdm

from cseg.calib.calibration_set import CalibrationItem

DECODE_STRIDE = 4
MAX_NEW_TOKENS = 16


class _Recorder:
    def __init__(self, out: Path):
        self.out = out
        self.counts: dict[str, int] = defaultdict(int)
        self.decode_steps = 0

    def save(self, key: str, feed: dict[str, np.ndarray]) -> None:
        folder = self.out / key
        folder.mkdir(parents=True, exist_ok=True)
        np.savez(folder / f"{self.counts[key]:04d}.npz", **{k: np.asarray(v) for k, v in feed.items()})
        self.counts[key] += 1

    def wrap_graph(self, graph) -> None:
        run = graph.run

        def recording_run(feed):
            self.save(graph.key, {k: v for k, v in feed.items() if k in graph.input_names})
            return run(feed)

        graph.run = recording_run

    def wrap_decoder(self, decoder) -> None:
        step = decoder.step

        def recording_step(cache, ids, image_embeds, positions, mask):
            if cache.length == 0 or self.decode_steps % DECODE_STRIDE == 0:
                feed = {"input_ids": ids, "image_embeds": image_embeds, "position_ids": positions, "attention_mask": mask}
                views = decoder.cache_views(cache, ids.shape[1])
                feed.update({name: past.copy() for name, (past, _) in zip(decoder.past_names, views)})
                self.save("vlm_decoder", feed)
            self.decode_steps += cache.length > 0
            return step(cache, ids, image_embeds, positions, mask)

        decoder.step = recording_step


def collect(runtime, items: list[CalibrationItem], out: str | Path, *, progress: bool = True,
            text=None) -> dict[str, int]:  # fmt: skip
    """Record the inputs of every graph of the (fp32) bundle `runtime` serves over `items`; returns the number of
    files per graph. The runtime's graphs record from then on: give each collection a runtime of its own.
    text: phrase -> SAM 3 text features, for a rule-only bundle (see sam3_on_text)."""
    out = Path(out)
    recorder = _Recorder(out)
    for key, graph in runtime.graphs.items():
        if key != "vlm_decoder":
            recorder.wrap_graph(graph)
    if runtime.decoder is not None:
        recorder.wrap_decoder(runtime.decoder)
    for item in tqdm(items, desc="calibration", unit="sample", disable=not progress):
        if text is not None:
            sam3_on_text(runtime, item, text)
            continue
        runtime.segment(str(item.image), item.prompt, item.demos or None, route="full", max_new_tokens=MAX_NEW_TOKENS)
        runtime.segment(str(item.image), item.prompt, route="shortcut")
    return dict(recorder.counts)


def sam3_on_text(runtime, item: CalibrationItem, text) -> tuple[np.ndarray, float]:
    """(mask, presence) of SAM 3 on `item`'s image prompted with its text alone, the text features from `text`: how
    a rule-only bundle (no reasoner to make concept tokens, no text encoder) is calibrated and checked."""
    from cseg.images import load_frame

    features, mask = text(item.prompt)
    threshold = runtime.manifest["postprocess"]["instance_score_threshold"]
    raw, semantic, _ = runtime.sam3.apply(load_frame(str(item.image)), features, mask, None, threshold, {})
    return semantic, runtime.presence(raw)


def feeds(folder: str | Path) -> list[dict[str, np.ndarray]]:
    """The recorded inputs of one graph, in recording order."""
    out = []
    for path in sorted(Path(folder).glob("*.npz")):
        with np.load(path, allow_pickle=False) as data:
            out.append({name: data[name] for name in data.files})
    return out

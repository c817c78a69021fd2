"""SAM 3's per-frame steps on the GPU for the TensorRT backend (the device half of runtime/host/sam3.py).

Only the uint8 camera frame crosses to the device (once, from a pinned buffer) and only masks, boxes, scores and the
presence logit come back. Between them: the preprocess kernel writes the vision engine's input, the vision engine's
FPN buffers are bound as the decoder engine's inputs, and the postprocess kernels turn the decoder's logits into
uint8 masks at the frame size (instances at or below the score threshold are skipped). On the rule path
(`Runtime.apply` / `stream`) the whole frame (copy in, preprocess, vision, decoder, masks, small copies out) is
captured as one CUDA graph per input size and replayed; only the kept instances' masks are copied back after it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cseg.errors import BundleError, EngineError
from cseg.images import SAM3_MEAN, SAM3_STD, Frame
from cseg.lru import LRU
from cseg.pipeline import timed
from cseg.runtime.cuda.buffers import DeviceArray
from cseg.runtime.cuda.graphs import CapturedWork, Stream, check, runtime_api
from cseg.runtime.cuda.kernels import kernels
from cseg.runtime.postprocess import select_instances
from cseg.runtime.host.sam3 import ImageState, Sam3Output, concept_feed

FRAME_SIZES = 4  # input sizes whose buffers (and rule-path graphs) are kept, least recently used dropped
SMALL_OUTPUTS = ("presence_logit", "instance_scores", "instance_boxes")
FLOAT32_TENSORS = {"sam3_vision": ("pixel_values",), "sam3_decoder": ("semantic_logits", "instance_scores",
                                                                      "instance_masks")}  # fmt: skip


@dataclass
class FrameBuffers:
    """Everything of one input size: the frame (its pinned mirror is the copy-in buffer) and the uint8 masks."""

    frame: DeviceArray  # [H, W, 3] uint8
    semantic: DeviceArray  # [1, H, W] uint8
    masks: DeviceArray  # [K, H, W] uint8

    def close(self) -> None:
        for array in (self.frame, self.semantic, self.masks):
            array.close()


class DeviceSam3:
    def __init__(self, vision, decoder, prep: dict, stream: Stream):
        self.vision, self.decoder, self.stream = vision, decoder, stream
        self.size = prep["size"]
        for graph in (vision, decoder):
            for name in FLOAT32_TENSORS[graph.key]:
                if graph.buffers[name].dtype != np.float32:
                    raise BundleError(f"engine {graph.key}: {name} is {graph.buffers[name].dtype}, the frame kernels "
                                      "need float32; re-export the bundle with this cseg version")  # fmt: skip
        for i, name in enumerate(vision.output_names):
            if vision.buffers[name].dtype != decoder.buffers[f"fpn_{i}"].dtype:
                raise BundleError(f"engines sam3_vision ({name}) and sam3_decoder (fpn_{i}) disagree on the FPN dtype")
        self.kernels = kernels()  # EngineError saying how to rebuild when the fatbin is missing or does not load
        _, self.top_k, self.mask_h, self.mask_w = decoder.buffers["instance_masks"].shape
        # the rule-path graphs are keyed by (height, width, ...): a size's graphs go with its buffers (they write them)
        self._rules: LRU[tuple, CapturedWork] = LRU(FRAME_SIZES * 2, lambda _, work: work.close())
        self._sizes: LRU[tuple[int, int], FrameBuffers] = LRU(FRAME_SIZES, self._drop_size)
        self._decoded = 0  # which decode the decoder's logit buffers hold

    # --- the steps of cseg.runtime.host.sam3 ---------------------------------------------------------------------

    def encode(self, frame: Frame, timings: dict) -> ImageState:
        buffers = self._buffers(frame.height, frame.width)
        with timed(timings, "sam3_preprocess"):
            np.copyto(buffers.frame.host, frame.pixels)  # strided, grey or flipped frames become one packed copy
            buffers.frame.push(self.stream)
            self._preprocess(buffers, frame.bgr, self.stream)
        with timed(timings, "sam3_vision"):
            self.vision.launch(*self._bind_vision())  # captured per shape, as the engines' own runs are
            self.stream.synchronize()
        return ImageState(frame, self._fpn())

    def decode(self, state: ImageState, features, mask, concept_tokens, timings: dict) -> Sam3Output:
        with timed(timings, "sam3_decoder"):  # the FPN bound in place; the logits stay on the device
            small = self.decoder.run(concept_feed(features, mask, concept_tokens), device_inputs=state.fpn,
                                     fetch=SMALL_OUTPUTS)  # fmt: skip
        self._decoded += 1
        return DeviceSam3Output(None, *(small[name] for name in SMALL_OUTPUTS), None, decoded=self._decoded)

    def masks(self, raw: Sam3Output, size: tuple[int, int], threshold: float, bicubic: bool = False):
        if getattr(raw, "decoded", None) != self._decoded:
            raise EngineError("the SAM 3 logits of this result were overwritten on the device by a later prompt")
        buffers = self._buffers(*size)
        self._postprocess(buffers, threshold, self.stream, bicubic)
        buffers.semantic.pull(self.stream)
        self.stream.synchronize()
        return self._results(buffers, raw, size, threshold)

    def apply(self, frame: Frame, features, mask, concept_tokens, threshold: float, timings: dict):
        """The rule path: one captured graph per (input size, prompt shapes) from the uint8 frame to the masks."""
        buffers = self._buffers(frame.height, frame.width)
        feed = concept_feed(features, mask, concept_tokens)
        with timed(timings, "sam3_frame_graph"):
            np.copyto(buffers.frame.host, frame.pixels)
            for name, value in feed.items():
                self.decoder.buffers[name].stage(value)
            key = (frame.height, frame.width, frame.bgr, float(threshold),
                   *((name, value.shape) for name, value in feed.items()))  # fmt: skip
            work = self._rules.get_or_create(key, lambda: CapturedWork(
                self.stream, lambda stream: self._frame_work(buffers, frame.bgr, feed, threshold, stream)))
            work.launch()
            self.stream.synchronize()
        self._decoded += 1
        raw = DeviceSam3Output(None, *(self.decoder.buffers[n].host_view(self._small_shape(n)).copy()
                                       for n in SMALL_OUTPUTS), None, decoded=self._decoded)  # fmt: skip
        with timed(timings, "postprocess"):
            return (raw, *self._results(buffers, raw, (frame.height, frame.width), threshold))

    # --- device work ------------------------------------------------------------------------------------------------

    def _frame_work(self, buffers: FrameBuffers, bgr: bool, feed: dict, threshold: float, stream: Stream) -> None:
        buffers.frame.push(stream)
        self._preprocess(buffers, bgr, stream)
        self.vision.enqueue(self._bind_vision()[0], stream)
        inputs = dict(self._fpn())
        for name, value in feed.items():
            array = self.decoder.buffers[name]
            array.push(stream, value.nbytes)
            inputs[name] = (array.pointer, value.shape)
        context, _ = self.decoder.bind("default", inputs)
        self.decoder.enqueue(context, stream)
        self._postprocess(buffers, threshold, stream)
        buffers.semantic.pull(stream)
        for name in SMALL_OUTPUTS:
            self.decoder.buffers[name].pull(stream)

    def _preprocess(self, buffers: FrameBuffers, bgr: bool, stream: Stream) -> None:
        height, width, _ = buffers.frame.shape
        self.kernels.preprocess(stream, buffers.frame.pointer, height, width, (width * 3, 3, 1), bgr,
                                self.vision.buffers["pixel_values"].pointer, self.size, [SAM3_MEAN] * 3,
                                [SAM3_STD] * 3)  # fmt: skip

    def _bind_vision(self):
        """The vision engine reading the preprocess kernel's output in place: (context, profile, signature)."""
        pixels = self.vision.buffers["pixel_values"]
        context, signature = self.vision.bind("default", {"pixel_values": (pixels.pointer, pixels.shape)})
        return context, "default", signature

    def _postprocess(self, buffers: FrameBuffers, threshold: float, stream: Stream, bicubic: bool = False) -> None:
        _, height, width = buffers.semantic.shape
        logits = self.decoder.buffers
        self.kernels.upsample_threshold(stream, logits["semantic_logits"].pointer, 1,
                                        *logits["semantic_logits"].shape[-2:], buffers.semantic.pointer, height,
                                        width, bicubic=bicubic)  # fmt: skip
        self.kernels.upsample_threshold(stream, logits["instance_masks"].pointer, self.top_k, self.mask_h,
                                        self.mask_w, buffers.masks.pointer, height, width,
                                        logits["instance_scores"].pointer, threshold, bicubic)  # fmt: skip

    def _results(self, buffers: FrameBuffers, raw: Sam3Output, size: tuple[int, int], threshold: float):
        mask = buffers.semantic.host[0].view(bool).copy()

        def kept_masks(keep):  # only the kept instances' masks come back
            cudart, (_, height, width) = runtime_api(), buffers.masks.shape
            for k in keep:
                offset = int(k) * height * width
                host, device = int(buffers.masks.host_pointer) + offset, int(buffers.masks.pointer) + offset
                check(cudart.cudaMemcpyAsync(host, device, height * width, cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost,
                                             self.stream.handle), "cudaMemcpyAsync")  # fmt: skip
            self.stream.synchronize()
            return buffers.masks.host[keep].view(bool)

        return mask, select_instances(raw.scores, raw.boxes, kept_masks, size, threshold)

    # --- buffers ----------------------------------------------------------------------------------------------------

    def _fpn(self) -> dict:
        shapes = self.vision.contexts["default"]
        return {f"fpn_{i}": (self.vision.buffers[name].pointer, tuple(shapes.get_tensor_shape(name)))
                for i, name in enumerate(self.vision.output_names)}  # fmt: skip

    def _small_shape(self, name: str) -> tuple:
        return tuple(self.decoder.contexts["default"].get_tensor_shape(name))

    def _buffers(self, height: int, width: int) -> FrameBuffers:
        return self._sizes.get_or_create((height, width), lambda: FrameBuffers(
            DeviceArray((height, width, 3), np.uint8), DeviceArray((1, height, width), np.uint8),
            DeviceArray((self.top_k, height, width), np.uint8)))  # fmt: skip

    def _drop_size(self, size: tuple[int, int], buffers: FrameBuffers) -> None:
        """An evicted input size: its rule-path graphs (captured on its buffers) are closed first, then the buffers."""
        self._rules.evict_where(lambda key: key[:2] == size)
        buffers.close()


@dataclass
class DeviceSam3Output(Sam3Output):
    decoded: int = 0  # DeviceSam3's decode count when these outputs were made (its logit buffers hold only the last)

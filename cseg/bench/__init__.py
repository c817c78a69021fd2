"""`cseg bench`: per-stage latency of a bundle, and of the PyTorch reference on the same machine in the same run.

Both backends serve the same images and prompts through the same request flow (cseg.pipeline), so their
`Segmentation.timings` are comparable stage by stage. Each path (shortcut: SAM 3 alone; full: reasoning with a fixed
token budget) is run `repeat` times after `warmup` runs, the backends taking turns run by run; medians, min, max,
p90 and p99 are reported, plus decode tokens/s, time to first token, a frame-loop throughput and the peak resident
memory of this process. The reference can run in several configurations (fp32 and bf16 weights); the runtime's
speed-up is given against each and against the fastest.
"""

from cseg.bench.chart import plot
from cseg.bench.machine import BANDWIDTH_BYTES, PEAK_SIDE, ROOFLINE_STAGES, machine_peaks, roofline, roofline_table
from cseg.bench.summary import decode_rate, report, speedups, table, time_to_first_token
from cseg.bench.timing import PATHS, Measurement, frame_loop, measure, median_ms, native_bf16

__all__ = ["BANDWIDTH_BYTES", "PATHS", "PEAK_SIDE", "ROOFLINE_STAGES", "Measurement", "decode_rate", "frame_loop",
           "machine_peaks", "measure", "median_ms", "native_bf16", "plot", "report", "roofline", "roofline_table",
           "speedups", "table", "time_to_first_token"]

"""`cseg bench`: per-stage latency of a bundle, side by side with the PyTorch reference, with roofline and plot."""

from __future__ import annotations

import json
from pathlib import Path

from cseg.cli.args import BundleArgs, GenerationArgs, OutputArgs, add_groups
from cseg.errors import InvalidInputError

OUTPUTS = OutputArgs(("--json", "file", {"help": "write the summary here"}),
                     ("--plot", "file", {"help": "write the stage-breakdown plot (PNG) here"}))  # fmt: skip


def register(sub) -> None:
    bench_parser = sub.add_parser("bench", help="per-stage latency of a bundle (and of the PyTorch reference)")
    add_groups(bench_parser, BundleArgs())
    bench_parser.add_argument("--reference", help="checkpoint folder (conceptseg-r1/ + sam3/) to time side by side")
    bench_parser.add_argument("--reference-dtype", action="append", choices=("fp32", "bf16"),
                              help="reference configuration(s) to time (repeatable; default fp32, and bf16 where the "
                                   "CPU has native bf16: AVX512-BF16 or AMX)")  # fmt: skip
    bench_parser.add_argument("--openvino", action="store_true",
                              help="cpu bundles: also time every graph OpenVINO can serve on OpenVINO (bf16 where "
                                   "the CPU has AVX512-BF16 or AMX, else f32) and every graph on ONNX Runtime, as "
                                   "columns of their own beside the bundle as it serves (its manifest's choice)")
    bench_parser.add_argument("--image", action="append", default=None, help="image(s); default sample:astronaut")
    bench_parser.add_argument("--prompt", default="helmet")
    bench_parser.add_argument("--repeat", type=int, default=5)
    bench_parser.add_argument("--warmup", type=int, default=1)
    add_groups(bench_parser, GenerationArgs(default=32, help="decode budget of the full path"))
    bench_parser.add_argument("--frames", type=int, default=10, help="frames in the throughput loop")
    add_groups(bench_parser, OUTPUTS)
    bench_parser.set_defaults(run=run_bench)


def run_bench(args) -> int:
    from tqdm import tqdm

    from cseg import bench, samples
    from cseg.images import load_image
    from cseg.runtime import host_path_bench

    if min(args.repeat, args.frames, args.max_new_tokens) < 1 or args.warmup < 0:
        raise InvalidInputError("--repeat, --frames and --max-new-tokens must be >= 1, --warmup >= 0")
    OUTPUTS.parse(args)
    images = [load_image(samples.resolve(path)) for path in args.image or ["sample:astronaut"]]
    backends = {"runtime": BundleArgs().parse(args)}
    if args.openvino:
        backends.update(_cpu_backends(backends["runtime"]))
    if args.reference:
        from cseg.export.reference import reference_configurations

        dtypes = args.reference_dtype or ["fp32", *(["bf16"] if bench.native_bf16() else [])]
        backends.update(reference_configurations(args.reference, dtypes))
    steps = len(backends) * (len(bench.PATHS) * (args.warmup + args.repeat) + args.frames)
    with tqdm(total=steps, desc="bench", unit="run") as progress:
        results = bench.measure(backends, images[0], args.prompt, args.repeat, args.warmup, args.max_new_tokens,
                                progress.update)  # fmt: skip
        fps = bench.frame_loop(backends, (images * args.frames)[: args.frames], args.prompt)
        progress.update(len(backends) * args.frames)
    summary = bench.report(results, fps)
    runtime = backends["runtime"]
    summary["roofline"] = bench.roofline(summary, runtime.manifest, bench.machine_peaks(), runtime.cpu_choices)
    summary["host_path"] = host_path_bench.host_path()
    print(bench.table(summary))
    print(bench.roofline_table(summary["roofline"]))
    print(host_path_bench.host_path_table(summary["host_path"]))
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=1))
    if args.plot:
        bench.plot(summary, args.plot)
        print(f"plot: {args.plot}")
    return 0


def _cpu_backends(runtime) -> dict:
    """The bundle with every graph on ONNX Runtime, and with every graph OpenVINO can serve on OpenVINO."""
    from cseg import cpu_backends
    from cseg.runtime import Runtime

    if runtime.backend != "onnxruntime":
        raise InvalidInputError("--openvino times a cpu bundle's graphs; this bundle serves with TensorRT")
    missing = cpu_backends.openvino_missing()
    if missing:
        raise InvalidInputError(f"--openvino: {missing}")
    precision = cpu_backends.native_precision()
    forced = cpu_backends.with_openvino(runtime.manifest, precision, "cseg bench --openvino")
    return {"onnxruntime": Runtime.from_manifest(runtime.bundle, runtime.manifest, device="cpu"),
            f"openvino-{precision}": Runtime.from_manifest(runtime.bundle, forced)}

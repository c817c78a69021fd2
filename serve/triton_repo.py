"""`cseg export-triton BUNDLE REPO`: a Triton Inference Server model repository for a stock tritonserver (and
DeepStream's nvinferserver, which runs Triton in-process) from a cseg bundle.

What it writes:
- every SAM 3 graph of the bundle (sam3_vision, sam3_decoder, and sam3_text on a full bundle) as an `onnxruntime`
  model, its ONNX file (and external data) copied in; where the bundle has TensorRT engines (`cseg build`), each
  engine as a `tensorrt_plan` model `<graph>_trt` too. Their config.pbtxt is generated from the ONNX graph's own
  inputs and outputs (names, data types, dims): a graph whose every input and output starts with the same symbolic
  axis gets that axis as Triton's batch dimension (max_batch_size > 0, dynamic batching); the others (sam3_vision
  takes exactly one image) get max_batch_size 0 and their full dims. Instance groups: KIND_CPU for a cpu bundle,
  KIND_GPU for a GPU target's.
- the request flow, `cseg_segment`, `cseg_apply` (and `cseg_induce` given a rules folder), as Python-backend models
  with the tensors of cseg.serve.contract (so RemoteRuntime talks to them as to `cseg serve`). Their model.py opens the
  bundle's cseg Runtime (cseg.serve.triton_python): it does NOT call the graph models above through BLS; they serve
  other clients (a DeepStream pipeline, perf_analyzer) and the Runtime runs the same graphs in its own process.
  cseg (with its runtime's dependencies) must be importable by Triton's Python backend.

Every config is written from Triton's own ModelConfig protobuf (tritonclient ships it) and checked after writing:
parsed back with protobuf's text_format and compared with the ONNX graph (check_repository). The Python-backend
models load and serve on a stock tritonserver, the 2.51 binary PyTriton's wheel bundles (cseg.serve.stock starts it;
tests/test_serve_stock.py); the graph models have not been loaded by one here (that binary has only the Python
backend: no onnxruntime or tensorrt backend).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from cseg.bundle.schema import read_manifest, rule_only
from cseg.bundle.verify import verify_files
from cseg.errors import BundleError, CsegError, InvalidInputError
from cseg.serve import contract

MARKER = "cseg-triton-repository.json"  # says a folder is a repository this command wrote: --force replaces only those
SHIM = '''"""Triton Python-backend model written by `cseg export-triton`: the request flow is cseg's (cseg must be
importable by the backend stub's Python: the environment whose `python` is first on tritonserver's PATH)."""

from cseg.serve.triton_python import TritonPythonModel  # noqa: F401
'''


def _proto():
    try:
        from google.protobuf import text_format
        from tritonclient.grpc import model_config_pb2
    except ImportError as exc:
        raise CsegError(f"cseg export-triton needs tritonclient[grpc] (Triton's model-config protobuf): {exc}; "
                        "pip install 'tritonclient[grpc]' (the serve or test extra)") from None  # fmt: skip
    return model_config_pb2, text_format


def _onnx():
    try:
        import onnx
    except ImportError:
        raise CsegError("cseg export-triton reads the bundle's ONNX graphs with the onnx package: pip install onnx "
                        "(the export extra)") from None  # fmt: skip
    return onnx


def graph_io(path: Path) -> tuple[list, list]:
    """The ONNX graph's real inputs and outputs: [(name, onnx elem type, [dim_value or dim_param or None])]."""
    onnx = _onnx()
    model = onnx.load(str(path), load_external_data=False)
    initializers = {init.name for init in model.graph.initializer}

    def describe(values):
        out = []
        for value in values:
            tensor = value.type.tensor_type
            dims = [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in tensor.shape.dim]
            out.append((value.name, tensor.elem_type, dims))
        return out

    return describe(v for v in model.graph.input if v.name not in initializers), describe(model.graph.output)


def triton_type(elem_type: int) -> str:
    onnx = _onnx()
    names = {onnx.TensorProto.FLOAT: "TYPE_FP32", onnx.TensorProto.FLOAT16: "TYPE_FP16",
             onnx.TensorProto.BFLOAT16: "TYPE_BF16", onnx.TensorProto.DOUBLE: "TYPE_FP64",
             onnx.TensorProto.INT64: "TYPE_INT64", onnx.TensorProto.INT32: "TYPE_INT32",
             onnx.TensorProto.INT16: "TYPE_INT16", onnx.TensorProto.INT8: "TYPE_INT8",
             onnx.TensorProto.UINT8: "TYPE_UINT8", onnx.TensorProto.BOOL: "TYPE_BOOL",
             onnx.TensorProto.STRING: "TYPE_STRING"}  # fmt: skip
    if elem_type not in names:
        raise BundleError(f"an ONNX tensor of element type {elem_type} has no Triton data type")
    return names[elem_type]


def batch_axis(inputs, outputs) -> str | None:
    """The graph's batch axis: a symbolic first axis shared by every input and output, else None (fixed batch)."""
    firsts = {dims[0] if dims and isinstance(dims[0], str) else None for _, _, dims in [*inputs, *outputs]}
    return firsts.pop() if len(firsts) == 1 and None not in firsts else None


def graph_config(name: str, backend: str, filename: str, inputs, outputs, kind: str, max_batch: int):
    """A ModelConfig for one graph (an ONNX file or the TensorRT engine built from it: the same tensors)."""
    pb, _ = _proto()
    batched = batch_axis(inputs, outputs) is not None
    config = pb.ModelConfig(name=name, default_model_filename=filename, max_batch_size=max_batch if batched else 0)
    if backend == "tensorrt_plan":
        config.platform = "tensorrt_plan"
    else:
        config.backend = backend
    for values, field in ((inputs, config.input), (outputs, config.output)):
        for tensor_name, elem_type, dims in values:
            dims = dims[1:] if batched else dims
            field.add(name=tensor_name, data_type=getattr(pb, triton_type(elem_type)),
                      dims=[d if isinstance(d, int) and d > 0 else -1 for d in dims])  # fmt: skip
    if batched:
        config.dynamic_batching.SetInParent()
    config.instance_group.add(count=1, kind=getattr(pb.ModelInstanceGroup, kind))
    return config


def flow_config(model: str, bundle: Path, rules: Path | None, device: str, max_batch: int):
    """The Python-backend model of one contract model (cseg.serve.contract's tensors, cseg's request flow)."""
    pb, _ = _proto()
    batched = model != contract.INDUCE  # as `cseg serve`: cseg_induce is not batched
    config = pb.ModelConfig(name=model, backend="python", max_batch_size=max_batch if batched else 0)
    outputs = contract.INDUCE_OUTPUTS if model == contract.INDUCE else contract.OUTPUTS
    for specs, field in ((contract.INPUTS[model], config.input), (outputs, config.output)):
        for spec in specs:
            tensor = field.add(name=spec.name, data_type=getattr(pb, "TYPE_STRING" if spec.triton_dtype == "BYTES"
                               else f"TYPE_{spec.triton_dtype}"), dims=list(spec.shape))  # fmt: skip
            if spec.optional:  # inputs only (ModelOutput has no such field)
                tensor.optional = True
    if batched:
        config.dynamic_batching.SetInParent()
    # the Runtime picks its own device (device=): Triton's GPU assignment would not reach it
    config.instance_group.add(count=1, kind=pb.ModelInstanceGroup.KIND_CPU)
    # shared_memory: frames by reference (cseg.serve.shm) from clients on the server's host; "false" refuses them
    # (a stock tritonserver's own shared-memory endpoint is open unless restricted: the same exposure)
    for key, value in (("bundle", str(bundle)), ("rules", str(rules or "")), ("device", device),
                       ("shared_memory", "true")):  # fmt: skip
        config.parameters[key].string_value = value
    return config


def check_destination(repo: Path, force: bool) -> None:
    if repo.is_symlink() or (repo.exists() and not repo.is_dir()):
        raise InvalidInputError(f"{repo} is a file or a symlink; name a new folder for the model repository")
    if repo.exists() and not force:
        raise InvalidInputError(f"{repo} already exists; pass --force to replace it (a repository cseg export-triton "
                                "wrote; never another folder)")  # fmt: skip
    if repo.exists() and not (repo / MARKER).is_file():
        raise InvalidInputError(f"{repo} is not a model repository written by cseg export-triton (no {MARKER}); "
                                "--force replaces only those: remove it yourself or choose another REPO")  # fmt: skip


def export_repository(bundle, repo, *, rules=None, force: bool = False, max_batch: int = 8,
                      device: str = "auto") -> dict:  # fmt: skip
    """Write the repository (staged beside `repo`, moved into place when complete and checked); returns its
    summary: {model name: {"backend": ..., "max_batch_size": ...}}."""
    bundle, repo = Path(bundle).resolve(), Path(repo)
    check_destination(repo, force)
    if rules is not None and not Path(rules).is_dir():
        raise InvalidInputError(f"--rules {rules}: not a folder (cseg_induce saves its rules there, cseg_apply reads "
                                "them: the two run in separate processes under Triton)")  # fmt: skip
    if not isinstance(max_batch, int) or max_batch < 1:
        raise InvalidInputError(f"--max-batch must be at least 1, got {max_batch}")
    manifest = read_manifest(bundle)
    verify_files(bundle, manifest)
    pb, text_format = _proto()
    kind = "KIND_GPU" if "target_profile" in manifest else "KIND_CPU"
    engines = manifest.get("tensorrt", {}).get("engines", {})
    staging = repo.parent / f".{repo.name}.partial-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    summary = {}
    try:
        for key, graph in sorted(manifest["graphs"].items()):
            if not key.startswith("sam3_"):
                continue
            inputs, outputs = graph_io(bundle / graph["file"])
            source = Path(graph["file"])
            for data in graph.get("data_files", []):  # external weights keep their place beside the graph file
                _copy(bundle / data, staging / key / "1" / Path(data).relative_to(source.parent))
            _copy(bundle / source, staging / key / "1" / source.name)
            configs = [graph_config(key, "onnxruntime", source.name, inputs, outputs, kind, max_batch)]
            if key in engines:
                _copy(bundle / engines[key]["file"], staging / f"{key}_trt" / "1" / "model.plan")
                configs.append(graph_config(f"{key}_trt", "tensorrt_plan", "model.plan", inputs, outputs, "KIND_GPU",
                                            max_batch))  # fmt: skip
            for config in configs:
                _write_config(staging / config.name, config, text_format)
        flows = [contract.APPLY] if rule_only(manifest) else [contract.SEGMENT, contract.APPLY]
        if rules is not None and not rule_only(manifest):
            flows.append(contract.INDUCE)  # without a shared folder its rules would never reach cseg_apply
        for model in flows:
            config = flow_config(model, bundle, Path(rules).resolve() if rules else None, device, max_batch)
            _write_config(staging / model, config, text_format)
            (staging / model / "1" / "model.py").write_text(SHIM, encoding="utf-8")
        summary = check_repository(staging, bundle)
        (staging / MARKER).write_text(json.dumps({"bundle": str(bundle), "models": summary}, indent=1) + "\n")
        if repo.exists():
            retired = repo.parent / f".{repo.name}.old-{os.getpid()}"
            os.rename(repo, retired)
            os.rename(staging, repo)
            shutil.rmtree(retired, ignore_errors=True)
        else:
            os.rename(staging, repo)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return summary


def _copy(source: Path, target: Path) -> None:
    """A hard link where the file system allows (bundles are never changed in place), else a copy."""
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)


def _write_config(folder: Path, config, text_format) -> None:
    (folder / "1").mkdir(parents=True, exist_ok=True)
    (folder / "config.pbtxt").write_text(text_format.MessageToString(config), encoding="utf-8")


def check_repository(repo, bundle) -> dict:
    """Parse every config.pbtxt of `repo` as Triton's ModelConfig and compare each graph model's tensors with its
    ONNX graph in `bundle` (names, data types, dims, batch) and each flow model's with cseg.serve.contract; returns
    the summary, or BundleError naming the first difference."""
    pb, text_format = _proto()
    repo, bundle = Path(repo), Path(bundle)
    manifest = read_manifest(bundle)
    summary = {}
    for path in sorted(repo.glob("*/config.pbtxt")):
        config = text_format.Parse(path.read_text(encoding="utf-8"), pb.ModelConfig())
        if config.name != path.parent.name:
            raise BundleError(f"{path}: names model {config.name!r} in folder {path.parent.name!r}")
        got = ([(t.name, pb.DataType.Name(t.data_type), list(t.dims)) for t in config.input],
               [(t.name, pb.DataType.Name(t.data_type), list(t.dims)) for t in config.output])  # fmt: skip
        graph = manifest["graphs"].get(config.name.removesuffix("_trt"))
        if config.backend == "python":
            want = _flow_tensors(config.name)
        elif graph is not None:
            inputs, outputs = graph_io(bundle / graph["file"])
            batched = batch_axis(inputs, outputs) is not None
            if (config.max_batch_size > 0) != batched:
                raise BundleError(f"{path}: max_batch_size {config.max_batch_size} but the graph's batch axis is "
                                  f"{'dynamic' if batched else 'fixed'}")  # fmt: skip
            want = tuple([(n, triton_type(e), [d if isinstance(d, int) and d > 0 else -1 for d in dims[batched:]])
                          for n, e, dims in values] for values in (inputs, outputs))  # fmt: skip
            model_file = path.parent / "1" / config.default_model_filename
            if not model_file.is_file():
                raise BundleError(f"{path}: its model file {model_file.name} is missing")
        else:
            raise BundleError(f"{path}: model {config.name!r} is neither a graph of the bundle nor a cseg flow model")
        if got != tuple(want):
            raise BundleError(f"{path}: tensors {got} differ from the graph's {want}")
        kind = pb.ModelInstanceGroup.Kind.Name(config.instance_group[0].kind)
        summary[config.name] = {"backend": config.backend or config.platform, "max_batch_size": config.max_batch_size,
                                "instance_kind": kind}  # fmt: skip
    return summary


def _flow_tensors(model: str) -> tuple[list, list]:
    outputs = contract.INDUCE_OUTPUTS if model == contract.INDUCE else contract.OUTPUTS
    name = {"BYTES": "TYPE_STRING"}
    return tuple([(s.name, name.get(s.triton_dtype, f"TYPE_{s.triton_dtype}"), list(s.shape)) for s in specs]
                 for specs in (contract.INPUTS[model], outputs))  # fmt: skip

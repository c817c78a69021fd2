"""`cseg export-triton` (a model repository for a stock tritonserver) and the server-side induce handler, without a
server: every config.pbtxt is parsed as Triton's ModelConfig protobuf (tritonclient ships it) and compared with the
ONNX graph as ONNX Runtime reads it (not the onnx package the exporter reads it with); the Python-backend model runs
here with a stand-in for triton_python_backend_utils (a stock tritonserver with these backends is not available)."""

from __future__ import annotations

import json
import sys
import types

import numpy as np
import pytest

from cseg.cli import main
from cseg.errors import BundleError

pytest.importorskip("tritonclient.grpc", reason="tritonclient[grpc] (the test extra) is not installed")
from google.protobuf import json_format, text_format  # noqa: E402
from tritonclient.grpc import model_config_pb2 as pb  # noqa: E402

from cseg.serve import contract  # noqa: E402

ORT_TYPES = {"tensor(float)": "TYPE_FP32", "tensor(float16)": "TYPE_FP16", "tensor(int64)": "TYPE_INT64",
             "tensor(int32)": "TYPE_INT32", "tensor(bool)": "TYPE_BOOL", "tensor(uint8)": "TYPE_UINT8"}  # fmt: skip


def _configs(repo) -> dict:
    return {path.parent.name: text_format.Parse(path.read_text(), pb.ModelConfig()) for path in repo.glob("*/config.pbtxt")}


def _tensors(config):
    return [[(t.name, pb.DataType.Name(t.data_type), list(t.dims)) for t in tensors]
            for tensors in (config.input, config.output)]  # fmt: skip


def test_export_triton_writes_configs_that_match_the_graphs(tiny_bundle, sessions, tmp_path, capsys):
    repo = tmp_path / "repo"
    assert main(["export-triton", str(tiny_bundle), str(repo), "--rules", str(tmp_path)]) == 0
    assert "sam3_vision: onnxruntime, max_batch_size 0, KIND_CPU" in capsys.readouterr().out
    configs = _configs(repo)
    assert set(configs) == {"sam3_vision", "sam3_text", "sam3_decoder", *contract.MODELS}
    for key in ("sam3_vision", "sam3_text", "sam3_decoder"):
        config, session = configs[key], sessions[key]
        assert config.backend == "onnxruntime" and config.instance_group[0].kind == pb.ModelInstanceGroup.KIND_CPU
        assert (repo / key / "1" / config.default_model_filename).is_file()
        shapes = [value.shape for value in [*session.get_inputs(), *session.get_outputs()]]
        batched = len({shape[0] for shape in shapes}) == 1 and isinstance(shapes[0][0], str)
        assert (config.max_batch_size > 0) == batched and config.HasField("dynamic_batching") == batched
        want = [[(v.name, ORT_TYPES[v.type], [d if isinstance(d, int) else -1 for d in v.shape[batched:]])
                 for v in values] for values in (session.get_inputs(), session.get_outputs())]  # fmt: skip
        assert _tensors(config) == want, key
    assert configs["sam3_vision"].max_batch_size == 0  # one image per run: explicit dims, no dynamic batching
    assert list(configs["sam3_vision"].input[0].dims)[0] == 1
    for model in contract.MODELS:
        config = configs[model]
        assert config.backend == "python" and (repo / model / "1" / "model.py").is_file()
        assert config.parameters["bundle"].string_value == str(tiny_bundle.resolve())
        assert [t.name for t in config.input] == [s.name for s in contract.INPUTS[model]]
    assert configs[contract.INDUCE].max_batch_size == 0 and configs[contract.APPLY].max_batch_size == 8


def test_export_triton_rule_only_bundle_and_refusals(rule_only_bundle, tiny_bundle, tmp_path, capsys):
    repo = tmp_path / "repo"
    assert main(["export-triton", str(rule_only_bundle), str(repo), "--rules", str(tmp_path)]) == 0
    assert set(_configs(repo)) == {"sam3_vision", "sam3_decoder", contract.APPLY}  # no reasoner: no segment, induce
    capsys.readouterr()
    assert main(["export-triton", str(tiny_bundle), str(repo)]) == 2
    assert "already exists; pass --force" in capsys.readouterr().err
    assert main(["export-triton", str(tiny_bundle), str(repo), "--force"]) == 0  # its own repository: replaced
    assert contract.SEGMENT in _configs(repo) and not list(tmp_path.glob(".repo.*"))
    other = tmp_path / "other"
    (other / "x").mkdir(parents=True)
    assert main(["export-triton", str(tiny_bundle), str(other), "--force"]) == 2
    assert "not a model repository written by cseg export-triton" in capsys.readouterr().err
    assert (other / "x").is_dir()
    assert main(["export-triton", str(tmp_path / "missing"), str(tmp_path / "new")]) == 2
    assert "missing" in capsys.readouterr().err and not (tmp_path / "new").exists()
    assert main(["export-triton", str(tiny_bundle), str(tmp_path / "new"), "--max-batch", "0"]) == 2


def test_the_check_sees_a_config_that_differs_from_its_graph(tiny_bundle, tmp_path):
    from cseg.serve.triton_repo import check_repository, export_repository

    repo = tmp_path / "repo"
    export_repository(tiny_bundle, repo)
    path = repo / "sam3_decoder" / "config.pbtxt"
    config = text_format.Parse(path.read_text(), pb.ModelConfig())
    config.input[0].data_type = pb.TYPE_FP64
    path.write_text(text_format.MessageToString(config))
    with pytest.raises(BundleError, match="sam3_decoder.*differ from the graph"):
        check_repository(repo, tiny_bundle)


def _fake_backend(monkeypatch):
    """The parts of Triton's triton_python_backend_utils a Python model uses, over plain numpy arrays."""
    utils = types.ModuleType("triton_python_backend_utils")

    class Tensor:
        def __init__(self, name, array):
            self.name, self.array = name, array

        def as_numpy(self):
            return self.array

    utils.Tensor = Tensor
    utils.InferenceResponse = lambda output_tensors: {t.name: t.array for t in output_tensors}
    utils.get_input_tensor_by_name = lambda request, name: request.get(name)
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", utils)
    return Tensor


def _model(repo, name):
    from cseg.serve.triton_python import TritonPythonModel

    config = text_format.Parse((repo / name / "config.pbtxt").read_text(), pb.ModelConfig())
    model = TritonPythonModel()
    model.initialize({"model_config": json_format.MessageToJson(config, preserving_proto_field_name=True)})
    return model


def test_python_backend_models_induce_then_apply_through_the_rules_folder(tiny_bundle, runtime, photo, tmp_path,
                                                                         monkeypatch):  # fmt: skip
    """cseg_induce and cseg_apply as Triton runs them (separate model instances): the induced rule reaches apply
    through the shared rules folder, and apply's answer equals the local Runtime's."""
    from skimage import data

    Tensor = _fake_backend(monkeypatch)
    repo, rules = tmp_path / "repo", tmp_path / "rules"
    rules.mkdir()
    export_flags = ["export-triton", str(tiny_bundle), str(repo), "--rules", str(rules)]
    assert main(export_flags) == 0
    induce, apply = _model(repo, contract.INDUCE), _model(repo, contract.APPLY)
    demo = data.coffee()
    request = {"image": Tensor("image", np.ascontiguousarray(photo)),
               "question": Tensor("question", np.array([b"the cup"], object)),
               "demo_images": Tensor("demo_images", np.array([demo.tobytes()], object)),
               "demo_sizes": Tensor("demo_sizes", np.array([demo.shape[:2]], np.int32)),
               "demo_boxes": Tensor("demo_boxes", np.array([[120, 30, 420, 300]], np.float32)),
               "demo_box_index": Tensor("demo_box_index", np.array([0], np.int32)),
               "options": Tensor("options", np.array([b'{"max_new_tokens": 10, "rule_id": "cup"}'], object))}  # fmt: skip
    (answer,) = induce.execute([request])
    assert answer["error"][0] == b"" and answer["rule_id"][0] == b"cup" and (rules / "cup.json").is_file()
    want = runtime.induce([(demo, [[120, 30, 420, 300]])], "the cup", image=photo, max_new_tokens=10)
    frame = {"image": Tensor("image", photo[None]), "rule_id": Tensor("rule_id", np.array([[b"cup"]], object))}
    (served,) = apply.execute([frame])
    from cseg.serve.client import decode

    got = decode(served.get)[0]
    local = runtime.apply(want, photo)
    assert got.rule_version == answer["rule_version"][0].decode() and np.array_equal(got.mask, local.mask)
    assert got.presence == pytest.approx(local.presence, abs=1e-5)
    unknown = {**frame, "rule_id": Tensor("rule_id", np.array([[b"nope"]], object))}
    assert b"unknown rule 'nope'" in apply.execute([unknown])[0]["error"][0, 0]


def test_induce_on_a_rule_only_bundle_is_a_bundle_error(rule_only_bundle, photo):
    from cseg.runtime import Runtime
    from cseg.serve.induce import Inducer

    image = np.ascontiguousarray(photo[:32, :32])
    request = {"image": image, "question": np.array([b"the cup"], object),
               "demo_images": np.array([image.tobytes()], object), "demo_sizes": np.array([[32, 32]], np.int32),
               "demo_boxes": np.zeros((1, 4), np.float32), "demo_box_index": np.array([-1], np.int32),
               "options": np.array([b"{}"], object)}  # fmt: skip
    (answer,) = Inducer(Runtime.open(rule_only_bundle), {}, None).induce([request])
    error = json.loads(answer["error"][0])
    assert error["type"] == "BundleError" and "rule-only bundle" in error["message"]
    assert all(value.size > 0 for value in answer.values())  # PyTriton cannot send zero-sized tensors

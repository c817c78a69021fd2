"""The static check of graphs against onnx-tensorrt's operator matrix (cseg.engines.tensorrt_support), on tiny
hand-made graphs."""

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from cseg.engines.targets import TARGETS
from cseg.engines.tensorrt_support import TABLE_FOR_VERSION, check_bundle, check_graph
from cseg.errors import ExportError


def _model(nodes, inputs, output, opset=17, domains=(), initializers=()):
    graph = helper.make_graph(nodes, "g", inputs, [output], initializer=list(initializers))
    imports = [helper.make_opsetid("", opset), *(helper.make_opsetid(d, 1) for d in domains)]
    return helper.make_model(graph, opset_imports=imports)


def _float(name, shape=(2, 4)):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, list(shape))


def _supported():
    """MatMul + Softmax in fp16 behind a Cast, int8 QDQ on the weight: what a converted graph looks like."""
    weight = numpy_helper.from_array(np.ones((4, 4), np.int8), "w_q")
    scale = numpy_helper.from_array(np.array(0.1, np.float16), "w_scale")
    nodes = [helper.make_node("Cast", ["x"], ["x16"], to=TensorProto.FLOAT16),
             helper.make_node("DequantizeLinear", ["w_q", "w_scale"], ["w"]),
             helper.make_node("MatMul", ["x16", "w"], ["y16"]),
             helper.make_node("Softmax", ["y16"], ["s16"], axis=-1),
             helper.make_node("Cast", ["s16"], ["y"], to=TensorProto.FLOAT)]  # fmt: skip
    return _model(nodes, [_float("x")], _float("y"), initializers=[weight, scale])


def test_every_version_a_gpu_target_names_has_a_matrix():
    versions = {v for t in TARGETS.values() if t["backend"] == "tensorrt" for v in t["tensorrt_versions"]}
    assert versions <= set(TABLE_FOR_VERSION)


@pytest.mark.parametrize("version", ["10.3", "10.16"])
def test_a_converted_graph_of_supported_operators_passes(version):
    result = check_graph(_supported(), version)
    assert result["unsupported"] == [] and result["opset"] == 17 and result["ops"] == 4
    assert {"FLOAT", "FLOAT16", "INT8"} <= set(result["dtypes"])


def test_operators_the_matrix_marks_unsupported_or_does_not_list_are_named():
    nodes = [helper.make_node("Det", ["x"], ["d"]), helper.make_node("Made Up", ["d"], ["y"])]
    square = _float("x", (3, 3))
    result = check_graph(_model(nodes, [square], _float("y", ())), "10.3")
    assert result["unsupported"] == ["Det (marked unsupported)", "Made Up (not in the matrix)"]


def test_a_custom_domain_is_named_with_its_domain():
    node = helper.make_node("MatMulNBits", ["x", "w"], ["y"], domain="com.microsoft", K=4, N=4, bits=4, block_size=16)
    model = _model([node], [_float("x"), _float("w")], _float("y"), domains=["com.microsoft"])
    assert check_graph(model, "10.16")["unsupported"] == [
        "com.microsoft:MatMulNBits (no TensorRT importer for domain com.microsoft; it would need a plugin)"]


def test_an_operator_on_a_data_type_its_row_does_not_list_is_refused_and_versions_differ():
    """Pow lists no integer types in the 10.3 matrix; 10.15's adds INT32/INT64. Operators inside If bodies count."""
    ints = helper.make_tensor_value_info("x", TensorProto.INT64, [4])
    power = helper.make_node("Pow", ["x", "x"], ["y"])
    assert check_graph(_model([power], [ints], helper.make_tensor_value_info("y", TensorProto.INT64, [4])),
                       "10.3")["unsupported"] == ["Pow on INT64 (listed for BFLOAT16, FLOAT, FLOAT16)"]  # fmt: skip
    branch = helper.make_graph([power], "b", [], [helper.make_tensor_value_info("y", TensorProto.INT64, [4])])
    cond = helper.make_tensor_value_info("c", TensorProto.BOOL, [])
    node = helper.make_node("If", ["c"], ["z"], then_branch=branch, else_branch=branch)
    model = _model([node], [cond, ints], helper.make_tensor_value_info("z", TensorProto.INT64, [4]))
    assert check_graph(model, "10.3")["unsupported"] == ["Pow on INT64 (listed for BFLOAT16, FLOAT, FLOAT16)"]
    assert check_graph(model, "10.16")["unsupported"] == []


def test_data_types_the_importer_handles_beyond_the_matrix_pass():
    """CumSum/Clip on INT64 (position ids): the matrix lists float types only, onnx-tensorrt's importer takes them."""
    ints = helper.make_tensor_value_info("x", TensorProto.INT64, [4])
    axis = numpy_helper.from_array(np.array(0, np.int64), "axis")
    nodes = [helper.make_node("CumSum", ["x", "axis"], ["c"]), helper.make_node("Clip", ["c", "", "x"], ["y"])]
    model = _model(nodes, [ints], helper.make_tensor_value_info("y", TensorProto.INT64, [4]), initializers=[axis])
    assert check_graph(model, "10.3")["unsupported"] == check_graph(model, "10.16")["unsupported"] == []


def test_a_data_type_tensorrt_has_not_is_refused_and_a_newer_opset_is_only_recorded():
    strings = helper.make_tensor_value_info("x", TensorProto.STRING, [2])
    model = _model([helper.make_node("Identity", ["x"], ["y"])], [strings],
                   helper.make_tensor_value_info("y", TensorProto.STRING, [2]), opset=21)  # fmt: skip
    result = check_graph(model, "10.3")
    assert result["opset"] == 21
    assert result["unsupported"] == ["Identity on STRING (listed for BFLOAT16, BOOL, FLOAT, FLOAT16, INT32, INT64)",
                                     "data type STRING"]  # fmt: skip


def test_check_bundle_refuses_naming_graph_operator_and_version_unless_allowed(tmp_path):
    (tmp_path / "graphs").mkdir()
    onnx.save(_supported(), str(tmp_path / "graphs" / "a.onnx"))
    det = _model([helper.make_node("Det", ["x"], ["y"])], [_float("x", (3, 3))], _float("y", ()))
    onnx.save(det, str(tmp_path / "graphs" / "b.onnx"))
    manifest = {"graphs": {"a": {"file": "graphs/a.onnx", "precision": "int8"},
                           "b": {"file": "graphs/b.onnx", "precision": "fp16"}}}  # fmt: skip
    refused = r"graph b \(fp16\) on TensorRT 10.3: Det \(marked unsupported\) \| graph b \(fp16\) on TensorRT 10.16"
    with pytest.raises(ExportError, match=refused + r": Det .*--allow-unsupported-ops"):
        check_bundle(tmp_path, manifest, ["10.3", "10.16"], allow=False, report=print)
    warnings = []
    section = check_bundle(tmp_path, manifest, ["10.3", "10.16"], allow=True, report=warnings.append)
    assert section["versions"] == {"10.3": "10.3", "10.16": "10.15"} and len(warnings) == 1
    assert section["graphs"]["a"]["unsupported"] == {"10.3": [], "10.16": []}
    assert section["graphs"]["b"]["unsupported"]["10.16"] == ["Det (marked unsupported)"]
    json.dumps(section)  # goes into manifest.json as is


def test_inspect_shows_what_each_version_does_not_support():
    from cseg.bundle.report import _support

    section = {"source": "onnx/onnx-tensorrt docs/operators.md", "versions": {"10.3": "10.3", "10.16": "10.15"},
               "graphs": {"a": {"opset": 21, "ops": 3, "dtypes": ["FLOAT16", "INT4"],
                                "unsupported": {"10.3": ["Det (marked unsupported)"], "10.16": []}}}}  # fmt: skip
    lines = _support(section)
    assert "for TensorRT 10.3, 10.16 (10.15 matrix) (static, not a TensorRT parse)" in lines[0]
    assert lines[1].endswith("FLOAT16, INT4: UNSUPPORTED on 10.3: Det (marked unsupported)")


def test_the_manifest_schema_takes_the_section_and_checks_its_types():
    import jsonschema

    from cseg.bundle.schema import MANIFEST_SCHEMA

    schema = MANIFEST_SCHEMA["properties"]["tensorrt_support"]
    section = {"source": "s", "versions": {"10.3": "10.3"},
               "graphs": {"a": {"opset": 21, "ops": 3, "dtypes": ["INT4"], "unsupported": {"10.3": []}}}}  # fmt: skip
    jsonschema.validate(section, schema)
    for broken in ({"ops": -1}, {"unsupported": {"10.3": "Det"}}, {"opset": "21"}):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate({**section, "graphs": {"a": {**section["graphs"]["a"], **broken}}}, schema)
    assert MANIFEST_SCHEMA["dependentRequired"]["tensorrt_support"] == ["target_profile"]

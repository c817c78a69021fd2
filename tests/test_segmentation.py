"""The Segmentation result type: validation and serialisation."""

import numpy as np
import pytest
from pycocotools import mask as coco_mask

from cseg import Instances, Segmentation


def _result(**overrides):
    mask = np.zeros((6, 5), bool)
    mask[1:4, 2:4] = True
    fields = dict(
        mask=mask,
        instances=Instances(mask[None].copy(), np.array([[2, 1, 4, 4]], np.float32), np.array([0.9], np.float32)),
        presence=0.7,
        route="full",
    )
    return Segmentation(**{**fields, **overrides})


def test_valid_result_and_rle_round_trip():
    result = _result()
    rle = result.to_rle()
    assert rle["mask"]["size"] == [6, 5]
    decoded = coco_mask.decode({"size": rle["mask"]["size"], "counts": rle["mask"]["counts"].encode()})
    assert np.array_equal(decoded.astype(bool), result.mask)
    assert len(rle["instances"]) == 1 and result.area == 6


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"mask": np.zeros((6, 5), np.uint8)}, "mask must be a bool array"),
        ({"mask": np.zeros((6, 4), bool)}, "input image size"),
        ({"presence": 1.5}, "probability"),
        ({"route": "fast"}, "route must be"),
        ({"route_by": "magic"}, "route_by must be"),
        ({"bbox": (1, 2, 3)}, "bbox"),
        ({"instances": "none"}, "Instances"),
    ],
)
def test_invalid_results_are_refused(overrides, message):
    with pytest.raises(ValueError, match=message):
        _result(**overrides)


def test_instances_validate_their_shapes():
    with pytest.raises(ValueError, match=r"\(1, 4\)"):
        Instances(np.zeros((1, 3, 3), bool), np.zeros((2, 4), np.float32), np.zeros((1,), np.float32))
    assert len(Instances.empty(3, 4)) == 0


def test_to_supervision_names_the_missing_package_or_converts():
    result = _result()
    try:
        import supervision  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="pip install supervision"):
            result.to_supervision()
    else:
        detections = result.to_supervision()
        assert len(detections) == 1 and detections.mask.shape == (1, 6, 5)


def test_json_form_is_serialisable_and_rounded():
    import json

    result = _result(timings={"sam3_vision": 12.3456}, token_ids=(5, 6))
    data = json.loads(json.dumps(result.to_json()))
    assert data["route"] == "full" and data["area"] == 6 and data["mask_shape"] == [6, 5]
    assert data["instances"] == [{"box": [2.0, 1.0, 4.0, 4.0], "score": 0.9}]
    assert data["timings_ms"] == {"sam3_vision": 12.35} and data["token_ids"] == [5, 6]

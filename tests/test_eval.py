"""`cseg eval`: each dataset layout read and evaluated end to end through a tiny bundle; failures and resume."""

import json

import numpy as np
import pytest
from PIL import Image

from cseg.errors import InvalidInputError
from cseg.eval import datasets, evaluate


def _photo(name: str, size=(80, 60)) -> Image.Image:
    from skimage import data

    return Image.fromarray(getattr(data, name)()).convert("RGB").resize(size)


def _mask(image: Image.Image) -> Image.Image:
    gray = np.asarray(image.convert("L"))
    return Image.fromarray(((gray > gray.mean()) * 255).astype(np.uint8))


@pytest.fixture
def folder_dataset(tmp_path):
    root = tmp_path / "folder"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for name in ("astronaut", "coffee", "chelsea"):
        image = _photo(name)
        image.save(root / "images" / f"{name}.jpg")
        _mask(image).save(root / "masks" / f"{name}.png")
    (root / "prompts.json").write_text(json.dumps({"coffee": "cup"}))
    return root


def _run(runtime, samples, tmp_path, **kwargs):
    records = evaluate.evaluate(runtime, samples, tmp_path / "work", tmp_path / "masks", route="shortcut",
                                progress=False, **kwargs)  # fmt: skip
    return records, evaluate.summarize(records)


def test_folder_layout_end_to_end(runtime, folder_dataset, tmp_path):
    samples = datasets.read("folder", folder_dataset, prompt="object")
    assert [s.prompt for s in samples] == ["object", "object", "cup"]  # name order; prompts.json wins
    records, summary = _run(runtime, samples, tmp_path)
    assert summary["overall"]["count"] == 3 and not summary["errors"]
    for key in ("gIoU", "cIoU", "mIoU", "wFm", "Sm", "Em", "MAE", "Dice", "BER"):
        assert 0.0 <= summary["overall"][key] <= 1.0 + 1e-6
    saved = np.asarray(Image.open(tmp_path / "masks" / "coffee.png")) > 127
    with Image.open(folder_dataset / "masks" / "coffee.png") as gt:
        recomputed = evaluate.metrics.score_sample(saved, np.asarray(gt) > 127)  # from the saved files alone
    assert recomputed["mIoU"] == pytest.approx(records["coffee"]["mIoU"])
    evaluate.write_csv(records, tmp_path / "rows.csv")
    assert len((tmp_path / "rows.csv").read_text().splitlines()) == 4
    shown = evaluate.worst_cases(records, samples, tmp_path / "worst", 2)
    assert len(shown) == 2 and all(p.is_file() for p in shown)


def test_broken_samples_are_named_and_the_rest_is_evaluated(runtime, folder_dataset, tmp_path):
    (folder_dataset / "masks" / "astronaut.png").unlink()
    Image.new("L", (10, 10)).save(folder_dataset / "masks" / "chelsea.png")
    records, summary = _run(runtime, datasets.read("folder", folder_dataset, prompt="object"), tmp_path)
    assert summary["overall"]["count"] == 1
    assert "astronaut" in summary["errors"]["astronaut"] and "does not exist" in summary["errors"]["astronaut"]
    assert "10x10" in summary["errors"]["chelsea"]
    (folder_dataset / "prompts.json").write_text("{broken")
    with pytest.raises(InvalidInputError, match="prompts.json is not valid JSON"):
        datasets.read("folder", folder_dataset)


def test_interrupted_evaluations_resume(runtime, folder_dataset, tmp_path, monkeypatch):
    samples = datasets.read("folder", folder_dataset, prompt="object")
    _run(runtime, samples[:2], tmp_path)
    calls = []
    original = runtime.segment
    monkeypatch.setattr(runtime, "segment", lambda *a, **k: calls.append(a[1]) or original(*a, **k))
    records, summary = _run(runtime, samples, tmp_path)
    assert calls == ["cup"] and summary["overall"]["count"] == 3


def test_conceptseg_layout(runtime, tmp_path):
    root = tmp_path / "bench"
    for folder in ("DUTS", "rare", "MIG"):
        (root / folder).mkdir(parents=True)
    items = {}
    for i, name in enumerate(("astronaut", "coffee", "chelsea", "rocket")):
        image = _photo(name, (64, 64))
        image.save(root / "DUTS" / f"{name}.jpg")
        _mask(image).save(root / "DUTS" / f"{name}.png")
        items[name] = {"img_path": [f"DUTS/{name}.jpg"], "mask_path": f"DUTS/{name}.png", "dataset_name": "DUTS",
                       "cls_name": "DUTS_salient", "task_name": "sod"}  # fmt: skip
    mig = {"img_path": ["DUTS/rocket.jpg", "DUTS/coffee.jpg"], "mask_path": "DUTS/coffee.png",
           "dataset_name": "MIG_common_object", "cls_name": "MIG_cup", "task_name": "mig",
           "problem": "the object shared by both images", "ref_box": [[0.1, 0.1, 0.6, 0.7]]}  # fmt: skip
    rare = {**items["chelsea"], "dataset_name": "rare", "cls_name": "rare_cat"}
    meta = {"train": {"DUTS_salient": [items["astronaut"], items["rocket"]]},
            "test": {"DUTS_salient": [items["coffee"]], "MIG_cup": [mig], "rare_cat": [rare]}}  # fmt: skip
    (root / "all_meta.json").write_text(json.dumps(meta))
    samples = datasets.read("conceptseg", root)
    by_dataset = {s.dataset: s for s in samples}
    assert by_dataset["DUTS"].prompt == "salient object segmentation" and by_dataset["DUTS"].tier == "CD"
    assert len(by_dataset["DUTS"].demos) == 1 and len(by_dataset["DUTS"].demos[0][1]) == 1  # box from the train mask
    assert by_dataset["rare"].prompt == "cat" and by_dataset["rare"].tier == "CI"
    mig_sample = by_dataset["MIG_common_object"]
    assert mig_sample.tier == "CR" and mig_sample.demos[0][1] == [[6.4, 6.4, 38.4, 44.8]]
    _, summary = _run(runtime, samples, tmp_path)
    assert summary["overall"]["count"] == 3 and set(summary["tiers"]) == {"CD", "CI", "CR"}
    (root / "all_meta.json").write_text(json.dumps({"train": {}}))
    with pytest.raises(InvalidInputError, match="no split 'test'"):
        datasets.read("conceptseg", root)


def test_reasonseg_layout_with_ignored_regions(runtime, tmp_path):
    root = tmp_path / "reasonseg"
    root.mkdir()
    _photo("astronaut", (60, 50)).save(root / "a.jpg")
    shapes = [{"label": "target", "points": [[5, 5], [40, 5], [40, 30], [5, 30]]},
              {"label": "ignore", "points": [[45, 35], [58, 35], [58, 48]]}]  # fmt: skip
    (root / "a.json").write_text(json.dumps({"text": ["what protects the head?", "the helmet"], "shapes": shapes}))
    samples = datasets.read("reasonseg", root)
    assert [s.id for s in samples] == ["a#0", "a#1"]
    gt, ignored = samples[0].load_mask()
    assert gt.shape == (50, 60) and gt[10, 10] and not gt[40, 50] and ignored[44, 56]
    _, summary = _run(runtime, samples, tmp_path)
    assert summary["overall"]["count"] == 2 and summary["datasets"]["reasonseg"]["count"] == 2


def test_cityscapes_layout(runtime, tmp_path):
    root = tmp_path / "cityscapes"
    (root / "leftImg8bit/val/ulm").mkdir(parents=True)
    (root / "gtFine/val/ulm").mkdir(parents=True)
    _photo("rocket", (48, 32)).save(root / "leftImg8bit/val/ulm/ulm_000000_leftImg8bit.png")
    labels = np.zeros((32, 48), np.uint8)
    labels[:16] = 23  # sky
    labels[16:, :24] = 7  # road
    Image.fromarray(labels).save(root / "gtFine/val/ulm/ulm_000000_gtFine_labelIds.png")
    samples = datasets.read("cityscapes", root)
    assert len(samples) == 19 and samples[0].prompt == "road"
    gt, ignored = samples[0].load_mask()
    assert gt[20, 5] and ignored[20, 40]  # labelId 0 is void
    _, summary = _run(runtime, samples, tmp_path)
    assert summary["overall"]["count"] == 19 and len(summary["datasets"]) == 19
    assert 0 <= summary["overall"]["class_mIoU"] <= 1


def test_cli_eval_writes_json_csv_masks(tiny_bundle, folder_dataset, tmp_path, capsys):
    from cseg.cli import main

    out = tmp_path / "metrics.json"
    assert main(["eval", "--bundle", str(tiny_bundle), "--data", str(folder_dataset), "--format", "folder",
                 "--prompt", "object", "--route", "shortcut", "--work", str(tmp_path / "w"), "--json", str(out),
                 "--csv", str(tmp_path / "m.csv"), "--save-masks", str(tmp_path / "pred")]) == 0  # fmt: skip
    summary = json.loads(out.read_text())
    assert {"gIoU", "cIoU", "mIoU", "wFm", "Sm", "Em", "MAE", "Dice", "BER"} <= set(summary["overall"])
    assert sorted(p.name for p in (tmp_path / "pred").iterdir()) == ["astronaut.png", "chelsea.png", "coffee.png"]
    assert "overall" in capsys.readouterr().out
    assert main(["eval", "--bundle", str(tiny_bundle), "--data", str(tmp_path / "nothing"), "--format", "folder"]) == 2


def test_a_work_folder_is_not_reused_for_another_bundle(tiny_bundle, tiny_alt_bundle, folder_dataset, tmp_path, capsys):
    """The report: bundle A then bundle B from the same folder reported A's numbers as B's, then --worst crashed."""
    from cseg.cli import main

    def run(bundle, masks, *extra):
        return main(["eval", "--bundle", str(bundle), "--data", str(folder_dataset), "--format", "folder", "--prompt",
                     "x", "--route", "shortcut", "--save-masks", str(tmp_path / masks), "--work",
                     str(tmp_path / "cseg-eval-work"), "--json", str(tmp_path / f"{masks}.json"), *extra])  # fmt: skip

    assert run(tiny_bundle, "p1") == 0
    capsys.readouterr()
    assert run(tiny_alt_bundle, "p2") == 2
    error = capsys.readouterr().err
    assert "holds the results of another evaluation" in error and "bundle_manifest_sha256" in error and "masks" in error
    assert run(tiny_alt_bundle, "p2", "--fresh") == 0
    first, second = (json.loads((tmp_path / f"{name}.json").read_text())["overall"] for name in ("p1", "p2"))
    assert first["mIoU"] != second["mIoU"]  # B's own numbers (the two seeds segment differently)
    assert sorted(p.name for p in (tmp_path / "p2").iterdir()) == ["astronaut.png", "chelsea.png", "coffee.png"]
    log = [json.loads(line) for line in (tmp_path / "cseg-eval-work" / "samples.jsonl").read_text().splitlines()]
    assert {line["mask"] for line in log} == {str((tmp_path / "p2" / f"{n}.png").resolve())
                                              for n in ("astronaut", "chelsea", "coffee")}  # fmt: skip
    assert run(tiny_alt_bundle, "p2") == 0  # the same evaluation resumes


def test_a_changed_sample_or_option_is_refused_on_resume(runtime, folder_dataset, tmp_path):
    samples = datasets.read("folder", folder_dataset, prompt="object")
    _run(runtime, samples, tmp_path)
    with pytest.raises(evaluate.StaleWorkError, match="metrics: 'toolkit' there, 'research' now"):
        _run(runtime, samples, tmp_path, metric_mode="research")
    with pytest.raises(evaluate.StaleWorkError, match="sample astronaut .* other inputs"):
        _run(runtime, datasets.read("folder", folder_dataset, prompt="thing"), tmp_path)
    run_file = tmp_path / "work" / evaluate.RUN_FILE
    older = {k: v for k, v in json.loads(run_file.read_text()).items() if k != "protocol_version"}
    run_file.write_text(json.dumps(older))  # a folder from before the protocol version was recorded
    with pytest.raises(evaluate.StaleWorkError, match=f"protocol_version: None there, {evaluate.PROTOCOL_VERSION} now"):
        _run(runtime, samples, tmp_path)
    run_file.unlink()  # a folder from before run.json
    with pytest.raises(evaluate.StaleWorkError, match="does not record what it was computed from"):
        _run(runtime, samples, tmp_path)

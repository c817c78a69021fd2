"""`cseg eval --protocol research`: the benchmark episodes of the research code (mydataset.py), built from a
synthetic ConceptSeg-Benchmark layout (no model needed)."""

import json
import random

import numpy as np
import pytest
from PIL import Image

from cseg import images, prompting
from cseg.eval import datasets
from cseg.prompting import Layout

RED = (255, 0, 0)


@pytest.fixture
def bench(tmp_path):
    """rare_cat: 5 train items (4 references drawn), DUTS_salient: 2 (1 reference), two MIG items."""
    root = tmp_path / "bench"
    (root / "img").mkdir(parents=True)
    mask = np.zeros((300, 300), np.uint8)
    mask[50:100, 20:80] = 255  # box [20, 50, 79, 99], edges inclusive
    for i in range(8):
        Image.new("RGB", (300, 300), (10 * i, 100, 0)).save(root / "img" / f"{i}.png")
        Image.fromarray(mask).save(root / "img" / f"{i}_m.png")

    def item(i, dataset, cls, **extra):
        return {"img_path": [f"img/{i}.png"], "mask_path": f"img/{i}_m.png", "dataset_name": dataset,
                "cls_name": cls, "task_name": "t", **extra}  # fmt: skip

    mig = item(7, "MIG_common", "MIG_x", problem="the shared object", ref_box=[[0.1, 0.2, 0.5, 0.6], [0.5, 0.5, 1, 1]])
    mig["img_path"] = ["img/5.png", "img/6.png", "img/7.png"]
    mig2 = {**item(7, "MIG_common", "MIG_y", problem="the same one"), "img_path": ["img/6.png", "img/7.png"]}
    meta = {"train": {"rare_cat": [item(i, "rare", "rare_cat") for i in range(5)],
                      "DUTS_salient": [item(i, "DUTS", "DUTS_salient") for i in (5, 6)]},
            "test": {"rare_cat": [item(0, "rare", "rare_cat")], "DUTS_salient": [item(7, "DUTS", "DUTS_salient")],
                     "MIG_x": [mig], "MIG_y": [mig2]}}  # fmt: skip
    (root / "all_meta.json").write_text(json.dumps(meta))
    return root


def test_table1_columns_are_the_project_pages():
    """The six columns of Table 1 on ntu-ai4x.github.io/ConceptSeg-R1; datasets without a column there get none."""
    columns = {"COD10K1024": "CD: Camouflage", "DUTS": "CD: Saliency", "coco2014_Living": "CI: Diverse Classes",
               "isic2018": "CD: Med. Lesion", "Polyp": "CD: Med. Lesion", "MIG_common_object": "CR: Consistency",
               "MIG_static_diff": "CR: Difference", "MIG_refer_grounding": "", "transparent1024": "",
               "ESDIDefects": "", "unknown": ""}  # fmt: skip
    assert {name: datasets.group_of(name) for name in columns} == columns
    assert {g for g in datasets.GROUPS} | set(datasets.CR_GROUPS) == {
        "CI: Diverse Classes", "CD: Camouflage", "CD: Saliency", "CD: Med. Lesion", "CR: Consistency", "CR: Difference"}


def test_research_episodes_draw_four_references_with_replacement(bench):
    samples = {s.dataset + s.id: s for s in datasets.read("conceptseg", bench, protocol="research")}
    rare = samples["rarerare/rare_cat/0"]
    assert rare.prompt == " cat" and rare.protocol == "research" and rare.eval_size == (600, 600)
    assert rare.group == "CI: Diverse Classes" and rare.tier == "CI"
    draws, expected = random.Random(42), []  # seed 42, choice with replacement, redrawn while it is the target
    for _ in range(4):
        index = draws.randrange(5)
        while index == 0:
            index = draws.randrange(5)
        expected.append(str(bench / "img" / f"{index}.png"))
    assert list(rare.demos.references) == expected
    duts = samples["DUTSDUTS/DUTS_salient/0"]
    assert len(duts.demos.references) == 1 and duts.prompt == "salient object segmentation"


def test_research_mosaic_geometry_and_withheld_box(bench):
    rare = next(s for s in datasets.read("conceptseg", bench, protocol="research") if s.dataset == "rare")
    episode = rare.demos.build()
    canvas = np.asarray(episode.image)
    assert episode.image.size == (600, 600)
    # the 4 tiles, row-major; each reference's box [20, 50, 79, 99] offset into its tile; the top-left one withheld
    assert episode.layout == prompting.Layout("cot", 4, listed=[[320, 50, 379, 99], [20, 350, 79, 399],
                                                                [320, 350, 379, 399]])  # fmt: skip
    colours = [int(path.split("/")[-1][0]) * 10 for path in rare.demos.references]
    for i, (x, y) in enumerate([(0, 0), (300, 0), (0, 300), (300, 300)]):
        assert tuple(canvas[y + 5, x + 5]) == (colours[i], 100, 0)
    assert tuple(canvas[50, 350]) == RED and tuple(canvas[370, 20]) == RED and tuple(canvas[399, 350]) == RED
    assert not (canvas[:300, :300] == RED).all(axis=-1).any()  # the withheld box is not drawn
    assert "Bounding boxes at [[320, 50, 379, 99], [20, 350, 79, 399], [320, 350, 379, 399]]." in prompting.problem_text(
        rare.prompt, episode.layout)  # fmt: skip


def test_research_one_reference_and_mig_episodes(bench):
    samples = {s.id: s for s in datasets.read("conceptseg", bench, protocol="research")}
    one = samples["DUTS/DUTS_salient/0"].demos.build()
    assert one.layout == prompting.Layout("cot", 1) and one.image.size == (600, 600)  # no boxes, no check
    assert not (np.asarray(one.image) == RED).all(axis=-1).any()
    mig = samples["MIG_common/MIG_x/0"]
    assert mig.prompt == "the shared object" and mig.tier == "CR"
    episode = mig.demos.build()
    # ref_box fractions times the tile side, without the tile offset; the first withheld
    assert episode.layout.listed == [[150.0, 150.0, 300.0, 300.0]]
    assert samples["MIG_common/MIG_y/0"].demos.build().layout == prompting.Layout("cot", 1)


def test_research_protocol_refuses_a_class_without_other_train_items(bench):
    meta = json.loads((bench / "all_meta.json").read_text())
    meta["train"]["rare_cat"] = meta["train"]["rare_cat"][:1]  # only the target itself
    (bench / "all_meta.json").write_text(json.dumps(meta))
    rare = next(s for s in datasets.read("conceptseg", bench, protocol="research") if s.dataset == "rare")
    with pytest.raises(datasets.InvalidInputError, match="no other item of class 'rare_cat'"):
        rare.load_mask()


def test_reasonseg_polygons_follow_lisa(tmp_path):
    """Larger polygons first, "ignore" labels ignored, "flag" skipped, any other label the target; one question
    per image in the research protocol, asked with the reasonseg_cot template."""
    Image.new("RGB", (40, 30)).save(tmp_path / "a.jpg")
    rect = lambda x1, y1, x2, y2: [[x1, y1], [x2, y1], [x2, y2], [x1, y2]]  # noqa: E731
    shapes = [
        {"label": "flag", "points": rect(0, 0, 39, 29)},  # deprecated annotation: skipped
        {"label": "target", "points": rect(0, 0, 30, 20)},  # the largest: drawn first
        {"label": "Ignore_blur", "points": rect(5.9, 5.9, 10, 10)},  # inside it, smaller: on top, ignored
        {"label": "sofa", "points": rect(20, 15, 35, 25)},  # any other label is the target
        {"label": "ignore", "points": rect(0, 22, 39, 29)},  # larger than the next one
        {"label": "target", "points": rect(2, 24, 6, 27)},  # drawn over the ignored band
    ]
    (tmp_path / "a.json").write_text(json.dumps({"text": ["what can one sit on?", "the sofa"], "shapes": shapes}))
    default = datasets.read("reasonseg", tmp_path)
    assert [s.id for s in default] == ["a#0", "a#1"]
    gt, ignored = default[0].load_mask()
    assert gt[0, 0] and gt[20, 30] and not gt[21, 0]  # target rectangle, outline included
    assert ignored[5, 5] and ignored[10, 10] and not gt[7, 7] and not ignored[4, 4]  # 5.9 truncates to 5
    assert gt[25, 35] and gt[15, 20] and not ignored[24, 30]  # the sofa lies over the ignored band (smaller)
    assert ignored[28, 38] and gt[26, 4] and not ignored[26, 4]  # the small target over the band
    research = datasets.read("reasonseg", tmp_path, protocol="research")
    assert [s.id for s in research] == ["a#0"] and research[0].prompt == "what can one sit on?"
    assert research[0].demos.layout == prompting.Layout("reasonseg_cot") and research[0].demos.image is None


def _spy(runtime, monkeypatch):
    """The runtime.segment calls: (image size, prompt, demos type, route, mask_size, presence, all options)."""
    calls = []
    original = runtime.segment

    def segment(image, prompt, demos=None, **options):
        result = original(image, prompt, demos, **options)
        size = image.size if isinstance(image, Image.Image) else Image.open(image).size
        calls.append((size, prompt, type(demos).__name__, options["route"], options["mask_size"], result.presence,
                      options))  # fmt: skip
        return result

    monkeypatch.setattr(runtime, "segment", segment)
    return calls


def test_research_protocol_end_to_end(runtime, bench, tmp_path, monkeypatch):
    from cseg.eval import evaluate

    samples = [s for s in datasets.read("conceptseg", bench, protocol="research") if s.dataset == "rare"]
    calls = _spy(runtime, monkeypatch)
    records = evaluate.evaluate(runtime, samples, tmp_path / "w", tmp_path / "m", max_new_tokens=4,
                                metric_mode="research", progress=False)  # fmt: skip
    record = records["rare/rare_cat/0"]
    assert "error" not in record, record
    # SAM 3 alone on the 600x600 target with the stripped phrase, the mask made at the evaluation size
    assert calls[0][:5] == ((600, 600), "cat", "NoneType", "shortcut", (600, 600))
    assert all("mask_interpolation" not in c[6] and "max_length" not in c[6] for c in calls)  # bilinear, 2816 tokens
    if calls[0][5] < 0.1:  # below the 1-word limit: the episode is reasoned over, SAM 3 on the original image
        assert calls[1][:5] == ((300, 300), " cat", "Episode", "full", (600, 600)) and record["route"] == "full"
    else:
        assert len(calls) == 1 and record["route"] == "shortcut"
    with Image.open(record["mask"]) as saved:
        assert saved.size == (600, 600)


def test_research_reasonseg_end_to_end(runtime, tmp_path, monkeypatch):
    from cseg.eval import evaluate

    Image.new("RGB", (40, 30), (90, 60, 30)).save(tmp_path / "a.jpg")
    shapes = [{"label": "target", "points": [[2, 2], [30, 2], [30, 20], [2, 20]]}]
    (tmp_path / "a.json").write_text(json.dumps({"text": ["what is brown?"], "shapes": shapes}))
    calls = _spy(runtime, monkeypatch)
    records = evaluate.evaluate(runtime, datasets.read("reasonseg", tmp_path, protocol="research"), tmp_path / "w",
                                tmp_path / "m", max_new_tokens=4, metric_mode="research", progress=False)  # fmt: skip
    assert "error" not in records["a#0"], records["a#0"]
    assert calls[0][:5] == ((1008, 1008), "what is brown?", "NoneType", "shortcut", (30, 40))
    assert calls[0][6]["mask_interpolation"] == "bicubic"
    if calls[0][5] > 0.4:  # 3 words: the limit is 0.4, strictly exceeded
        assert len(calls) == 1
    else:
        assert calls[1][:5] == ((1008, 1008), "what is brown?", "Episode", "full", (30, 40))
        assert calls[1][6]["mask_interpolation"] == "bicubic" and calls[1][6]["max_length"] == 2048


@pytest.mark.parametrize("route", ["auto", "full"])
def test_research_reasonseg_gives_each_consumer_its_own_resize_of_the_original(runtime, tmp_path, monkeypatch, route):
    """evaluate_reasonseg.py: the VLM sees image.resize((600, 600)) and SAM 3 image.resize((1008, 1008)) of the
    original (PIL bicubic both), generate(max_length=2048), and the semantic logits are upsampled to the ground
    truth's size with cv2's INTER_CUBIC before the threshold; a --route given by the user keeps these inputs."""
    from oracles import resize_bicubic

    from cseg.eval import evaluate
    from cseg.images import vlm_image

    x, y = np.meshgrid(np.linspace(0, 255, 40), np.linspace(0, 255, 30))
    original = Image.fromarray(np.stack([x, y, (x * y) % 256], -1).astype(np.uint8))
    original.save(tmp_path / "a.png")
    (tmp_path / "a.json").write_text(json.dumps({"text": ["what is there?"], "shapes": []}))
    monkeypatch.setattr(prompting, "shortcut_limit", lambda question: 1.0)  # presence never exceeds it: reasoned
    seen = {"sam3": [], "vlm": [], "max_length": [], "logits": []}
    encode, vision, prefill, decode = runtime.sam3.encode, runtime._vision, runtime.decoder.prefill, runtime.sam3.decode

    def spy(key, call, record):
        def wrapper(*args):
            out = call(*args)
            seen[key].append(record(args, out))
            return out

        return wrapper

    monkeypatch.setattr(runtime.sam3, "encode", spy("sam3", encode, lambda a, _: a[0].pixels.copy()))
    monkeypatch.setattr(runtime, "_vision", spy("vlm", vision, lambda a, _: np.asarray(a[0])))
    monkeypatch.setattr(runtime.decoder, "prefill", spy("max_length", prefill, lambda a, _: a[4]))
    monkeypatch.setattr(runtime.sam3, "decode", spy("logits", decode, lambda _, raw: raw.semantic_logits))
    records = evaluate.evaluate(runtime, datasets.read("reasonseg", tmp_path, protocol="research"), tmp_path / "w",
                                tmp_path / "m", route=route, max_new_tokens=4, metric_mode="research",
                                progress=False)  # fmt: skip
    assert records["a#0"]["route"] == "full", records["a#0"]
    square = original.resize((1008, 1008), Image.Resampling.BICUBIC)
    assert len(seen["sam3"]) == {"auto": 2, "full": 1}[route]  # the shortcut first, with route "auto"
    assert all(np.array_equal(frame, np.asarray(square)) for frame in seen["sam3"])
    # one image for the VLM (ReasonSeg has no reference): the original's 600 square, not a resize of SAM 3's square
    assert len(seen["vlm"]) == 1 and np.array_equal(seen["vlm"][0], np.asarray(vlm_image(original)))
    assert not np.array_equal(seen["vlm"][0], np.asarray(vlm_image(square)))
    assert seen["max_length"] == [2048]
    with Image.open(records["a#0"]["mask"]) as saved:
        assert np.array_equal(np.asarray(saved) > 127, resize_bicubic(seen["logits"][-1][0], 30, 40)[0] > 0)


def test_masks_at_a_requested_size(runtime):
    image = np.zeros((48, 64, 3), np.uint8)
    assert runtime.segment(image, "x", route="shortcut", mask_size=(37, 53)).mask.shape == (37, 53)
    with pytest.raises(datasets.InvalidInputError, match="mask_size"):
        runtime.segment(image, "x", route="shortcut", mask_size=(0, 5))


def test_bicubic_masks_on_request(runtime, photo, monkeypatch):
    from oracles import resize_bicubic, resize_bilinear

    raws = []
    decode = runtime.sam3.decode
    monkeypatch.setattr(runtime.sam3, "decode", lambda *a: raws.append(decode(*a)) or raws[-1])
    results = {mode: runtime.segment(photo, "x", route="shortcut", mask_size=(301, 402), mask_interpolation=mode)
               for mode in ("bilinear", "bicubic")}  # fmt: skip
    for (mode, result), raw, oracle in zip(results.items(), raws, (resize_bilinear, resize_bicubic)):
        assert np.array_equal(result.mask, oracle(raw.semantic_logits[0], 301, 402)[0] > 0), mode
        keep = np.flatnonzero(raw.scores[0] > runtime.manifest["postprocess"]["instance_score_threshold"])
        assert np.array_equal(result.instances.masks, oracle(raw.masks[0, keep], 301, 402) > 0), mode
    for bad in ("cubic", None, 3):
        with pytest.raises(datasets.InvalidInputError, match="mask_interpolation must be one of"):
            runtime.segment(photo, "x", route="shortcut", mask_interpolation=bad)


def test_max_length_bounds_prompt_and_completion(runtime, photo):
    """generate(max_length=N): prompt + completion at most N tokens, within the bundle's own budget; refused before
    the prefill when the prompt leaves no room."""
    from cseg.images import load_frame

    state = runtime.image_state(load_frame(photo), {})
    prompt = runtime.prefill(state, "the cup", None, None, {}).prefilled.cache.length
    assert runtime.prefill(state, "the cup", None, None, {}, max_length=prompt + 3).prefilled.budget == 3
    assert runtime.prefill(state, "the cup", None, 2, {}, max_length=prompt + 3).prefilled.budget == 2
    bundle = runtime.prefill(state, "the cup", None, None, {}, max_length=10**6).prefilled.budget
    assert bundle == runtime.manifest["generation"]["max_length"] - prompt
    result = runtime.segment(photo, "the cup", route="full", max_length=prompt + 3)
    assert 1 <= len(result.token_ids) <= 3
    with pytest.raises(datasets.InvalidInputError, match=f"leaving no room to generate within {prompt}"):
        runtime.segment(photo, "the cup", route="full", max_length=prompt)
    for bad in (0, 2.5, True):
        with pytest.raises(datasets.InvalidInputError, match="max_length must be a positive integer"):
            runtime.segment(photo, "the cup", route="full", max_length=bad)


def test_an_episode_target_must_be_an_image(runtime, photo):
    episode = images.Episode(None, Layout("reasonseg_cot"), target=42)
    with pytest.raises(datasets.InvalidInputError, match="the episode's target must be a path"):
        runtime.segment(photo, "x", episode, route="full", max_new_tokens=2)

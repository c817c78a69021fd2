"""`cseg eval`: a bundle over a dataset, the paper's metrics per sample, dataset, tier and overall.

Every sample's result is appended to `<work>/samples.jsonl` as soon as it is known, and its predicted mask saved as a
PNG, so an interrupted evaluation resumes where it stopped and anyone can recompute the numbers from the masks.
A sample that fails (missing mask, wrong size, unreadable image) is recorded with its error and the rest goes on.

`<work>/run.json` records what the results are computed from (the bundle's manifest hash, the caller's description of
the dataset and options, the route, the metric mode, where the masks go); a resume with anything else is refused,
naming what differs, and each record keeps the hash of its sample's inputs (image, prompt, demonstrations, evaluation
size) and the path of its mask, so a record is never reused for another sample or read from another folder.
"""

from __future__ import annotations

import csv
import hashlib
import json
import re
from dataclasses import replace
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from tqdm import tqdm

from cseg import prompting
from cseg.errors import CsegError, InvalidInputError
from cseg.eval import metrics
from cseg.eval.datasets import ResearchEpisode, Sample
from cseg.files import parse_json, read_bytes
from cseg.images import load_image, vlm_image

MAX_NAME = 200  # characters of a mask file name before its extension
MAX_LOG_BYTES = 1 << 30  # samples.jsonl: ~300 bytes per sample
RUN_FILE = "run.json"
# Raised whenever how a sample's result is computed or labelled changes, so a work folder of an older cseg is not
# resumed as if current. 2: ReasonSeg's research inputs (bicubic masks, max_length 2048, the VLM on the original's
# 600 square). 3: the Table 1 columns as the project page names them (records carry their column).
PROTOCOL_VERSION = 3
REASONSEG_SAM3_SIDE = 1008  # evaluate_reasonseg.py: sam_image = image.resize((1008, 1008)), PIL's bicubic
REASONSEG_MAX_LENGTH = 2048  # evaluate_reasonseg.py: generate(max_length=2048), prompt + completion tokens


class StaleWorkError(CsegError):
    """A work folder holding results of another bundle, dataset or options than the evaluation asked for."""


def mask_name(sample_id: str) -> str:
    """A file name for a sample's mask, distinct for distinct ids ("a b" and "a__b" used to share one): characters
    other than letters, digits, "." and "-" become "_" + their UTF-8 bytes in hex; long names end in a hash."""
    name = re.sub(r"[^A-Za-z0-9.-]", lambda m: "".join(f"_{b:02x}" for b in m.group().encode("utf-8", "surrogatepass")),
                  sample_id)  # fmt: skip
    if len(name) > MAX_NAME:  # file systems allow 255 bytes; "~" never occurs in an encoded name
        name = name[: MAX_NAME - 17] + "~" + hashlib.sha256(sample_id.encode("utf-8", "surrogatepass")).hexdigest()[:16]
    return name + ".png"


def _read_log(log_path: Path) -> dict[str, dict]:
    """Finished samples from samples.jsonl. A line cut short by an interruption is removed from the file (its sample
    is evaluated again) so the next record does not start on it; a line that is not a record is skipped likewise."""
    if not log_path.is_file():
        return {}
    data = read_bytes(log_path, "evaluation log", MAX_LOG_BYTES)
    complete = data[: data.rfind(b"\n") + 1]
    if len(complete) < len(data):
        with open(log_path, "r+b") as log:
            log.truncate(len(complete))
    done = {}
    for line in complete.decode("utf-8", "replace").splitlines():
        try:
            record = parse_json(line, "a line of samples.jsonl")
        except InvalidInputError:
            continue
        if isinstance(record, dict) and isinstance(record.get("id"), str):
            done[record["id"]] = record
    return done


def _at(mask: np.ndarray, size: tuple[int, int] | None, resample) -> np.ndarray:
    """A bool mask at (height, width) `size` (research: masks as 8-bit images resized with PIL, then > 127)."""
    if size is None or mask.shape == size:
        return mask
    image = Image.fromarray(mask.astype(np.uint8) * 255).resize((size[1], size[0]), resample)
    return np.asarray(image) > 127


def run_identity(runtime, masks_dir: Path, *, route: str, max_new_tokens, metric_mode: str,
                 options: dict | None = None) -> dict:  # fmt: skip
    """What an evaluation's results depend on besides the samples themselves (see `sample_key`)."""
    manifest = json.dumps(runtime.manifest, sort_keys=True, default=str).encode()
    run = {"protocol_version": PROTOCOL_VERSION, "bundle_manifest_sha256": hashlib.sha256(manifest).hexdigest(),
           "route": route, "max_new_tokens": max_new_tokens, "metrics": metric_mode, "masks": str(masks_dir.resolve()),
           **(options or {})}  # fmt: skip
    return json.loads(json.dumps(run))  # as read back from run.json (tuples become lists)


def sample_key(sample: Sample) -> str:
    """A hash of everything one sample's result is computed from (its demonstrations' description included)."""
    inputs = (sample.id, sample.image, sample.prompt, sample.dataset, sample.demos, sample.eval_size, sample.protocol)
    return hashlib.sha256(repr(inputs).encode("utf-8", "surrogatepass")).hexdigest()


def _open_work(work: Path, run: dict, fresh: bool) -> dict[str, dict]:
    """The finished records in `work` when they belong to `run`; StaleWorkError when `work` holds another run's."""
    work.mkdir(parents=True, exist_ok=True)
    log_path, run_path = work / "samples.jsonl", work / RUN_FILE
    if fresh:
        log_path.unlink(missing_ok=True)
        run_path.unlink(missing_ok=True)
    if run_path.is_file():
        recorded = parse_json(read_bytes(run_path, "evaluation record", MAX_LOG_BYTES).decode("utf-8", "replace"),
                              str(run_path))  # fmt: skip
        recorded = recorded if isinstance(recorded, dict) else {}
        differ = [f"{k}: {recorded.get(k)!r} there, {run.get(k)!r} now" for k in sorted(run.keys() | recorded.keys())
                  if recorded.get(k) != run.get(k)]  # fmt: skip
        if differ:
            raise StaleWorkError(f"--work {work} holds the results of another evaluation ({'; '.join(differ)}); pass "
                                 "--fresh to discard them, or another --work")  # fmt: skip
    elif log_path.is_file():
        raise StaleWorkError(f"{log_path} does not record what it was computed from (no {RUN_FILE}: an older cseg "
                             "wrote it); pass --fresh to discard it, or another --work")  # fmt: skip
    else:
        run_path.write_text(json.dumps(run, indent=1))
    return _read_log(log_path)


def evaluate(runtime, samples: list[Sample], work: Path, masks_dir: Path, *, route: str = "auto",
             max_new_tokens: int | None = None, metric_mode: str = "toolkit", options: dict | None = None,
             fresh: bool = False, progress: bool = True) -> dict[str, dict]:  # fmt: skip
    """Per-sample records by id. Samples already finished in `work` by the same run are read back, not recomputed;
    `work` holding another run's results raises StaleWorkError unless `fresh` discards them. `options` describes the
    dataset and whatever else the caller's samples were made with (recorded and compared on resume)."""
    if metric_mode not in metrics.MODES:
        raise InvalidInputError(f"metric mode must be one of {', '.join(metrics.MODES)}, got {metric_mode!r}")
    run = run_identity(runtime, masks_dir, route=route, max_new_tokens=max_new_tokens, metric_mode=metric_mode,
                       options=options)  # fmt: skip
    done = _open_work(work, run, fresh)
    masks_dir.mkdir(parents=True, exist_ok=True)
    for sample in samples:
        if sample.id in done and done[sample.id].get("inputs") != sample_key(sample):
            raise StaleWorkError(f"sample {sample.id} in {work} was evaluated from other inputs (image, prompt, "
                                 "demonstrations or evaluation size); pass --fresh, or another --work")  # fmt: skip
    with open(work / "samples.jsonl", "a") as log:
        for sample in tqdm(samples, desc="eval", unit="sample", disable=not progress):
            if sample.id in done:
                continue
            record = {"id": sample.id, "dataset": sample.dataset, "tier": sample.tier, "group": sample.group,
                      "prompt": sample.prompt, "inputs": sample_key(sample)}  # fmt: skip
            try:
                record.update(_score(runtime, sample, masks_dir, route, max_new_tokens, metric_mode))
            except CsegError as exc:
                record["error"] = str(exc)
            log.write(json.dumps(record) + "\n")
            log.flush()
            done[sample.id] = record
    return {s.id: done[s.id] for s in samples}


def _score(runtime, sample: Sample, masks_dir: Path, route: str, max_new_tokens, metric_mode: str) -> dict:
    gt, ignored = sample.load_mask()
    gt = _at(gt, sample.eval_size, Image.Resampling.BICUBIC)
    if ignored is not None:
        ignored = _at(ignored, sample.eval_size, Image.Resampling.NEAREST)
    # the mask made at the evaluation size: logits upsampled straight to it and thresholded there (research)
    result = _segment(runtime, sample, route, max_new_tokens, gt.shape)
    pred = result.mask
    if pred.shape != gt.shape:
        raise InvalidInputError(f"sample {sample.id}: mask {gt.shape} and prediction {pred.shape} differ")
    if ignored is not None:  # ignored pixels count neither way
        pred, gt = pred & ~ignored, gt & ~ignored
    path = masks_dir / mask_name(sample.id)
    Image.fromarray(pred.astype(np.uint8) * 255).save(path)
    return {**metrics.score_sample(pred, gt, metric_mode), "route": result.route, "answer": result.answer,
            "mask": str(path.resolve())}  # fmt: skip


def _segment(runtime, sample: Sample, route: str, max_new_tokens, size: tuple[int, int]):
    demos = sample.demos.build() if isinstance(sample.demos, ResearchEpisode) else sample.demos or None
    options = {"max_new_tokens": max_new_tokens, "mask_size": size}
    if sample.protocol == "research" and sample.dataset == "reasonseg":
        return _research_reasonseg(runtime, sample, demos, route, options)
    if sample.protocol != "research" or route != "auto":
        return runtime.segment(sample.image, sample.prompt, demos, route=route, **options)
    # evaluate_conceptseg.py pre_process_by_sam3: parentheses removed from the question before counting words and
    # prompting SAM 3 alone on the 600x600 target; SAM 3's mask is kept unless its presence is below the limit (a
    # tie goes to SAM 3); 5 words or more always reason. The reasoning path's SAM 3 sees the original image.
    phrase = re.sub(r"\([^)]*\)", "", sample.prompt).strip()
    if prompting.shortcut_worth_trying(phrase):
        shortcut = runtime.segment(vlm_image(load_image(sample.image)), phrase, route="shortcut", **options)
        if not shortcut.presence < prompting.shortcut_limit(phrase):
            return shortcut
    return runtime.segment(sample.image, sample.prompt, demos, route="full", **options)


def _research_reasonseg(runtime, sample: Sample, episode, route: str, options: dict):
    """evaluate_reasonseg.py: SAM 3 on the bicubic 1008 square, the VLM on the original resized to 600x600 (the
    episode's target), at most 2048 tokens in all; both branches' semantic logits upsampled to the ground truth's
    size with cv2's INTER_CUBIC. With route "auto", SAM 3's own mask replaces the reasoned one when its presence
    exceeds 0.1 * 2**(words - 1) (strict; the question as asked): the script reasons first and discards that result
    then; asking SAM 3 first gives the same masks."""
    original = load_image(sample.image)
    image = original.resize((REASONSEG_SAM3_SIDE,) * 2, Image.Resampling.BICUBIC)
    options = {**options, "mask_interpolation": "bicubic"}
    if route != "full":
        shortcut = runtime.segment(image, sample.prompt, route="shortcut", **options)
        if route == "shortcut" or shortcut.presence > prompting.shortcut_limit(sample.prompt):
            return shortcut
    return runtime.segment(image, sample.prompt, replace(episode, target=original), route="full",
                           max_length=REASONSEG_MAX_LENGTH, **options)  # fmt: skip


def summarize(records: dict[str, dict]) -> dict:
    scored = [r for r in records.values() if "error" not in r]
    summary = {
        "overall": metrics.summarize(scored),
        "datasets": {},
        "tiers": {},
        "groups": {},  # the paper's Table 1 columns
        "errors": {r["id"]: r["error"] for r in records.values() if "error" in r},
    }
    # per dataset, as the research scripts report (one run per dataset), then the tiers and Table 1 groups
    for key, group in (("datasets", "dataset"), ("tiers", "tier"), ("groups", "group")):
        for name in sorted({r.get(group, "") for r in scored} - {""}):
            summary[key][name] = metrics.summarize([r for r in scored if r.get(group) == name])
    classes = [v["cIoU"] for v in summary["datasets"].values()]
    summary["overall"]["class_mIoU"] = float(np.mean(classes)) if classes else float("nan")  # Cityscapes-style
    return summary


def table(summary: dict) -> str:
    header = f"{'':<28}" + "".join(f"{k:>8}" for k in metrics.METRIC_KEYS) + f"{'n':>6}"
    lines = [header]
    rows = [("overall", summary["overall"])] + [(f"tier {k}", v) for k, v in summary["tiers"].items()]
    rows += list(summary["groups"].items())
    rows += [(k, v) for k, v in summary["datasets"].items()]
    for name, values in rows:
        lines.append(f"{name[:27]:<28}" + "".join(f"{values[k]:>8.4f}" for k in metrics.METRIC_KEYS)
                     + f"{values['count']:>6}")  # fmt: skip
    if summary["errors"]:
        lines.append(f"{len(summary['errors'])} samples failed (see the JSON 'errors'), e.g. {next(iter(summary['errors'].values()))}")
    return "\n".join(lines)


def write_csv(records: dict[str, dict], path: Path) -> None:
    fields = ["id", "dataset", "tier", "group", "prompt", "route", "answer", *metrics.METRIC_KEYS, "intersection", "union", "error"]
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(records.values())


def worst_cases(records: dict[str, dict], samples: list[Sample], out: Path, count: int) -> list[Path]:
    """Overlays of the `count` samples with the lowest mIoU: prediction tinted blue, ground truth outlined green."""
    by_id = {s.id: s for s in samples}
    scored = sorted((r for r in records.values() if "error" not in r), key=lambda r: r["mIoU"])[:count]
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for record in scored:
        sample = by_id[record["id"]]
        with Image.open(sample.image) as opened:
            image = opened.convert("RGB")
        gt, _ = sample.load_mask()
        if sample.eval_size:
            image = image.resize(sample.eval_size[::-1])
            gt = _at(gt, sample.eval_size, Image.Resampling.BICUBIC)
        with Image.open(record["mask"]) as opened:  # where this record's mask was written
            pred = np.asarray(opened) > 127
        pixels = np.asarray(image, dtype=np.float32)
        pixels = np.where(pred[..., None], pixels * 0.5 + np.array([30, 144, 255]) * 0.5, pixels)
        edge = gt & ~_eroded(gt)
        pixels[edge] = (0, 255, 0)
        picture = Image.fromarray(pixels.astype(np.uint8))
        ImageDraw.Draw(picture).text((4, 4), f"{sample.id}  mIoU {record['mIoU']:.3f}", fill=(255, 255, 0))
        path = out / mask_name(sample.id)
        picture.save(path)
        written.append(path)
    return written


def _eroded(mask: np.ndarray) -> np.ndarray:
    from scipy import ndimage

    return ndimage.binary_erosion(mask, iterations=2)

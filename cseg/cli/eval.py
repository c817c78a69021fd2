"""`cseg eval`: the paper's metrics of a bundle on a dataset, resumable from its work folder."""

from __future__ import annotations

import json
from pathlib import Path

from cseg.cli.args import BundleArgs, GenerationArgs, OutputArgs, add_groups, at_least
from cseg.errors import InvalidInputError
from cseg.outputs import output_folder

OUTPUTS = OutputArgs(
    ("--work", "folder", {"default": "cseg-eval-work", "help": "per-sample results and masks (resume from here)"}),
    ("--json", "file", {"help": "write the metrics summary here"}),
    ("--csv", "file", {"help": "write per-sample metrics here"}),
    ("--save-masks", "folder", {"help": "write every predicted mask here (default: WORK/masks)"}),
)


def register(sub) -> None:
    ev = sub.add_parser("eval", help="the paper's metrics of a bundle on a dataset (resumable)")
    add_groups(ev, BundleArgs())
    ev.add_argument("--data", required=True, help="dataset folder")
    ev.add_argument("--format", required=True, choices=["conceptseg", "reasonseg", "cityscapes", "folder"])
    ev.add_argument("--split", default=None, help="split to evaluate (conceptseg: test, cityscapes: val)")
    ev.add_argument("--prompt", help="folder format: the prompt for images without an entry in prompts.json")
    ev.add_argument("--demos", type=int, default=1, help="conceptseg: demonstrations per sample from the train split "
                    "(the research protocol draws its own: 4, or 1 for classes with 2 train items)")
    ev.add_argument("--seed", type=int, default=None, help="conceptseg: seed of the demonstration draws (default 0; "
                    "research protocol: 42, as evaluate_conceptseg.py)")
    ev.add_argument("--protocol", default="default", choices=["default", "research"],
                    help="research: the episodes, prompts and metric definitions of the research scripts")
    ev.add_argument("--metrics", choices=["toolkit", "research"], default=None,
                    help="metric definitions (default: research for --protocol research, else toolkit)")
    ev.add_argument("--fresh", action="store_true", help="discard the results already in --work")
    ev.add_argument("--limit", type=int, default=None, help="evaluate the first N samples only")
    add_groups(ev, GenerationArgs(route=True), OUTPUTS)
    ev.add_argument("--worst", type=int, default=4, help="overlays of the N lowest-mIoU samples (0: none)")
    ev.set_defaults(run=run_eval)


def run_eval(args) -> int:
    from cseg.eval import datasets, evaluate

    at_least(args, 1, "--limit")
    if args.worst < 0:
        raise InvalidInputError("--worst must be 0 (no overlays) or a positive number of samples")
    # the work folder's own outputs are as much outputs as the flags: WORK/masks a file was FileExistsError at the end
    args.save_masks = args.save_masks or str(Path(args.work) / "masks")
    OUTPUTS.parse(args)
    if args.worst:
        output_folder(str(Path(args.work) / "worst"), "--worst's overlay folder")
    if args.protocol == "research" and args.format not in ("conceptseg", "reasonseg"):
        raise InvalidInputError(f"--protocol research exists for conceptseg and reasonseg, not {args.format}")
    options = {"data": str(Path(args.data).resolve()), "format": args.format, "split": args.split,
               "prompt": args.prompt, "demos": args.demos, "seed": args.seed, "protocol": args.protocol}  # fmt: skip
    samples = datasets.read(args.format, args.data, **{k: options[k] for k in ("split", "prompt", "demos", "seed",
                                                                              "protocol")})  # fmt: skip
    samples = samples[: args.limit] if args.limit else samples
    runtime = BundleArgs().parse(args)
    work = Path(args.work)
    masks = Path(args.save_masks)
    metric_mode = args.metrics or ("research" if args.protocol == "research" else "toolkit")
    records = evaluate.evaluate(runtime, samples, work, masks, route=args.route, max_new_tokens=args.max_new_tokens,
                                metric_mode=metric_mode, options=options, fresh=args.fresh)  # fmt: skip
    summary = {"metrics": metric_mode, "protocol": args.protocol, **evaluate.summarize(records)}
    print(f"metrics: {metric_mode} definitions, protocol: {args.protocol}")
    print(evaluate.table(summary))
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=1))
    if args.csv:
        evaluate.write_csv(records, Path(args.csv))
    if args.worst:
        shown = evaluate.worst_cases(records, samples, work / "worst", args.worst)
        print(f"worst cases: {len(shown)} overlays in {work / 'worst'}")
    print(f"predicted masks: {masks} (per-sample results: {work / 'samples.jsonl'})")
    return 0

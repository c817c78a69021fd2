"""The parity gate over many random checkpoints (issue 29): valid models must export, whatever their seed.

    .venv/bin/python benchmarks/parity_sweep.py [--size tiny] [--seeds 1000-1049,6161,2021] [--modes full,rule-only]
                                               [--decoder-only] [--json sweep.json]

Per seed: writes a random-init checkpoint (`cseg make-checkpoint`), then either exports it as a bundle (the default:
`cseg export` of a full and/or a rule-only bundle, every graph through the parity gate) or, with --decoder-only,
exports and checks the sam3_decoder graph alone with the settings each bundle kind gives it (the graph the
positional comparison refused on seeds 6161 and 2021; seconds instead of a minute a seed). One line per seed and
mode: pass or the gate's message, the tied rows it matched and the worst output's share of its tolerance; exit
status 1 when any failed. Slow tests (tests/test_parity.py) run it over >= 50 tiny and 3 small seeds.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

MODES = ("full", "rule-only")


def check_seed(size: str, seed: int, modes=MODES, decoder_only: bool = False, work: Path | None = None) -> list[dict]:
    """One checkpoint of `size` and `seed`, exported per mode; a result per mode (ok, message, reordered, worst)."""
    from cseg.errors import ParityError
    from cseg.export.models.make_checkpoint import make_checkpoint

    with tempfile.TemporaryDirectory(dir=work) as folder:
        folder = Path(folder)
        checkpoint = make_checkpoint(size, seed=seed, out=folder / "checkpoint")
        results = []
        for mode in modes:
            began = time.perf_counter()
            try:
                report = (_decoder(checkpoint, mode, folder) if decoder_only else
                          _bundle(checkpoint, mode, folder / mode))  # fmt: skip
                results.append({"ok": True, "message": "",
                                "reordered": max(e.get("reordered", 0) for e in report.values()),
                                "worst": max(e["max_abs"] / e["tolerance"] for e in report.values())})  # fmt: skip
            except ParityError as error:
                results.append({"ok": False, "message": str(error), "reordered": None, "worst": None})
            results[-1].update(size=size, seed=seed, mode=mode, seconds=round(time.perf_counter() - began, 1))
        return results


def _decoder(checkpoint, mode: str, folder: Path) -> dict:
    """The sam3_decoder graph alone, as export_bundle builds it for `mode`: its parity report."""
    from cseg.export.bundle import DEFAULT_TOP_K, RULE_QUERIES
    from cseg.export.graphs import GRAPHS
    from cseg.export.loading import load_conceptseg, load_sam3
    from cseg.export.onnx_export import export_graph
    from cseg.export.parity import check_parity

    sam3 = load_sam3(checkpoint[1], attn_implementation="eager")
    vlm = load_conceptseg(checkpoint[0]) if mode == "full" else None
    queries = vlm.num_queries if vlm is not None else RULE_QUERIES
    spec = GRAPHS["sam3_decoder"](vlm, sam3, {"top_k": DEFAULT_TOP_K, "queries": queries})
    return check_parity(spec, export_graph(spec, folder / f"sam3_decoder-{mode}.onnx")[0])


def _bundle(checkpoint, mode: str, out: Path) -> dict:
    """A whole cpu bundle (every graph through the gate): the parity reports merged over graphs."""
    from cseg.export.bundle import export_bundle
    from cseg.bundle.schema import read_manifest

    model = checkpoint[0] if mode == "full" else None
    manifest = read_manifest(export_bundle(model, checkpoint[1], out, progress=False, report=lambda line: None))
    return {f"{key}.{name}": entry for key, outputs in manifest["parity"].items() for name, entry in outputs.items()}


def seed_list(text: str) -> list[int]:
    """"1000-1049,6161" -> [1000, ..., 1049, 6161]."""
    seeds = []
    for part in text.split(","):
        low, _, high = part.partition("-")
        seeds += list(range(int(low), int(high or low) + 1))
    return seeds


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", default="tiny", help="checkpoint size (tiny, small, ...)")
    parser.add_argument("--seeds", default="1000-1049,6161,2021", help="seeds: ranges and single ones, comma-separated")
    parser.add_argument("--modes", default=",".join(MODES), help="full, rule-only or both")
    parser.add_argument("--decoder-only", action="store_true", help="export and check the sam3_decoder graph alone")
    parser.add_argument("--json", type=Path, help="write every result here")
    args = parser.parse_args(argv)
    modes = tuple(args.modes.split(","))
    results = []
    for seed in seed_list(args.seeds):
        for result in check_seed(args.size, seed, modes, args.decoder_only):
            results.append(result)
            state = (f"ok (worst {result['worst']:.2f} of its tolerance, {result['reordered']} tied rows matched)"
                     if result["ok"] else f"FAILED: {result['message']}")  # fmt: skip
            print(f"{args.size} seed {seed:>5} {result['mode']:<9} {result['seconds']:6.1f} s  {state}", flush=True)
    failed = [r for r in results if not r["ok"]]
    reordered = sum(1 for r in results if r["ok"] and r["reordered"])
    print(f"{len(results) - len(failed)} of {len(results)} exports passed the parity gate ({reordered} needed tied "
          f"rows matched); failed: {[(r['seed'], r['mode']) for r in failed]}")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

"""Print one table of target mIoU per stage from one or more runs of examples/synthetic.sh,
examples/camvid_day2dusk.sh, benchmarks/ablation.sh or benchmarks/methods.sh: mean and spread over the
runs (seeds) given, for every OUT/eval/<stage>.json found.

    python benchmarks/summarize.py OUT_seed0 [OUT_seed1 ...] [--json]
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

STAGES = ["source_only", "warmup", "self_train_1", "self_train_2", "oracle"]


def main(argv: list[str]) -> int:
    as_json = "--json" in argv
    runs = [Path(a) for a in argv if a != "--json"]
    if not runs:
        print(__doc__, file=sys.stderr)
        return 2
    table = {}
    # the pipeline's stages first, then whatever else the runs evaluated (ablation rows, other methods)
    extra = sorted({f.stem for r in runs for f in (r / "eval").glob("*.json")} - set(STAGES))
    for stage in STAGES + extra:
        vals = []
        for r in runs:
            f = r / "eval" / f"{stage}.json"
            if f.exists():
                vals.append(json.loads(f.read_text())["miou"])
        if vals:
            table[stage] = {"mean": statistics.mean(vals), "std": statistics.pstdev(vals) if len(vals) > 1 else 0.0,
                            "runs": vals}
    if "source_only" in table and "oracle" in table:
        gap = table["oracle"]["mean"] - table["source_only"]["mean"]
        for stage, row in table.items():
            # scores on another split (CamVid: the day model on day frames) are not on the gap's scale
            same_split = not stage.endswith("_day_val")
            row["gap_closed"] = (row["mean"] - table["source_only"]["mean"]) / gap if gap and same_split else None
    if as_json:
        print(json.dumps(table, indent=2))
        return 0
    print(f"target val mIoU over {len(runs)} run(s)")
    print(f"{'stage':<20} {'mIoU':>7} {'spread':>7} {'gap closed':>11}  runs")
    for stage, row in table.items():
        gc = row.get("gap_closed")
        gcs = f"{100 * gc:10.1f}%" if gc is not None else f"{'':>11}"
        print(f"{stage:<20} {row['mean']:7.2f} {row['std']:7.2f} {gcs}  " + ", ".join(f"{v:.2f}" for v in row["runs"]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

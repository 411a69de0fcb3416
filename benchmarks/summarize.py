"""Print one table of target mIoU per stage from one or more runs of examples/synthetic.sh,
examples/camvid_day2dusk.sh, benchmarks/ablation.sh or benchmarks/methods.sh: mean and spread over the
runs (seeds) given, for every OUT/eval/<stage>.json found.

    python benchmarks/summarize.py OUT_seed0 [OUT_seed1 ...] [--json | --markdown]

--markdown prints the README's table: rows named after the method, per-seed values in run order
(a dash where a run lacks that row).
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

import yaml

STAGES = ["source_only", "warmup", "self_train_1", "self_train_2", "oracle"]
# README names of the rows that examples/, ablation.sh and methods.sh write
LABELS = {
    "source_only": "source-only",
    "warmup": "DiGA warm-up (SKD + CDMix)",
    "self_train_1": "DiGA + self-training round 1",
    "self_train_2": "DiGA + self-training round 2",
    "oracle": "target oracle",
    "source_only_day_val": "source-only on the source domain's val frames",
    "a_skd": "ablation: + SKD only (no CDMix)",
    "a_st_threshold": "ablation: + self-training, fixed threshold 0.9",
    "a_st_dps": "ablation: + self-training, DPS (paper)",
    "a_st_none": "ablation: + self-training, keep every pseudo-label",
    "m_plca": "PLCA (warm-up from scratch)",
    "m_dacs": "DACS (from scratch)",
    "m_st_t2s": "T2S-DA (self-training from the DiGA warm-up)",
    "m_st_threshold": "CBST-style threshold (self-training from the DiGA warm-up)",
    "m_st_dacs": "DACS (self-training from the DiGA warm-up)",
}


def run_seed(run: Path, index: int) -> str:
    """The seed a run folder was trained with (its warm-up's config.yaml), else '#index' (its position)."""
    config = run / "warmup" / "config.yaml"
    seed = (yaml.safe_load(config.read_text()) or {}).get("seed") if config.exists() else None
    return f"#{index}" if seed is None else str(seed)


def main(argv: list[str]) -> int:
    as_json, markdown = "--json" in argv, "--markdown" in argv
    runs = [Path(a) for a in argv if a not in ("--json", "--markdown")]
    if not runs:
        print(__doc__, file=sys.stderr)
        return 2
    table = {}
    # the pipeline's stages first, then whatever else the runs evaluated (ablation rows, other methods)
    found = {f.stem for r in runs for f in (r / "eval").glob("*.json")} - set(STAGES)
    extra = [k for k in LABELS if k in found] + sorted(found - set(LABELS))
    for stage in STAGES + extra:
        per_run = []
        for r in runs:
            f = r / "eval" / f"{stage}.json"
            per_run.append(json.loads(f.read_text())["miou"] if f.exists() else None)
        vals = [v for v in per_run if v is not None]
        if vals:
            table[stage] = {"mean": statistics.mean(vals), "std": statistics.pstdev(vals) if len(vals) > 1 else 0.0,
                            "runs": vals, "per_run": per_run}
    if "source_only" in table and "oracle" in table:
        gap = table["oracle"]["mean"] - table["source_only"]["mean"]
        for stage, row in table.items():
            # scores on another split (CamVid: the day model on day frames) are not on the gap's scale
            same_split = not stage.endswith("_day_val")
            row["gap_closed"] = (row["mean"] - table["source_only"]["mean"]) / gap if gap and same_split else None
    if as_json:
        print(json.dumps(table, indent=2))
        return 0
    if markdown:
        print("| row | mIoU (mean) | spread (std) | " + " / ".join(f"seed {run_seed(r, i)}" for i, r in enumerate(runs))
              + " | gap closed |")
        print("|---|---|---|---|---|")
        for stage, row in table.items():
            gc = row.get("gap_closed")
            seeds = " / ".join("-" if v is None else f"{v:.2f}" for v in row["per_run"])
            print(f"| {LABELS.get(stage, stage)} | {row['mean']:.2f} | {row['std']:.2f} | {seeds} | "
                  + (f"{100 * gc:.1f}%" if gc is not None else "") + " |")
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

"""The table of benchmarks/gpu_check.sh: step time, images/s and peak memory per method, model and
precision setting (from OUT/steps.jsonl), then inference throughput (OUT/infer.json) and the
multi-GPU check (OUT/torchrun.txt). Markdown, so it can go into the README as printed.

    python benchmarks/gpu_summary.py OUT
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main(out: Path) -> int:
    rows = [json.loads(line) for line in (out / "steps.jsonl").read_text().splitlines() if line.strip()] \
        if (out / "steps.jsonl").is_file() else []
    print("| model | crop x batch | method | precision | channels_last | compile | s/iter | images/s | peak GiB |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        model = f"{r['arch']} {r['backbone']}" + (f" + {r['head']}" if r.get("head") else "")
        crop = f"{r['crop'][0]}x{r['crop'][1]} x {r['batch']}"
        print(f"| {model} | {crop} | {r['method']} | {'fp32' if r['amp'] == 'off' else r['amp']} | "
              f"{'yes' if r['channels_last'] else 'no'} | {r['compile'] or 'no'} | {r['s_per_step']:.3f} | "
              f"{r['images_per_s']:.2f} | {r['peak_gib']:.2f} |")
    if (out / "infer.json").is_file():
        inf = json.loads((out / "infer.json").read_text())
        print()
        print("| stage | images | size | images/s | amp | device |")
        print("|---|---|---|---|---|---|")
        for stage in ("pseudo_label", "evaluate"):
            s = inf[stage]
            print(f"| {stage.replace('_', '-')} | {s['images']} | {s['size']} | {s['images_per_s']:.2f} | "
                  f"{inf['amp']} | {inf['device']} |")
    if (out / "torchrun.txt").is_file():
        print()
        print((out / "torchrun.txt").read_text().strip())
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 2:
        print("usage: python benchmarks/gpu_summary.py OUT", file=sys.stderr)
        sys.exit(2)
    sys.exit(main(Path(sys.argv[1])))

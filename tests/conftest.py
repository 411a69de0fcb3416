import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

os.environ.setdefault("SEGADAPT_QUIET", "1")
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(scope="session")
def tiny_bench(tmp_path_factory) -> Path:
    """A small synthetic benchmark (source in GTA5 layout, target in Cityscapes layout), prepared once."""
    from segadapt.data.prepare.synthetic import prepare_synthetic

    out = tmp_path_factory.mktemp("bench")
    prepare_synthetic(out, seed=3, n_source=12, n_target_train=8, n_target_val=4, width=96, height=48)
    return out


def run_cli(*args, check=True, env=None):
    """Run `python -m segadapt ...` in a subprocess; returns CompletedProcess (text)."""
    e = dict(os.environ, SEGADAPT_QUIET="1", OMP_NUM_THREADS="1")
    if env:
        e.update(env)
    proc = subprocess.run([sys.executable, "-m", "segadapt", *map(str, args)], capture_output=True, text=True, env=e)
    if check and proc.returncode != 0:
        raise AssertionError(f"segadapt {' '.join(map(str, args))} failed ({proc.returncode}):\n{proc.stderr}")
    return proc


# small crops, batches and feature maps so that training steps take milliseconds
TINY_OVERRIDES = ["data.crop=[48,48]", "data.batch_size=2", "train.log_every=1", "train.ckpt_every=2",
                  "model.feat_dim=16"]
TINY_SET = [a for o in TINY_OVERRIDES for a in ("--set", o)]  # the same, as CLI arguments


def fixed_tiny_checkpoint(ds, folder: Path):
    """A fixed random tiny DeepLab-v2 (seed 0, feat_dim 8) for ``ds``'s label space, in eval mode, saved
    as ``folder/model.pt``: (model, checkpoint path)."""
    from segadapt.engine.checkpoint import save_checkpoint
    from segadapt.models.segmenter import build_segmenter

    torch.manual_seed(0)
    model = build_segmenter({"arch": "deeplabv2", "backbone": "tiny", "feat_dim": 8, "pretrained": None},
                            ds.label_space.num_classes).eval()
    save_checkpoint(folder / "model.pt", {"model": model.state_dict(), "model_spec": model.spec,
                                          "label_space": ds.label_space.to_dict()})
    return model, folder / "model.pt"

"""Reader of prepared dataset folders (written by ``segadapt prepare-data``).

Layout (see ``segadapt.data.prepare.common``): ``dataset.json``, ``splits/<split>.txt`` ("<id>\\t<image
path>", relative to the folder or absolute), ``labels/<split>/<id>.png`` (uint8 trainIds, 255 = ignore),
``stats/<split>.json`` (per-image class pixel counts), ``report.json``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from segadapt.data.io import read_json
from segadapt.data.labelspace import LabelSpace, get_label_space
from segadapt.errors import DataError, UsageError

FORMAT = "segadapt-prepared"
SUPPORTED_VERSION = 1


class PreparedDataset:
    def __init__(self, root: str | Path):
        self.root = Path(root).expanduser().absolute()
        if not self.root.is_dir():
            raise DataError(f"prepared dataset folder {self.root} does not exist")
        meta_path = self.root / "dataset.json"
        if not meta_path.is_file():
            hint = " (an unfinished preparation: run prepare-data again)" if (self.root / "splits").is_dir() else ""
            raise DataError(f"{self.root} is not a prepared dataset: no dataset.json{hint}")
        meta = read_json(meta_path)
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            raise DataError(f"{meta_path} is not a segadapt prepared-dataset description")
        if meta.get("version", 0) > SUPPORTED_VERSION:
            raise DataError(f"{meta_path} has format version {meta.get('version')}; this segadapt reads "
                            f"version {SUPPORTED_VERSION} (upgrade segadapt)")
        try:
            self.meta = meta
            self.kind: str = meta["kind"]
            # the full definition (always written since folder datasets bring their own classes)
            self.label_space: LabelSpace = get_label_space(meta.get("label_space_def") or meta["label_space"])
            self._splits: dict[str, int] = dict(meta["splits"])
            self._has_labels: dict[str, bool] = {s: bool(meta["has_labels"].get(s, False)) for s in self._splits}
        except (KeyError, TypeError, AttributeError) as e:
            raise DataError(f"{meta_path} is incomplete or malformed ({e})") from None
        except UsageError as e:  # an unknown label space here is a data problem, not a bad option
            raise DataError(f"{meta_path}: {e}") from None
        self.resize = tuple(meta["resize"]) if meta.get("resize") else None
        self._lists: dict[str, tuple[list[str], dict[str, Path]]] = {}

    def __repr__(self) -> str:
        return f"PreparedDataset({str(self.root)!r}, kind={self.kind!r}, splits={self._splits})"

    @property
    def splits(self) -> list[str]:
        return list(self._splits)

    def _check(self, split: str) -> None:
        if split not in self._splits:
            raise UsageError(f"unknown split '{split}' in {self.root} (available: {', '.join(self._splits) or 'none'})")

    def _list(self, split: str) -> tuple[list[str], dict[str, Path]]:
        self._check(split)
        if split not in self._lists:
            path = self.root / "splits" / f"{split}.txt"
            try:
                lines = path.read_text().splitlines()
            except OSError:
                raise DataError(f"missing split list {path}") from None
            ids, paths = [], {}
            for n, line in enumerate(lines, 1):
                if not line.strip():
                    continue
                parts = line.split("\t")
                if len(parts) != 2 or not parts[0]:
                    raise DataError(f"{path}:{n}: expected '<id>\\t<image path>'")
                i, p = parts
                ids.append(i)
                # relative paths are images written into the folder (--image-size); absolute ones are raw images
                paths[i] = Path(p) if Path(p).is_absolute() else self.root / p
            self._lists[split] = (ids, paths)
        return self._lists[split]

    def has_labels(self, split: str) -> bool:
        self._check(split)
        return self._has_labels[split]

    def ids(self, split: str) -> list[str]:
        return list(self._list(split)[0])

    def image_path(self, split: str, id: str) -> Path:
        paths = self._list(split)[1]
        if id not in paths:
            raise UsageError(f"unknown id '{id}' in split '{split}' of {self.root}")
        return paths[id]

    def label_path(self, split: str, id: str) -> Path | None:
        self.image_path(split, id)  # checks split and id
        if not self._has_labels[split]:
            return None
        return self.root / "labels" / split / f"{id}.png"

    def items(self, split: str) -> list[tuple[str, Path, Path | None]]:
        ids, paths = self._list(split)
        lab = self._has_labels[split]
        return [(i, paths[i], self.root / "labels" / split / f"{i}.png" if lab else None) for i in ids]

    def class_counts(self, split: str) -> np.ndarray:
        """(n_images, n_classes) int64 pixel counts per class, rows aligned with ``ids(split)``."""
        ids = self._list(split)[0]
        if not self._has_labels[split]:
            raise DataError(f"split '{split}' of {self.root} has no labels, hence no class counts")
        path = self.root / "stats" / f"{split}.json"
        stats = read_json(path)
        try:
            counts = np.asarray(stats["counts"], dtype=np.int64).reshape(len(stats["ids"]), -1)
            row = {i: r for r, i in enumerate(stats["ids"])}
        except (KeyError, TypeError, ValueError) as e:
            raise DataError(f"{path} is malformed ({e})") from None
        n_classes = self.label_space.num_classes
        if len(row) and counts.shape[1] != n_classes:
            raise DataError(f"{path} has {counts.shape[1]} classes per row; label space has {n_classes}")
        missing = [i for i in ids if i not in row]
        if missing:
            raise DataError(f"{path} lacks counts for {len(missing)} ids of split '{split}' (e.g. {missing[0]}); "
                            "run prepare-data again")
        if not ids:
            return np.zeros((0, n_classes), np.int64)
        return counts[[row[i] for i in ids]]

"""The data folder's files, named once (dvc.yaml names the same paths as stage outputs)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import ForestsegError
from .io import read_columns


@dataclass(frozen=True)
class Split:
    """split.csv's columns, row i of each for tile i: file name, scene id as written, and subset."""

    image: np.ndarray  # str
    scene: np.ndarray  # str ("0102" stays "0102")
    subset: np.ndarray  # "train", "test" or "val"


@dataclass(frozen=True)
class DataLayout:
    """index.csv, split.csv and packed/{images,masks}.npy (row i of each is tile i) under `root`."""

    root: Path

    @property
    def index_csv(self) -> Path:
        return self.root / "index.csv"

    @property
    def split_csv(self) -> Path:
        return self.root / "split.csv"

    @property
    def packed(self) -> Path:
        return self.root / "packed"

    @property
    def images(self) -> Path:
        return self.packed / "images.npy"

    @property
    def masks(self) -> Path:
        return self.packed / "masks.npy"

    @property
    def digest(self) -> Path:
        """Facts of the packed arrays: their SHA-256 (their content in a few bytes, for resume
        fingerprints) and the ground size of a pixel (data.pixel_size_m, for the model file)."""
        return self.packed / "sha256.json"

    def split(self) -> Split:
        """split.csv, read without pandas (the train and overlays stages do not import it)."""
        columns = read_columns(self.split_csv, "image", "scene", "subset")
        return Split(*(np.array(columns[c], dtype=str) for c in ("image", "scene", "subset")))

    def pixel_size_m(self) -> float:
        """The ground size of a pixel, as the index stage recorded it."""
        try:
            return float(json.loads(self.digest.read_text())["pixel_size_m"])
        except (OSError, ValueError, KeyError, TypeError) as e:  # a damaged or hand-edited file
            raise ForestsegError(
                f"{self.digest}: cannot be read ({type(e).__name__}: {' '.join(str(e).split())}); "
                "rerun `dvc repro index`"
            ) from None

    def content(self) -> list[Path]:
        """Small files that together pin the data's content: the index, the split and the arrays' digest."""
        return [self.index_csv, self.split_csv, self.digest]

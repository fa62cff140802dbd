"""The data folder's files, named once (dvc.yaml names the same paths as stage outputs)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


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
        """SHA-256 of the packed arrays: their content in a few bytes, for resume fingerprints."""
        return self.packed / "sha256.json"

    def content(self) -> list[Path]:
        """Small files that together pin the data's content: the index, the split and the arrays' digest."""
        return [self.index_csv, self.split_csv, self.digest]

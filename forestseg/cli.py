"""`forestseg predict`: checkpoint + images or folders -> 0/255 PNG masks (and overlays)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from .config import ForestsegError
from .io import write_with
from .predict import Predictor, overlay, read_rgb
from .device import pick_device

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp"}


def _inputs(paths: list[Path]) -> list[Path]:
    files = []
    for p in paths:
        if p.is_dir():
            files += sorted(f for f in p.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
        elif p.exists():
            files.append(p)
        else:
            raise ForestsegError(f"{p}: no such file or folder")
    if not files:
        raise ForestsegError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in {', '.join(map(str, paths))}")
    return files


def predict(args: argparse.Namespace) -> int:
    predictor = Predictor.load(args.checkpoint, pick_device(args.device))
    if args.overlap is not None and not 0 <= args.overlap < predictor.tile:
        raise ForestsegError(f"--overlap {args.overlap}: must be in 0..{predictor.tile - 1} (the model's tile is {predictor.tile} px)")
    files = _inputs(args.inputs)
    stems = [f.stem for f in files]
    twice = sorted({s for s in stems if stems.count(s) > 1})
    if twice:
        raise ForestsegError(f"several inputs would write the same <name>_mask.png: {twice[:5]}; predict them separately")
    if args.out.exists() and not args.out.is_dir():
        raise ForestsegError(f"-o {args.out}: is a file; give a folder for the masks")
    input_dirs = {p.resolve() for p in args.inputs if p.is_dir()} | {f.parent.resolve() for f in files}
    if args.out.resolve() in input_dirs:
        raise ForestsegError(f"-o {args.out}: is a folder of input images; the masks would land among them "
                             "(and be read as inputs next time): choose another output folder")
    try:
        args.out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ForestsegError(f"-o {args.out}: cannot create the folder ({e.strerror or e})") from None
    failed, transparent = [], 0
    for path in tqdm(files, desc="predict", unit="image", disable=None):
        try:
            image, opaque = read_rgb(path)
        except ForestsegError as e:
            failed.append(str(e))
            continue
        mask = predictor.mask(image, args.overlap)
        if opaque is not None:  # transparent pixels are no photo: never forest
            mask &= opaque
            transparent += 1
        write_with(args.out / f"{path.stem}_mask.png", lambda p: Image.fromarray((mask * 255).astype(np.uint8)).save(p))
        if args.overlay:
            write_with(args.out / f"{path.stem}_overlay.png", lambda p: Image.fromarray(overlay(image, mask)).save(p))
    print(f"predict: wrote {len(files) - len(failed)} mask(s) to {args.out}; {len(failed)} image(s) failed"
          + (f"; {transparent} image(s) had an alpha band: transparent pixels are not forest" if transparent else ""))
    for message in failed:
        print(f"error: {message}", file=sys.stderr)
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="forestseg")
    sub = ap.add_subparsers(dest="command", required=True)
    p = sub.add_parser("predict", help="segment images with a trained checkpoint")
    p.add_argument("checkpoint", type=Path, help="e.g. models/bce-adam-0/last.pt")
    p.add_argument("inputs", type=Path, nargs="+", help="image files or folders of images")
    p.add_argument("-o", "--out", type=Path, required=True, help="folder for <name>_mask.png (0/255)")
    p.add_argument("--overlay", action="store_true", help="also write <name>_overlay.png")
    p.add_argument("--overlap", type=int, default=None, help="pixels shared by neighbouring windows (default tile/4)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:<index>")
    args = ap.parse_args(argv)
    try:
        sys.exit(predict(args))
    except ForestsegError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()

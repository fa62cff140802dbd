"""Stage index: validate every pair of a Kaggle-layout folder, decode it once into packed arrays."""
from pathlib import Path

from common import args, params, stage

from forestseg.dataset import build_index, check_tracked, format_report
from forestseg.io import sha256_of, write_csv, write_json


@stage
def main(argv: list[str]) -> None:
    source, index_csv, packed_dir, report_json = args(argv, "SOURCE", "INDEX_CSV", "PACKED_DIR", "REPORT_JSON")
    (cfg,) = params("data")
    check_tracked(source)
    packed = Path(packed_dir)
    index, report = build_index(source, packed / "images.npy", packed / "masks.npy", cfg.masks, cfg.forest)
    # content digest of the arrays: the train stage's resume fingerprint, without re-reading hundreds of MB per run
    write_json(packed / "sha256.json", {name: sha256_of(packed / name) for name in ("images.npy", "masks.npy")})
    write_csv(index_csv, index)
    write_json(report_json, report)
    print(format_report(report))


if __name__ == "__main__":
    main()

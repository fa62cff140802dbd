"""Stage synth: generate the embedded synthetic dataset in the Kaggle layout."""

from common import args, params, stage

from forestseg.synthetic import generate


@stage
def main(argv: list[str]) -> None:
    (out_dir,) = args(argv, "OUT_DIR")
    (cfg,) = params("synth")
    n = generate(out_dir, cfg)
    print(f"synth: wrote {n} pairs from {cfg.scenes} scenes to {out_dir}")


if __name__ == "__main__":
    main()

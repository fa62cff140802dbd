"""Stage check: every section of params.yaml validated. The stage tracks the whole file, so an edit that
no other stage reads (a misspelt section such as `trian:`, a key of a section no stage lists) fails
`dvc repro` at once instead of leaving the pipeline "up to date" with the edit ignored."""

from common import args, check_all, stage


@stage
def main(argv: list[str]) -> None:
    args(argv)
    sections = check_all()
    print(f"check: every section of params.yaml is valid ({', '.join(sections)})")


if __name__ == "__main__":
    main()

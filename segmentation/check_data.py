"""``python -m segmentation.check_data``: check a dataset's jsons and images without starting a training run.

Why this exists: the person preparing the data should learn every problem in it in one go, minutes before a run
and without a GPU, rather than from a crash hours into training. The flags are ``segmentation.fit``'s ``--data.*``
names, so the same command line (or its data part) can be checked first. Prints one report per split and exits
0 when nothing is fatal, 1 otherwise; bad data never produces a traceback.
"""

from __future__ import annotations

import argparse
import sys

from segmentation.data.check import check_splits

SPLITS = ("train", "val", "test")


def main(args: list[str] | None = None) -> int:
    """Parse ``args`` (default ``sys.argv[1:]``), check each split given, print the reports; return the exit code."""
    parser = argparse.ArgumentParser(prog="python -m segmentation.check_data", description=__doc__)
    for name in SPLITS:
        parser.add_argument(f"--data.{name}_json", dest=f"{name}_json", help=f"the {name} COCO json")
        parser.add_argument(f"--data.{name}_images", dest=f"{name}_images", help=f"the folder of the {name} images")
    parser.add_argument(
        "--data.allow_outside_root",
        dest="allow_outside_root",
        type=_boolean,
        default=False,
        help="accept json file names that resolve outside their image folder (true/false)",
    )
    options = parser.parse_args(args)

    splits = []
    for name in SPLITS:
        json_path, images = getattr(options, f"{name}_json"), getattr(options, f"{name}_images")
        if (json_path is None) != (images is None):
            parser.error(f"give both --data.{name}_json and --data.{name}_images, or neither")
        if json_path is not None:
            splits.append((name, json_path, images))
    if not splits:
        parser.error("give at least one split, e.g. --data.train_json J --data.train_images D")

    reports = check_splits(splits, allow_outside_root=options.allow_outside_root)
    print("\n\n".join(report.format() for report in reports))
    return 0 if all(report.ok for report in reports) else 1


def _boolean(value: str) -> bool:
    """jsonargparse-style booleans, so fit's ``--data.allow_outside_root true`` works here too."""
    lowered = value.lower()
    if lowered not in ("true", "false"):
        raise argparse.ArgumentTypeError(f"expected true or false, got {value!r}")
    return lowered == "true"


if __name__ == "__main__":
    sys.exit(main())

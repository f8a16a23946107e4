"""Write ``configs/zoo/<dataset>/<name>.yaml``: our config for each FPN Mask R-CNN of detectron2's model zoo.

Each file is the translation (``segmentation.detectron2_config``) of detectron2's fully resolved config of that
model (``../shared/parity/zoo/<dataset>/<name>/config.yaml``), with ``model.weights`` set to the zoo's trained
weights instead of the ImageNet initialisation the config itself names, so ``--config`` of a zoo file fine-tunes that
model (add ``--model.arch.num_classes K`` and your data). ``tests/test_zoo.py`` checks the files are up to date.

    python scripts/make_zoo_configs.py [--parity-dir ../shared/parity] [--out configs/zoo]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import yaml

from segmentation.detectron2_config.settings import from_detectron2_config
from segmentation.detectron2_config.translate import config_from_detectron2

ROOT = Path(__file__).resolve().parents[1]


def zoo_config(zoo_dir: Path, name: str) -> str:
    """The yaml text of our config for zoo model ``name`` (``<dataset>/<model>``)."""
    weights_url = json.loads((zoo_dir / "index.json").read_text())[name]["weights_url"]
    # training=False: the file serves every command (fit, evaluate, predict), not only fit
    config = config_from_detectron2(from_detectron2_config(zoo_dir / name / "config.yaml"), training=False)
    config["model"]["weights"] = weights_url
    header = (
        f"# detectron2 model zoo: {name}, translated from detectron2's resolved config by "
        "scripts/make_zoo_configs.py.\n# Fine-tune it: --config this file --model.arch.num_classes K --data.* ...\n"
    )
    return header + yaml.safe_dump(config, sort_keys=False)


def zoo_names(zoo_dir: Path) -> list[str]:
    return list(json.loads((zoo_dir / "index.json").read_text()))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parity-dir", type=Path, default=ROOT.parent / "shared" / "parity")
    parser.add_argument("--out", type=Path, default=ROOT / "configs" / "zoo")
    args = parser.parse_args(argv)
    zoo_dir = args.parity_dir / "zoo"
    for name in zoo_names(zoo_dir):
        path = args.out / f"{name}.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(zoo_config(zoo_dir, name))
        print(path)


if __name__ == "__main__":
    main()

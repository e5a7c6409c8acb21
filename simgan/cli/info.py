"""``simgan info DIR``: summarise a dataset directory or a model directory."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "path", help="a dataset directory written by `simgan collect`, or a model directory by `simgan train`"
    )
    parser.add_argument(
        "--validation-fraction",
        type=float,
        default=0.1,
        help="datasets: share of episodes held out (shown in the summary)",
    )


def run(args: argparse.Namespace) -> int:
    from simgan.checkpoint import MODEL_JSON, summarize_model
    from simgan.data import load_dataset, summarize
    from simgan.dataset_format import MANIFEST_NAME

    path = Path(args.path)
    if (path / MODEL_JSON).is_file() and not (path / MANIFEST_NAME).is_file():
        print(summarize_model(path))
        return 0
    if not (path / MANIFEST_NAME).is_file():
        from simgan.cli import CLIError

        raise CLIError(
            f"{path}: expected a dataset directory ({MANIFEST_NAME}, written by `simgan collect`) or a model "
            f"directory ({MODEL_JSON}, by `simgan train`), got "
            + ("neither" if path.is_dir() else "nothing there" if not path.exists() else "a file")
        )
    dataset = load_dataset(path, validation_fraction=args.validation_fraction)
    print(summarize(dataset))
    return 0

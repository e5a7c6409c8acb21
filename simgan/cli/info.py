"""``simgan info DIR``: summarise a dataset directory."""

from __future__ import annotations

import argparse


def add_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("path", help="a dataset directory written by `simgan collect`")
    parser.add_argument(
        "--validation-fraction",
        type=float,
        default=0.1,
        help="share of episodes held out (shown in the summary)",
    )


def run(args: argparse.Namespace) -> int:
    from simgan.data import load_dataset, summarize

    dataset = load_dataset(args.path, validation_fraction=args.validation_fraction)
    print(summarize(dataset))
    return 0

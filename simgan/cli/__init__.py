"""The ``simgan`` command line: one module per subcommand, each with ``add_parser`` and ``run``.

Heavy imports (torch, ray) happen inside each command's ``run`` so ``simgan --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from simgan.errors import SimganError

# (subcommand, module under simgan.cli, one-line description). Add new commands here.
COMMANDS: list[tuple[str, str, str]] = [
    ("collect", "collect", "collect rollouts of a gymnasium env on Ray workers into a verified dataset"),
    ("info", "info", "print a summary of a dataset (or a model directory)"),
    ("agent", "agent", "train an RL agent (SAC/PPO) in a real or learned env, or evaluate a saved one"),
    ("train", "train", "train a world model (conditional GAN or Gaussian ensemble) on a dataset"),
    (
        "simulate",
        "simulate",
        "run the learned env built from a model directory (thousands of sub-envs at once)",
    ),
    ("forecast", "forecast", "sample many possible futures from given states; write fan charts"),
    (
        "loop",
        "loop",
        "model-based RL loop: collect real data, train a world model, train the agent inside it",
    ),
    ("evaluate", "evaluate", "fidelity metrics of one or more model directories on a dataset, side by side"),
]


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Appends "(default: X)" to an option's help where it tells the reader something: not where the help
    already says its default, nor for a required option, a flag (store_true/false) or a default of None (the
    option is off unless given)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if (
            "default" in text.lower()
            or action.required
            or action.default is None
            or action.nargs == 0  # flags: their help says what giving them does
        ):
            return text
        return super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    from simgan import __version__

    parser = argparse.ArgumentParser(
        prog="simgan",
        description="simgan: learned, batched, GPU-ready simulators for reinforcement learning.",
    )
    parser.add_argument("--version", action="version", version=f"simgan {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, module_name, summary in COMMANDS:
        module = importlib.import_module(f"simgan.cli.{module_name}")
        p = sub.add_parser(name, help=summary, description=summary, formatter_class=HelpFormatter)
        module.add_parser(p)
        p.set_defaults(_run=module.run)
    return parser


def _is_user_error(exc: Exception) -> bool:
    # gymnasium.error.Error covers unknown env ids ("did you mean ...").
    return isinstance(exc, (SimganError, ValueError, FileExistsError, FileNotFoundError)) or type(
        exc
    ).__module__.startswith("gymnasium.error")


class CLIError(SimganError):
    """A user error the CLI reports as one line (exit status 2), without a traceback."""


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        result = args._run(args)
    except KeyboardInterrupt:
        print("simgan: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if not _is_user_error(exc):
            raise
        # Library code raises typed errors whose messages say what was expected and what was given.
        print(f"simgan {args.command}: error: {exc}", file=sys.stderr)
        return 2
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())

"""``--ray [ADDRESS]`` and ``--workers N``: where a command's independent units of work run."""

from __future__ import annotations

import argparse


def add_executor_arguments(parser) -> None:
    parser.add_argument("--ray", nargs="?", const="", default=None, metavar="ADDRESS",
                        help="run independent units on Ray: a local instance with no ADDRESS, else that cluster "
                             "(e.g. auto, ray://HOST:10001); needs pip install 'mechwork[ray]'")
    parser.add_argument("--workers", type=int, default=None,
                        help="Ray workers (default: one per CPU of the local instance or cluster)")
    parser.add_argument("--gpus-per-worker", type=float, default=0.0, metavar="G",
                        help="the share of a GPU each Ray worker gets (needed when the model is on CUDA: "
                             "workers load it onto their own GPU)")


def executor_from_arguments(args: argparse.Namespace):
    """None (in-process) without --ray; else a Ray executor the caller closes."""
    if args.ray is None:
        if args.workers is not None or args.gpus_per_worker:
            raise ValueError("--workers and --gpus-per-worker need --ray")
        return None
    from ..executors import executor_from

    return executor_from("ray:" + args.ray if args.ray else "ray", workers=args.workers,
                         gpus_per_worker=args.gpus_per_worker)

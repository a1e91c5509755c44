"""The ``ppo-lab`` command line.

    ppo-lab doctor              what this machine can run: torch, CUDA, devices, precisions, toolchain
    ppo-lab train ENV [FLAGS]   train PPO on a gymnasium task (cartpole, pendulum); see `ppo-lab train --help`
    ppo-lab rlhf STAGE PRESET   train a language model's RLHF stages (sft, rm, ...); see `ppo-lab rlhf --help`
    ppo-lab --version
"""

from __future__ import annotations

import argparse
import importlib.metadata
import platform
import sys

from ppo_lab import __version__

# The book toolchain, in the order `doctor` reports it (distribution names on PyPI).
TOOLCHAIN = (
    "torch",
    "numpy",
    "gymnasium",
    "transformers",
    "tokenizers",
    "peft",
    "safetensors",
    "tyro",
    "tqdm",
    "matplotlib",
    "ipywidgets",
    "jupyter-book",
    "myst-nb",
    "sphinx",
    "jupytext",
    "nbval",
    "pytest",
    "hypothesis",
    "playwright",
)


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def doctor_report() -> list[tuple[str, str]]:
    """(name, value) rows describing the machine, torch's devices and the book toolchain."""
    import torch

    rows: list[tuple[str, str]] = [
        ("ppo_lab", __version__),
        ("python", f"{platform.python_version()} ({sys.executable})"),
        ("platform", platform.platform()),
        ("torch", torch.__version__),
        ("torch threads", str(torch.get_num_threads())),
        ("cuda available", str(torch.cuda.is_available())),
    ]
    if torch.cuda.is_available():
        rows.append(("cuda version", str(torch.version.cuda)))
        for i in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(i)
            rows.append((f"cuda:{i}", f"{props.name}, {props.total_memory / 2**30:.1f} GiB, sm_{props.major}{props.minor}"))
        rows.append(("bf16 supported", str(torch.cuda.is_bf16_supported())))
        rows.append(("fp16 autocast", "True"))
        rows.append(("nccl available", str(torch.distributed.is_nccl_available())))
    else:
        rows.append(("bf16 on cpu", str(_cpu_bf16_works())))
    mps = getattr(torch.backends, "mps", None)
    rows.append(("mps available", str(bool(mps and mps.is_available()))))
    rows.append(("gloo available", str(torch.distributed.is_gloo_available())))
    for dist in TOOLCHAIN[1:]:
        rows.append((dist, _version(dist)))
    return rows


def _cpu_bf16_works() -> bool:
    import torch

    try:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = torch.ones(2, 2) @ torch.ones(2, 2)
        return y.dtype == torch.bfloat16
    except RuntimeError:
        return False


def _doctor(_: argparse.Namespace) -> int:
    rows = doctor_report()
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")
    return 0


def _train(args: argparse.Namespace) -> int:
    from ppo_lab.toy.cli import main as train_main

    return train_main(args.train_args)


def _rlhf(args: argparse.Namespace) -> int:
    from ppo_lab.llm.cli import main as rlhf_main

    return rlhf_main(args.rlhf_args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ppo-lab",
        description="The command line of ppo-book's ppo_lab package: check the machine and run the "
        "experiments whose results the book plots.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Run `ppo-lab COMMAND --help` for the flags of one command.",
    )
    parser.add_argument("--version", action="version", version=f"ppo-lab {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    doctor = sub.add_parser(
        "doctor",
        help="print torch / CUDA / device / precision support and the book toolchain versions",
        description="Print what this machine can run: Python, torch and its devices (CUDA GPUs, "
        "bf16/fp16 support, NCCL/gloo), and the installed versions of the book toolchain.",
    )
    doctor.set_defaults(func=_doctor)

    train = sub.add_parser(
        "train",
        help="train PPO on a gymnasium task: `ppo-lab train cartpole|pendulum [FLAGS]`",
        description="Train PPO on a gymnasium task. The first argument picks a preset "
        "(cartpole, pendulum); every config field is a flag. `ppo-lab train cartpole --help` "
        "lists them with their documentation.",
        add_help=False,
    )
    train.add_argument("train_args", nargs=argparse.REMAINDER, help="preset name and its flags")
    train.set_defaults(func=_train)

    rlhf = sub.add_parser(
        "rlhf",
        help="train a language model's RLHF stages: `ppo-lab rlhf sft|rm tiny [FLAGS]`",
        description="Train the RLHF stages of a causal language model (SFT, reward model, ...). "
        "`ppo-lab rlhf --help` lists the stages.",
        add_help=False,
    )
    rlhf.add_argument("rlhf_args", nargs=argparse.REMAINDER, help="stage, preset and flags")
    rlhf.set_defaults(func=_rlhf)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] == "train":
        # Everything after `train` (its own --help included) belongs to the trainer's CLI.
        return _train(argparse.Namespace(train_args=argv[1:]))
    if argv and argv[0] == "rlhf":  # likewise for the language-model stages
        return _rlhf(argparse.Namespace(rlhf_args=argv[1:]))
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())

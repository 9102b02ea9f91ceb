"""The ``lorapipe`` command: one verb per stage, the whole run, and plugin inspection."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import threading
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from lorapipe import __version__
from lorapipe.errors import UserError
from lorapipe.library_messages import quiet_misleading_messages
from lorapipe.machine_errors import machine_error

if TYPE_CHECKING:
    from lorapipe.context import RunContext
    from lorapipe.plan import RunPlan

console = Console(stderr=False, highlight=False)

STAGE_VERBS = ("prepare", "train", "evaluate", "merge", "export")


def _add_config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="pipeline YAML file")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY.PATH=VALUE",
        help="override a config value (repeatable), e.g. --set train.learning_rate=1e-4",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lorapipe", description="Fine-tune LLMs with LoRA/QLoRA from one YAML pipeline."
    )
    parser.add_argument("--version", action="version", version=f"lorapipe {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks for every error")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="prepare, train, evaluate, merge and export")
    _add_config_args(run)
    run.add_argument("--resume", action="store_true", help="continue an interrupted run")
    run.add_argument("--overwrite", action="store_true", help="delete output_dir and start again")
    run.add_argument(
        "--allow-config-change", action="store_true", help="resume even though the config changed"
    )

    validate = sub.add_parser("validate", help="check a config and its components; no work")
    _add_config_args(validate)

    for verb in STAGE_VERBS:
        stage = sub.add_parser(verb, help=f"run the {verb} stage only")
        _add_config_args(stage)
        if verb == "train":
            stage.add_argument(
                "--resume", action="store_true", help="continue from the newest valid checkpoint"
            )
            stage.add_argument(
                "--allow-config-change",
                action="store_true",
                help="resume even though the config changed",
            )

    inspect = sub.add_parser("inspect", help="prepared samples with the trained tokens highlighted")
    _add_config_args(inspect)
    inspect.add_argument("--split", choices=["train", "validation", "test"], default="train")
    inspect.add_argument("--count", type=int, default=3, help="how many samples (default 3)")
    inspect.add_argument("--start", type=int, default=0, help="index of the first sample")
    inspect.add_argument("--ids", action="store_true", help="show each token's id")

    chat = sub.add_parser("chat", help="talk to the fine-tuned model in its chat template")
    chat.add_argument("run", help="the run's output_dir or its config file")
    chat.add_argument("--base", action="store_true", help="talk to the base model instead")
    chat.add_argument("--gguf", type=Path, help="talk to this exported GGUF through llama.cpp")
    chat.add_argument("--prompt", help="answer this one message and exit (no prompt loop)")
    chat.add_argument("--system", help="system prompt (in the chat: /system TEXT)")
    chat.add_argument("--tools", type=Path, metavar="FILE",
                      help="JSON list of tool definitions for the chat template; the "
                           "model's tool calls are printed as it writes them")
    chat.add_argument("--max-new-tokens", type=int, default=256)
    chat.add_argument("--temperature", type=float, default=0.0, help="0 (default): greedy")
    chat.add_argument("--top-p", type=float, default=1.0)
    chat.add_argument("--top-k", type=int, default=0, help="0: no top-k cut")
    chat.add_argument("--seed", type=int, default=0, help="for sampling (temperature > 0)")

    report = sub.add_parser("report", help="write report.html: a run's curves, data, scores")
    report.add_argument("run_dir", help="the run's output_dir")

    plugins = sub.add_parser("plugins", help="installed plugins, their hooks and load failures")
    plugins.add_argument("--json", action="store_true", help="machine-readable output")

    components = sub.add_parser("components", help="registered component names per kind")
    components.add_argument("kind", nargs="?", help="only this kind (e.g. loader, exporters)")
    return parser


def cmd_validate(args: argparse.Namespace) -> int:
    from lorapipe.context import RunContext
    from lorapipe.model.source import model_context
    from lorapipe.plan import load_plan

    plan = load_plan(args.config, args.overrides)
    _check_before_work(RunContext(plan, config_file=Path(args.config)))
    console.print(f"[green]✓[/] {args.config} is valid")
    if model_context(plan.config.model.name_or_path) is None:
        console.print("  [yellow]note:[/] data.max_length not checked against the model's "
                      "context: no local config.json says it")
    for component in plan.configured():
        console.print(f"  {component.field}: {component.kind.replace('_', ' ')} "
                      f"'{component.name}'")
    console.print(f"  output_dir: {plan.config.output_dir}")
    _note_device_options(plan)
    return 0


def _check_before_work(ctx: RunContext) -> None:
    """What ``run`` refuses before any work, refused by ``validate`` too: the run
    directory's place, ``data.columns``, and a local model directory that is not there."""
    from lorapipe.data.schemas import check_columns
    from lorapipe.errors import ConfigError
    from lorapipe.model.source import resolve_model_path
    from lorapipe.rundir import check_location

    check_location(ctx.paths.root, ctx.read_paths())
    check_columns(ctx.config.data.columns)
    name = ctx.config.model.name_or_path
    local = resolve_model_path(name)
    if name.startswith(("/", ".", "~", "$")) and not Path(local).is_dir():
        raise ConfigError("model.name_or_path", f"no such directory: {local}; give a local "
                          "Hugging Face model directory, a hub id, or tiny-llama")


def _note_device_options(plan: RunPlan) -> None:
    """A GPU-only option is a note here (the config may be meant for another machine);
    ``run`` and ``train`` refuse it on this one."""
    from lorapipe.errors import ConfigError
    from lorapipe.model.dtypes import default_device, resolve_dtype
    from lorapipe.model.gpu_options import check_device_options

    device = default_device()
    try:
        check_device_options(plan.config, device, resolve_dtype(plan.config.model.dtype,
                                                                 device=device))
    except ConfigError as err:
        console.print(f"  [yellow]note:[/] on this machine ({device}) the run would stop: "
                      f"{escape(str(err))}", soft_wrap=True)


def cmd_plugins(args: argparse.Namespace) -> int:
    from lorapipe.plugin_manager import get_plugin_manager

    infos = get_plugin_manager().infos()
    if args.json:
        print(json.dumps([info.__dict__ for info in infos], indent=2))
        return 0
    table = Table(title="lorapipe plugins (entry points in 'lorapipe.plugins')")
    for column in ("plugin", "distribution", "version", "hooks", "status"):
        table.add_column(column, overflow="fold")
    for info in infos:
        hooks = ", ".join(h.removeprefix("lorapipe_register_") for h in info.hooks)
        status = (
            "[yellow]disabled[/]"
            if info.disabled
            else "[red]failed[/]"
            if info.error
            else "[green]loaded[/]"
        )
        table.add_row(info.name, info.distribution or "?", info.version or "?", hooks, status)
    console.print(table)
    for info in infos:
        if info.error:
            console.print(
                f"[red]failed to load[/] {info.name} ({info.module}): {escape(info.error)}",
                soft_wrap=True,
            )
    return 0


def cmd_components(args: argparse.Namespace) -> int:
    from lorapipe.registry import HOOKS, PLURALS, get_registry

    registry = get_registry()
    kinds = list(HOOKS)
    if args.kind:
        wanted = args.kind.replace("-", "_")
        matches = [k for k in kinds if wanted in (k, PLURALS[k])]
        if not matches:
            raise UserError(f"unknown component kind '{args.kind}'. Kinds: {', '.join(kinds)}")
        kinds = matches
    for kind in kinds:
        console.print(f"[bold]{PLURALS[kind]}[/]")
        for name, cls in zip(registry.names(kind), registry.classes(kind), strict=True):
            doc = (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""
            provider = escape(registry.provider(kind, name))
            console.print(f"  {name:<16} {escape(doc)}  [dim]({provider})[/]", soft_wrap=True)
    return 0


def cmd_stage(args: argparse.Namespace) -> int:
    from lorapipe.context import RunContext
    from lorapipe.pipeline import run_one_stage
    from lorapipe.plan import load_plan

    ctx = RunContext(
        load_plan(args.config, args.overrides),
        resume=getattr(args, "resume", False),
        allow_config_change=getattr(args, "allow_config_change", False),
        config_file=Path(args.config),
    )
    args.output_dir = ctx.paths.root  # for the message if the disk fills up
    run_one_stage(ctx, args.command)
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    from lorapipe.context import RunContext
    from lorapipe.data.inspect import show_samples
    from lorapipe.plan import load_plan

    if args.count < 1 or args.start < 0:
        raise UserError("--count must be at least 1 and --start at least 0")
    ctx = RunContext(load_plan(args.config, args.overrides))
    data = ctx.config.data
    show_samples(ctx.paths, console, split=args.split, count=args.count, start=args.start,
                 ids=args.ids, trust_remote_code=ctx.config.model.trust_remote_code,
                 train_on=data.train_on, train_on_inputs=data.train_on_inputs,
                 train_reasoning=data.train_reasoning)
    return 0


def cmd_chat(args: argparse.Namespace) -> int:
    from lorapipe.chat import (
        HELP,
        ChatSession,
        Sampling,
        interact,
        load_backend,
        load_tools,
        open_run,
    )

    if args.max_new_tokens < 1 or args.temperature < 0 or not 0 < args.top_p <= 1 \
            or args.top_k < 0:
        raise UserError("--max-new-tokens must be at least 1, --temperature at least 0, "
                        "--top-p in (0, 1] and --top-k at least 0")
    tools = load_tools(args.tools) if args.tools is not None else None
    ctx = open_run(args.run)
    sampling = Sampling(args.max_new_tokens, args.temperature, args.top_p, args.top_k,
                        args.seed)
    backend = load_backend(ctx, base=args.base, gguf=args.gguf, sampling=sampling,
                           tools=tools)
    session = ChatSession(backend, system=args.system, tools=tools)

    def write(text: str) -> None:
        sys.stdout.write(text)
        sys.stdout.flush()

    if args.prompt is not None:
        session.ask(args.prompt, write)
        write("\n")
        return 0
    with contextlib.suppress(ImportError):
        import readline  # noqa: F401 - line editing and history for input()
    how = "greedy" if args.temperature == 0 else f"temperature {args.temperature}"
    if tools is not None:
        how += ", tools: " + ", ".join(tool["function"]["name"] for tool in tools)
    console.print(f"[bold]{escape(backend.label)}[/] from {escape(str(ctx.paths.root))}, "
                  f"{escape(how)}\n[dim]{escape(HELP)}[/]")
    interact(session, input, write)
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from lorapipe.report.page import write_report

    args.output_dir = Path(args.run_dir)  # for the message if the disk fills up
    path = write_report(args.output_dir)
    console.print(f"[green]✓[/] wrote {escape(str(path))}", soft_wrap=True)
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from lorapipe.context import RunContext
    from lorapipe.pipeline import run_pipeline
    from lorapipe.plan import load_plan
    from lorapipe.summary import print_run_summary

    if args.resume and args.overwrite:
        raise UserError("--resume and --overwrite contradict each other; pick one")
    ctx = RunContext(load_plan(args.config, args.overrides), resume=args.resume,
                     allow_config_change=args.allow_config_change, config_file=Path(args.config))
    args.output_dir = ctx.paths.root  # for the message if the disk fills up
    summaries = run_pipeline(ctx, overwrite=args.overwrite)
    print_run_summary(summaries, ctx.paths, console)
    return 0


COMMANDS = {
    "run": cmd_run,
    "validate": cmd_validate,
    "plugins": cmd_plugins,
    "components": cmd_components,
    "inspect": cmd_inspect,
    "report": cmd_report,
    "chat": cmd_chat,
    **{verb: cmd_stage for verb in STAGE_VERBS},
}


def _terminated(signum: int, frame: object) -> None:
    """SIGTERM (a scheduler, ``kill``) outside a stage stops like Ctrl-C, exit code 130.
    During a stage the pipeline's own handler records it in run.json first."""
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    quiet_misleading_messages()
    # Our stages show their own progress; the libraries' per-file bars only add noise.
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _terminated) if in_main_thread else None
    try:
        return COMMANDS[args.command](args)
    except UserError as err:
        if args.debug:
            traceback.print_exc()
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as err:
        message = machine_error(err, getattr(args, "output_dir", None))
        if message and not args.debug:
            print(f"error: {message}", file=sys.stderr)
            return 1
        traceback.print_exc()
        print("lorapipe failed: the run stopped on the error above", file=sys.stderr)
        return 1
    finally:
        if in_main_thread:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())

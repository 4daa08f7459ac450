"""Command line: `prefopt run | list | bench | report`.

Every user-facing error is one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from prefopt.errors import PrefoptError
from prefopt.training.config import RunConfig, format_options

EPILOG_RUN = """\
options are key=value pairs after the flags (or --key value), e.g.
  prefopt run --algo dpo steps=100 lr=1e-4 beta=0.2 adapter=qlora
  prefopt run --algo dpo --learning_rate 1e-4 --num_train_epochs 1   (trl's names, read as lr and epochs)
precedence: defaults < --config FILE.yaml < flags < key=value.
Each algorithm's own options: prefopt list --options

run options (key=default):
{options}
"""


def _parser() -> argparse.ArgumentParser:
    from prefopt import __version__

    parser = argparse.ArgumentParser(
        prog="prefopt", description="Preference optimization for language models."
    )
    parser.add_argument("--version", action="version", version=f"prefopt {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    run = sub.add_parser(
        "run",
        help="train one algorithm",
        description="Train a policy with one registered algorithm.",
        epilog=EPILOG_RUN.format(options=format_options(RunConfig)),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    run.add_argument("--algo", help="algorithm name (see `prefopt list`); default dpo")
    run.add_argument("--model", help="hub id, local HF folder, .gguf file; default: bundled smollm2-135m-instruct")
    run.add_argument("--data", help="data file (.jsonl .json .parquet .csv), a save_to_disk folder, builtin:<task>, or a hub dataset")
    run.add_argument("--config", metavar="FILE.yaml", help="YAML file of option: value")
    run.add_argument("--output-dir", help="where the run is written; default runs/<algo>-<date>-<time>")
    run.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run from its last checkpoint")
    run.add_argument("--num-processes", type=int, metavar="N",
                     help="data-parallel over N processes (GPUs, or CPU processes over gloo), launched through "
                     "accelerate; same results as one process, faster")
    run.add_argument("--fsdp", action="store_true",
                     help="with --num-processes: shard parameters, gradients and optimizer state (FSDP2) instead "
                     "of a whole model per process")
    run.add_argument("options", nargs="*", metavar="key=value",
                     help="any run or algorithm option; --key value works too, and Hugging Face / trl names "
                     "(learning_rate, per_device_train_batch_size, num_train_epochs, ...) are read as prefopt's")

    lister = sub.add_parser("list", help="list registered algorithms", description="List registered algorithms.")
    lister.add_argument("--options", action="store_true", help="also show each algorithm's options and defaults")

    bench = sub.add_parser(
        "bench",
        help="run a benchmark suite (algorithms x seeds x tasks) and write its report",
        description="Train every algorithm of a suite on the same policy, data and budget, evaluate each against "
        "the starting model, and write results/<suite>/results.csv + report.md + report.html. "
        "Cells already in the CSV are skipped, so a killed benchmark resumes.",
    )
    bench.add_argument("--suite", default="benchmarks/quick.yaml", help="suite file (default benchmarks/quick.yaml)")
    bench.add_argument("--results", metavar="DIR", help="results folder (default results/<suite name>)")
    bench.add_argument("--work-dir", metavar="DIR", help="run folders and cached data (default runs/bench/<suite name>)")
    bench.add_argument("--algos", help="comma-separated subset of the suite's algorithms")
    bench.add_argument("--restart", action="store_true", help="forget earlier results of this suite and start over")

    report = sub.add_parser("report", help="re-render a benchmark report from its CSV",
                            description="Render report.md, report.html and plots from a results.csv alone.")
    report.add_argument("source", help="a results folder (holding results.csv) or a CSV file")
    report.add_argument("--out", metavar="DIR", help="where to write the report (default: beside the CSV)")
    return parser


def cmd_list(show_options: bool = False) -> int:
    from prefopt.core.registry import discover

    found = discover()
    rows = []
    for name in sorted(found):
        entries = found[name]
        if len(entries) > 1:
            providers = ", ".join(e.package for e in entries)
            rows.append((name, providers, f"error: registered more than once ({providers})"))
        else:
            e = entries[0]
            rows.append((name, e.package, e.description))
    width_name = max([len(r[0]) for r in rows] + [9])
    width_pkg = max([len(r[1]) for r in rows] + [7])
    print(f"{'ALGORITHM':<{width_name}}  {'PACKAGE':<{width_pkg}}  DESCRIPTION")
    for name, package, description in rows:
        print(f"{name:<{width_name}}  {package:<{width_pkg}}  {description}")
        entries = found[name]
        if show_options and len(entries) == 1 and entries[0].cls is not None:
            print(format_options(entries[0].cls.Config, indent=" " * 4))
    return 0


def cmd_bench(args) -> int:
    from prefopt.bench.runner import run_suite

    only = [a for a in (args.algos or "").split(",") if a] or None
    outcome = run_suite(args.suite, args.results, args.work_dir, only=only, restart=args.restart)
    print(f"ran {outcome['ran']} cells in {outcome['seconds'] / 60:.1f} min; results: {outcome['results']}")
    for kind, path in outcome["report"].items():
        if kind in ("md", "html"):
            print(f"report ({kind}): {path}")
    for cell, reason in outcome["failures"]:
        print(f"prefopt: error: {cell.task}/{cell.algo}/seed{cell.seed}: {reason}", file=sys.stderr)
    return 2 if outcome["failures"] else 0


def cmd_report(args) -> int:
    from prefopt.bench.report import render

    written = render(args.source, args.out)
    for kind in ("md", "html"):
        print(f"report ({kind}): {written[kind]}")
    return 0


def _resolve_run_options(args) -> tuple[str, dict, Path | None]:
    from prefopt.training.config import parse_overrides, read_yaml

    if args.resume:
        given = [args.algo, args.model, args.data, args.config, args.output_dir] + list(args.options)
        if any(v for v in given):
            raise PrefoptError("--resume continues with the run's saved config; give no other options")
        resume_dir = Path(args.resume)
        config_file = resume_dir / "config.yaml"
        if not config_file.is_file():
            raise PrefoptError(f"cannot resume: '{resume_dir}' holds no run (no config.yaml)")
        values = read_yaml(str(config_file))
        values.pop("output_dir", None)
        return str(values.pop("algo", "dpo")), values, resume_dir

    values = read_yaml(args.config) if args.config else {}
    algo = args.algo or values.pop("algo", None) or "dpo"
    values.pop("algo", None)
    for key in ("model", "data", "output_dir"):
        flag = getattr(args, key)
        if flag is not None:
            values[key] = flag
    values.update(parse_overrides(args.options))
    return algo, values, None


def cmd_run(args, argv: list[str] | None = None) -> int:
    from prefopt.core import registry
    from prefopt.training import distributed
    from prefopt.training.config import split_options

    wanted = args.num_processes
    relaunch = wanted is not None and wanted > 1 and distributed.launched_world_size() == 1
    dist = distributed.Context() if relaunch else distributed.context()  # a launched process joins its group here
    with dist.agree():  # a bad option fails on every process at once, reported once
        algo_name, values, resume_dir = _resolve_run_options(args)
        algo_cls = registry.get(algo_name)
        source = str(resume_dir / "config.yaml") if resume_dir else "options"
        run, algo_config = split_options(values, algo_cls.Config, source, processes=wanted if relaunch else dist.world)
        if relaunch and getattr(algo_cls, "online", False):
            raise PrefoptError(f"{algo_name} is an online method and runs in one process; drop --num-processes")
        if wanted is not None and not relaunch and wanted != dist.world:
            raise PrefoptError(f"--num-processes {wanted} inside a launch of {dist.world} process(es)")
        if args.fsdp and not relaunch:
            raise PrefoptError("--fsdp needs --num-processes N (N >= 2); under accelerate launch use --use_fsdp")
    if relaunch:  # the same command in N processes; they write and print everything but their errors
        rest = [a for a in distributed.strip_flag(list(argv or sys.argv[1:]), "--num-processes") if a != "--fsdp"]
        # refuses first, before starting any process, the settings the processes would refuse
        return distributed.launch(wanted, rest, fsdp=args.fsdp, global_batch=run.batch_size * run.grad_accum)

    from prefopt.training.runner import train

    summary = train(algo_name, algo_cls(algo_config), run, resume_dir=resume_dir)
    if dist.is_main:
        _print_summary(summary)
    return 0


def _print_summary(summary: dict) -> None:
    before, after = summary["eval_before"], summary["eval_after"]
    print(f"trained {summary['algo']} for {summary['steps']} steps in {summary['seconds_total']:.0f} s "
          f"({summary['seconds_per_step_median']:.2f} s/step median)")
    if "eval_pref_accuracy" in after:
        print(f"held-out preference accuracy: {before['eval_pref_accuracy']:.3f} -> {after['eval_pref_accuracy']:.3f} "
              f"({summary['eval_pairs']} pairs)")
    if "eval_reward" in after:
        kl = f", KL to reference (k3) {after['eval_kl_k3']:.3f}" if "eval_kl_k3" in after else ""  # none without one
        print(f"held-out reward of samples: {before.get('eval_reward', float('nan')):.3f} -> {after['eval_reward']:.3f}"
              f"{kl} ({summary['eval_examples']} prompts)")
    trunc = summary["truncation"]
    if trunc.get("truncated_prompts") or trunc.get("truncated_responses"):
        print(f"truncated: {trunc['truncated_prompts']} prompts, {trunc['truncated_responses']} responses "
              f"of {trunc['rows']} rows")
    if trunc.get("dropped_prompts"):
        print(f"left out: {trunc['dropped_prompts']} rows whose prompt is longer than max_length")
    for kind, path in summary["outputs"].items():
        print(f"{kind}: {path}")
    print(f"run folder: {summary['output_dir']}")


def main(argv: list[str] | None = None) -> int:
    code = _main(argv)
    distributed = sys.modules.get("prefopt.training.distributed")  # loaded by runs only
    if distributed is not None:
        distributed.end_worker(code)  # a launched process ends here (see end_worker); others return
    return code


RUN_VALUE_FLAGS = {"--algo", "--model", "--data", "--config", "--output-dir", "--resume", "--num-processes"}
RUN_SWITCH_FLAGS = {"--fsdp", "--help", "-h"}


def _hf_flags(argv: list[str]) -> list[str]:
    """`prefopt run` arguments with flags that are not prefopt's own (--learning_rate 1e-5) as key=value."""
    from prefopt.training.aliases import flags_to_options

    command = next((i for i, token in enumerate(argv) if not token.startswith("-")), None)
    if command is None or argv[command] != "run":
        return argv
    at = command + 1
    return argv[:at] + flags_to_options(argv[at:], RUN_VALUE_FLAGS, RUN_SWITCH_FLAGS)


def _main(argv: list[str] | None) -> int:
    parser = _parser()
    argv = _hf_flags(list(sys.argv[1:] if argv is None else argv))
    # key=value options may come before or after the flags
    args, extra = parser.parse_known_args(argv)
    stray = [a for a in extra if a.startswith("-") or "=" not in a or args.command != "run"]
    if stray:
        parser.error(f"unrecognized arguments: {' '.join(stray)}")
    if extra:
        args.options = list(args.options) + extra
    try:
        if args.command == "run":
            return cmd_run(args, argv)
        if args.command == "list":
            return cmd_list(args.options)
        if args.command == "bench":
            return cmd_bench(args)
        if args.command == "report":
            return cmd_report(args)
        parser.print_help()
        return 0
    except PrefoptError as exc:
        distributed = sys.modules.get("prefopt.training.distributed")  # loaded by runs only
        if distributed is not None:
            distributed.report_error(exc)  # once per launch, not once per process
        else:
            print(f"prefopt: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("prefopt: interrupted", file=sys.stderr)
        return 130
    finally:
        distributed = sys.modules.get("prefopt.training.distributed")
        if distributed is not None:
            distributed.shutdown()


if __name__ == "__main__":
    sys.exit(main())

"""Command line: `prefopt run | list`.

Every user-facing error is one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from prefopt.config import RunConfig, format_options
from prefopt.errors import PrefoptError

EPILOG_RUN = """\
options are key=value pairs after the flags, e.g.
  prefopt run --algo dpo steps=100 lr=1e-4 beta=0.2 adapter=qlora
precedence: defaults < --config FILE.yaml < flags < key=value.
Each algorithm's own options: prefopt list --options

run options (key=default):
{options}
"""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="prefopt", description="Preference optimization for language models."
    )
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
    run.add_argument("options", nargs="*", metavar="key=value", help="any run or algorithm option")

    lister = sub.add_parser("list", help="list registered algorithms", description="List registered algorithms.")
    lister.add_argument("--options", action="store_true", help="also show each algorithm's options and defaults")
    return parser


def cmd_list(show_options: bool = False) -> int:
    from prefopt.registry import discover

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


def _resolve_run_options(args) -> tuple[str, dict, Path | None]:
    from prefopt.config import parse_overrides, read_yaml

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


def cmd_run(args) -> int:
    from prefopt import registry
    from prefopt.config import split_options

    algo_name, values, resume_dir = _resolve_run_options(args)
    algo_cls = registry.get(algo_name)
    source = str(resume_dir / "config.yaml") if resume_dir else "options"
    run, algo_config = split_options(values, algo_cls.Config, source)

    from prefopt.train import train

    summary = train(algo_name, algo_cls(algo_config), run, resume_dir=resume_dir)
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
        print(f"held-out reward of samples: {before.get('eval_reward', float('nan')):.3f} -> {after['eval_reward']:.3f}, "
              f"KL to reference (k3) {after.get('eval_kl_k3', float('nan')):.3f} ({summary.get('eval_prompts', 0)} prompts)")
    trunc = summary["truncation"]
    if trunc.get("truncated_prompts") or trunc.get("truncated_responses"):
        print(f"truncated: {trunc['truncated_prompts']} prompts, {trunc['truncated_responses']} responses "
              f"of {trunc['rows']} rows")
    for kind, path in summary["outputs"].items():
        print(f"{kind}: {path}")
    print(f"run folder: {summary['output_dir']}")


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    # key=value options may come before or after the flags
    args, extra = parser.parse_known_args(argv)
    stray = [a for a in extra if a.startswith("-") or "=" not in a or args.command != "run"]
    if stray:
        parser.error(f"unrecognized arguments: {' '.join(stray)}")
    if extra:
        args.options = list(args.options) + extra
    try:
        if args.command == "run":
            return cmd_run(args)
        if args.command == "list":
            return cmd_list(args.options)
        parser.print_help()
        return 0
    except PrefoptError as exc:
        print(f"prefopt: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("prefopt: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

"""The end every small benchmark script shares: its table, the command and the machine under it, printed and
(with an output folder) written as `<stem>.md` beside the full record `<stem>.json`."""

from __future__ import annotations

from pathlib import Path

from prefopt.io import atomic_write_json, atomic_write_text


def finish(result: dict, lines: list[str], out: str | None, stem: str) -> str:
    """Append `result`'s command and machine (its `provenance`) to the table `lines`; print; write if `out`."""
    p = result["provenance"]
    lines = [*lines, "", f"`{result['command']}`", "",
             f"Machine: {p['cpu_model']}, {p['cpu_count']} CPUs; torch {p['versions']['torch']}; git {p['git']}", ""]
    text = "\n".join(lines)
    print(text)
    if out:
        atomic_write_json(Path(out) / f"{stem}.json", result)
        atomic_write_text(Path(out) / f"{stem}.md", text)
    return text

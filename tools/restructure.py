#!/usr/bin/env python3
"""Move the GLUE harness's modules into the package `harness/` and rewrite every reference to them (issue 28, point 7:
a root that shows the architecture — the entry scripts at the top, the harness one package beside gradnorm_rank/,
search/ and analysis/).

    python3 tools/restructure.py          # from the repository root, on a clean tree; then `git diff` and commit

Idempotent: it moves what is still at the root and rewrites what still names the old layout, so it can be re-run
after merging (or on) a branch written before the move. What it does:

- `git mv X.py harness/X.py` for each module in HARNESS (refused if both exist: that needs a person); writes
  `harness/__init__.py` if it is missing. A root module that is neither in HARNESS nor in ENTRY is named.
- Python (every tracked *.py): `from X import` -> `from harness.X import`; `import X [as Y]` -> `from harness import X
  [as Y]` (so `X.attr` uses stand as written); `patch("X.attr")` / `monkeypatch.setattr("X.attr", ...)` ->
  "harness.X.attr"; `import_module("X")` -> "harness.X"; `find_spec("X")` -> "harness"; `python -m X` ->
  `python -m harness.X`. Then ruff sorts the imports of the files it changed.
- Shell scripts and Markdown (not the recorded outputs under benchmarks/results/): `python -m X` as above; a path
  `X.py` -> `harness/X.py`; a link to X.py (any relative form) -> to harness/X.py; a link to a heading by its anchor
  before the move -> its anchor now.
- pyproject.toml's comments, and docs/architecture.md's map of the root.
Every remaining `import X` / `from X import` line it could not rewrite is printed at the end for a person to fix.
"""

import os
import re
import subprocess
import sys
from pathlib import Path

PACKAGE = "harness"
HARNESS = ("adapters", "arguments", "checkpoints", "eva_init", "eval_log", "glue_data", "glue_tasks", "plan",
           "planted_task", "rank_pattern", "records", "run_folder")
ENTRY = ("run_glue_peft", "glora_callback", "hpo", "compare_runs", "allocation_quality")  # stay at the top
RECORDED = ("benchmarks/results/",)  # outputs kept as they were printed: never rewritten
NAME = "|".join(HARNESS)

INIT = '''"""The GLUE harness's modules, behind the entry scripts at the repository root (run_glue_peft.py, hpo.py,
compare_runs.py, allocation_quality.py): every flag (arguments), the resolved numbers of a run (plan), the tasks and
their data (glue_tasks, glue_data, planted_task), the peft configs and AdaLoRA's callback (adapters), EVA's
initialisation (eva_init), fixed per-matrix ranks (rank_pattern), the run folder, its checkpoints and its records
(run_folder, checkpoints, records) and the evaluation log (eval_log). Imported as `from harness.records import ...`
from the root. GLoRA itself is the package gradnorm_rank, which imports nothing from here. docs/architecture.md."""
'''

PY_RULES = [
    (re.compile(rf"^(\s*)from ({NAME})( import\b)", re.M), rf"\1from {PACKAGE}.\2\3"),
    (re.compile(rf"^(\s*)import ({NAME})(\s+as\s+\w+)?[ \t]*(?=#|$)", re.M), rf"\1from {PACKAGE} import \2\3"),
    (re.compile(rf"\b(patch|setattr|delattr)\((\s*)([\"'])({NAME})\."), rf"\1(\2\3{PACKAGE}.\4."),
    (re.compile(rf"\bimport_module\((\s*)([\"'])({NAME})\2"), rf"import_module(\1\2{PACKAGE}.\3\2"),
    (re.compile(rf"\bfind_spec\((\s*)([\"'])({NAME})\2"), rf"find_spec(\1\2{PACKAGE}\2"),
]
MODULE_RUN = (re.compile(rf"(\bpython3?(?:\s+-\w+)*\s+-m\s+)({NAME})\b(?!\.)"), rf"\1{PACKAGE}.\2")
PATH = (re.compile(rf"(?<![\w/.\-])({NAME})\.py\b"), rf"{PACKAGE}/\1.py")
LINK = re.compile(r"(\]\()([^)\s#]+\.py)(?=[)#])")
UNPATH = re.compile(rf"{PACKAGE}/({NAME})\.py\b")
HEADING = re.compile(r"^(#{1,6} +)(.+?) *$", re.M)
LEFT = re.compile(rf"^\s*(?:from ({NAME})\b|import [\w ,]*\b({NAME})\b)", re.M)

ROOT_MAP = '''## The root

The entry scripts sit at the top; every folder beside them is one package, run from the root (`python3 -m
benchmarks.step_time`, `python3 -m data.make_planted`). Below, `arguments.parse_args`, `records.RunArgs` and the
like name the harness's modules (`harness/arguments.py`, `harness/records.py`, ...); `run_glue_peft.*` is the entry
script's.

```
run_glue_peft.py        the command: one run of LoRA, AdaLoRA, GLoRA or EVA on a GLUE task or a planting
glora_callback.py       GLoRA for your own trainer: the callback, and the Trainer subclass
hpo.py                  a hyper-parameter search, then the final runs with the best values
compare_runs.py         the report over finished runs: tables, verdicts, figures
allocation_quality.py   where each run put its ranks, against a planting's ground truth
harness/                run_glue_peft.py's modules: flags, plan, tasks and data, adapters, checkpoints, records
gradnorm_rank/          GLoRA, the installable method (pip install .); imports nothing from the harness
search/                 hpo.py's pieces: space, trials, study and pruning, reports
analysis/               compare_runs.py's pieces: runs, comparability, statistics, tables, figures
benchmarks/             step time, data pipeline, allocation; the behaviour check
launch/  configs/       launchers and studies; presets and search spaces
data/                   the SST-2 sample, the planted-task generator
tests/  docs/
```

## The path of one run

'''

PYPROJECT = [  # (old, new): comments that describe the layout
    ("(run_glue_peft.py, hpo.py, compare_runs.py and their modules)",
     "(run_glue_peft.py, hpo.py, compare_runs.py and the package harness/)"),
    ("# the repository root: the project's modules, gradnorm_rank and benchmarks.*",
     "# the repository root: harness, gradnorm_rank, search, analysis and benchmarks.*"),
]


def run(*cmd: str) -> str:
    return subprocess.run(cmd, check=True, capture_output=True, text=True).stdout


def tracked(*patterns: str) -> list[Path]:
    return [Path(p) for p in run("git", "ls-files", "--", *patterns).splitlines()
            if Path(p).is_file() and not p.startswith(RECORDED)]


def move_modules() -> None:
    """git mv each harness module still at the root; harness/__init__.py if missing."""
    Path(PACKAGE).mkdir(exist_ok=True)
    for name in HARNESS:
        old, new = Path(f"{name}.py"), Path(PACKAGE, f"{name}.py")
        if old.exists() and new.exists():
            sys.exit(f"restructure: both {old} and {new} exist: merge them by hand, then re-run")
        if old.exists():
            run("git", "mv", str(old), str(new))
    init = Path(PACKAGE, "__init__.py")
    if not init.exists():
        init.write_text(INIT)
        run("git", "add", str(init))
    unknown = sorted(p.stem for p in Path(".").glob("*.py") if p.stem not in ENTRY + HARNESS)
    if unknown:
        print(f"restructure: root modules in neither HARNESS nor ENTRY (decide, then re-run): {unknown}")


def rewrite(path: Path, rules) -> bool:
    text = path.read_text()
    new = text
    for pattern, repl in rules:
        new = pattern.sub(repl, new)
    if new != text:
        path.write_text(new)
    return new != text


def anchor(heading: str) -> str:
    """GitHub's anchor of a heading (as tests/test_docs_links.py computes it)."""
    return re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")


def relink(page: Path, match: re.Match) -> str:
    """A link to a harness module at the root, from wherever the page is, now leads into harness/."""
    target = Path(os.path.normpath(page.parent / match.group(2)))
    if target.parent == Path(".") and target.stem in HARNESS:
        return match.group(1) + os.path.relpath(Path(PACKAGE, target.name), page.parent)
    return match.group(0)


def rewrite_markdown(pages: list[Path]) -> list[Path]:
    """Paths, links and `python -m` in every page; then links to a heading by its anchor before the move (a heading
    that names harness/X.py was X.py's)."""
    changed = []
    for page in pages:
        text = page.read_text()
        new = LINK.sub(lambda m: relink(page, m), text)
        new = MODULE_RUN[0].sub(MODULE_RUN[1], new)
        new = PATH[0].sub(PATH[1], new)
        if new != text:
            page.write_text(new)
            changed.append(page)
    renamed = {(page.resolve(), anchor(UNPATH.sub(r"\1.py", heading))): anchor(heading)  # (page, old) -> new
               for page in pages for _, heading in HEADING.findall(page.read_text())}
    for page in pages:
        def moved(m: re.Match) -> str:
            file = (page.parent / m.group(2)).resolve() if m.group(2) else page.resolve()
            return m.group(1) + m.group(2) + "#" + renamed.get((file, m.group(3)), m.group(3))
        text = page.read_text()
        new = re.sub(r"(\]\()([^)\s#]*)#([^)\s]+)", moved, text)
        if new != text:
            page.write_text(new)
            changed.append(page)
    return changed


def map_the_root() -> bool:
    page = Path("docs/architecture.md")
    text = page.read_text()
    if "## The root" in text:
        return False
    title, _, rest = text.partition("\n\n")
    page.write_text(f"{title}\n\n{ROOT_MAP}{rest}")
    return True


def main() -> None:
    if not (Path("pyproject.toml").is_file() and Path(".git").exists()):
        sys.exit("restructure: run it from the repository root")
    move_modules()
    python = tracked("*.py")
    changed_py = [p for p in python if rewrite(p, [*PY_RULES, MODULE_RUN])]
    changed = changed_py + [p for p in tracked("*.sh") if rewrite(p, [MODULE_RUN, PATH])]
    changed += rewrite_markdown(tracked("*.md"))
    changed += [Path("pyproject.toml")] if rewrite(Path("pyproject.toml"), [
        (re.compile(re.escape(old)), new) for old, new in PYPROJECT]) else []
    changed += [Path("docs/architecture.md")] if map_the_root() else []
    if changed_py:
        subprocess.run([sys.executable, "-m", "ruff", "check", "--quiet", "--select", "I", "--fix",
                        *map(str, changed_py)], check=False)
    print(f"restructure: {len(set(changed))} files rewritten")
    for path in python:
        for match in LEFT.finditer(path.read_text()):
            print(f"restructure: left for a person: {path}: {match.group(0).strip()}")


if __name__ == "__main__":
    main()

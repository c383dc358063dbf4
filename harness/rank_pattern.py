"""A fixed per-matrix rank pattern for LoRA (`--rank_pattern FILE`): the static-allocation arm.

The file is JSON, either a run's `ranks.json` (its per-module `final_rank` is replayed, so a GLoRA or AdaLoRA
allocation can be trained from step 0) or a plain `{module path: rank}` mapping. Every adapted matrix must be named
exactly once, with an integer rank >= 1. The layers get GLoRA's scaling rule: every matrix keeps the uniform start's
scaling lora_alpha / lora_r whatever its rank (peft's `alpha_pattern` = scaling x rank), so a replayed allocation
differs from the GLoRA run only in when the ranks were set.
"""

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class RankPattern:
    """A validated pattern: ranks in the order of the adapted matrices, and the file it came from."""

    path: str
    sha256: str
    source: str  # "ranks.json" (a run's record, final_rank replayed) or "mapping"
    ranks: tuple  # ((module path, rank), ...) in target order

    def record(self) -> dict:
        """What run_args.json (its resolved plan) and all_results.json say about the pattern."""
        return {"path": self.path, "sha256": self.sha256, "source": self.source}


def read_rank_pattern_file(path) -> tuple:
    """({module: rank}, source, sha256) from FILE, with every format error named by the file (and module)."""
    flag = f"--rank_pattern {path}"
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"{flag}: no such file.")
    raw = file.read_bytes()
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as error:
        raise ValueError(f"{flag}: not a JSON file ({error}); expected a run's ranks.json or {{module: rank}}.") from None
    if not isinstance(data, dict) or not data:
        raise ValueError(f"{flag}: expected a JSON object (a run's ranks.json or {{module: rank}}), got "
                         f"{'an empty object' if data == {} else type(data).__name__}.")
    if "modules" in data:  # a run's ranks.json
        modules = data["modules"]
        if not isinstance(modules, dict) or not modules:
            raise ValueError(f"{flag}: its 'modules' is not a non-empty object of module records (a ranks.json's).")
        ranks, source = {}, "ranks.json"
        for name, entry in modules.items():
            if not isinstance(entry, dict) or "final_rank" not in entry:
                raise ValueError(f"{flag}: module {name} has no final_rank (a ranks.json module record has one).")
            ranks[name] = entry["final_rank"]
    else:
        ranks, source = data, "mapping"
    for name, rank in ranks.items():
        if isinstance(rank, bool) or not isinstance(rank, int):
            raise ValueError(f"{flag}: module {name} has rank {rank!r}; ranks are integers >= 1.")
        if rank < 1:
            raise ValueError(f"{flag}: module {name} has rank {rank}; ranks are >= 1 (peft cannot hold rank 0).")
    return ranks, source, hashlib.sha256(raw).hexdigest()


def resolve_rank_pattern(path, targets, unit_costs, *, rank_budget=None, param_budget=None) -> RankPattern:
    """The pattern of FILE checked against this model's adapted matrices (`targets`, with `unit_costs` d_in + d_out
    each): every target named once, nothing else, and the totals within `rank_budget` / `param_budget` (the ones
    the user gave; None: not checked)."""
    ranks, source, sha = read_rank_pattern_file(path)
    flag = f"--rank_pattern {path}"
    unknown = [name for name in ranks if name not in targets]
    if unknown:
        raise ValueError(f"{flag}: {unknown[0]} is not an adapted matrix of this model and --target_modules"
                         f"{f' (and {len(unknown) - 1} more)' if len(unknown) > 1 else ''}; adapted matrices are "
                         f"named like {targets[0]}.")
    missing = [name for name in targets if name not in ranks]
    if missing:
        raise ValueError(f"{flag}: no rank for {missing[0]}{f' (and {len(missing) - 1} more)' if len(missing) > 1 else ''}; "
                         f"the pattern must give every one of the {len(targets)} adapted matrices a rank.")
    total_rank = sum(ranks[name] for name in targets)
    total_params = sum(ranks[name] * cost for name, cost in zip(targets, unit_costs))
    if rank_budget is not None and total_rank > rank_budget:
        raise ValueError(f"{flag}: its ranks sum to {total_rank}, more than --rank_budget {rank_budget}.")
    if param_budget is not None and total_params > param_budget:
        raise ValueError(f"{flag}: its adapter parameters sum_k r_k (d_in + d_out) = {total_params} exceed "
                         f"--param_budget {param_budget}.")
    return RankPattern(path=str(path), sha256=sha, source=source, ranks=tuple((name, ranks[name]) for name in targets))

"""--rank_pattern (LoRA with fixed per-matrix ranks from step 0) and --arm (a run's label)."""

import hashlib
import json

import pytest
from conftest import trial_args
from peft import PeftModel
from transformers import AutoModelForSequenceClassification

import run_glue_peft
from harness.adapters import current_ranks, lora_layers
from harness.rank_pattern import resolve_rank_pattern

# tiny_bert: 2 layers x 6 matrices, hidden 32, intermediate 64: q/k/v/attention-output cost 64 per rank, ffn 96.
MATRICES = ["attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense",
            "intermediate.dense", "output.dense"]
TARGETS = [f"bert.encoder.layer.{layer}.{m}" for layer in range(2) for m in MATRICES]
COSTS = [64, 64, 64, 64, 96, 96] * 2


def hand_pattern():
    """Rank 1 everywhere but three matrices: 7 (query of layer 0), 5 (ffn_in of layer 1), 3 (ffn_out of layer 1)."""
    ranks = {name: 1 for name in TARGETS}
    ranks.update({TARGETS[0]: 7, TARGETS[10]: 5, TARGETS[11]: 3})
    return ranks


def run(model_dir, data_dir, method, out, *extra):
    return run_glue_peft.main(trial_args(model_dir, data_dir, "sst2", method, out, "--max_steps", "3", *extra))


def test_rank_pattern_builds_the_ranks_asked_and_counts_their_parameters(tiny_bert, glue_dir, tmp_path):
    pattern = tmp_path / "pattern.json"
    pattern.write_text(json.dumps(hand_pattern()))
    out = tmp_path / "out"
    results = run(tiny_bert, glue_dir("sst2"), "lora", out, "--rank_pattern", str(pattern))

    record = json.loads((out / "ranks.json").read_text())
    assert {name: m["initial_rank"] for name, m in record["modules"].items()} == hand_pattern()
    assert {name: m["final_rank"] for name, m in record["modules"].items()} == hand_pattern()
    # 7 x 64 + 5 x 96 + 3 x 96 + 1 x (64 x 7 + 96 x 2) over the other nine matrices = 448 + 480 + 288 + 640 = 1856
    expected = 7 * 64 + 5 * 96 + 3 * 96 + (64 * 7 + 96 * 2)
    assert expected == 1856
    assert results["adapter_params_start"] == results["adapter_params_after_allocation"] == expected
    assert results["trainable_params_adapter"] == expected
    assert results["final_rank_total"] == 7 + 5 + 3 + 9
    # The records name the pattern file and its hash; the arm label says it is a pattern arm.
    sha = hashlib.sha256(pattern.read_bytes()).hexdigest()
    assert results["rank_pattern"] == {"path": str(pattern), "sha256": sha, "source": "mapping"}
    assert results["arm"] == f"lora_pattern-{sha[:8]}"
    resolved = json.loads((out / "run_args.json").read_text())["resolved"]
    assert resolved["arm"] == results["arm"] and resolved["rank_pattern"]["sha256"] == sha

    # GLoRA's scaling rule: every layer keeps lora_alpha / lora_r (16 / 4) whatever its rank; the saved adapter
    # reloads with the same ranks and scalings.
    base = AutoModelForSequenceClassification.from_pretrained(tiny_bert, num_labels=2)
    reloaded = PeftModel.from_pretrained(base, out)
    assert current_ranks(reloaded) == hand_pattern()
    assert {layer.scaling["default"] for layer in lora_layers(reloaded).values()} == {4.0}


def test_replayed_ranks_json_reproduces_the_glora_runs_final_ranks(tiny_bert, glue_dir, tmp_path):
    data = glue_dir("sst2")
    run(tiny_bert, data, "glora", tmp_path / "glora", "--glora_warmup_steps", "2", "--budget_unit", "params")
    glora_final = {n: m["final_rank"] for n, m in json.loads((tmp_path / "glora" / "ranks.json").read_text())["modules"].items()}
    assert len(set(glora_final.values())) > 1  # the GLoRA run did move rank

    results = run(tiny_bert, data, "lora", tmp_path / "replay", "--rank_pattern", str(tmp_path / "glora" / "ranks.json"),
                  "--arm", "glora_replay")
    replay = json.loads((tmp_path / "replay" / "ranks.json").read_text())
    assert {n: m["initial_rank"] for n, m in replay["modules"].items()} == glora_final
    assert {n: m["final_rank"] for n, m in replay["modules"].items()} == glora_final
    assert results["arm"] == "glora_replay" and results["rank_pattern"]["source"] == "ranks.json"
    glora_results = json.loads((tmp_path / "glora" / "all_results.json").read_text())
    assert results["adapter_params_start"] == glora_results["adapter_params_after_allocation"]


def write(tmp_path, obj, raw=None):
    path = tmp_path / "p.json"
    path.write_bytes(raw) if raw is not None else path.write_text(json.dumps(obj))
    return path


@pytest.mark.parametrize("change, message", [
    (lambda r: {**r, "bert.pooler.dense": 2}, "bert.pooler.dense is not an adapted matrix"),
    (lambda r: {k: v for k, v in r.items() if k != TARGETS[4]}, f"no rank for {TARGETS[4]}"),
    (lambda r: {**r, TARGETS[3]: 0}, f"module {TARGETS[3]} has rank 0; ranks are >= 1"),
    (lambda r: {**r, TARGETS[3]: 2.5}, f"module {TARGETS[3]} has rank 2.5; ranks are integers"),
    (lambda r: {**r, TARGETS[3]: "2"}, f"module {TARGETS[3]} has rank '2'; ranks are integers"),
    (lambda r: {**r, TARGETS[3]: True}, f"module {TARGETS[3]} has rank True; ranks are integers"),
    (lambda r: [], "expected a JSON object"),
    (lambda r: {"modules": {TARGETS[0]: {"initial_rank": 2}}}, f"module {TARGETS[0]} has no final_rank"),
])
def test_bad_rank_pattern_is_refused_with_its_line(tmp_path, change, message):
    path = write(tmp_path, change(hand_pattern()))
    with pytest.raises((ValueError, FileNotFoundError), match="--rank_pattern .*p.json: ") as error:
        resolve_rank_pattern(path, TARGETS, COSTS)
    assert message in str(error.value) and "\n" not in str(error.value)


def test_rank_pattern_over_a_given_budget_is_refused(tmp_path):
    path = write(tmp_path, hand_pattern())  # sum of ranks 24, parameters 1856
    assert dict(resolve_rank_pattern(path, TARGETS, COSTS, rank_budget=24, param_budget=1856).ranks) == hand_pattern()
    with pytest.raises(ValueError, match="ranks sum to 24, more than --rank_budget 23"):
        resolve_rank_pattern(path, TARGETS, COSTS, rank_budget=23)
    with pytest.raises(ValueError, match=r"= 1856 exceed --param_budget 1855"):
        resolve_rank_pattern(path, TARGETS, COSTS, param_budget=1855)
    with pytest.raises(ValueError, match="not a JSON file"):
        resolve_rank_pattern(write(tmp_path, None, raw=b"\x89PNG\x00\x01"), TARGETS, COSTS)
    with pytest.raises(FileNotFoundError, match="--rank_pattern .*nope.json: no such file"):
        resolve_rank_pattern(tmp_path / "nope.json", TARGETS, COSTS)


def test_a_rank_pattern_run_records_the_patterns_total_as_its_budget_unless_a_budget_flag_caps_it(tmp_path):
    """A pattern above the default budget (lora_r 8 x 12 matrices = 96) is recorded at its own total, not at 96 beside
    uniform LoRA; a given --rank_budget / --param_budget is the recorded budget and the pattern is checked against it."""
    from harness.arguments import parse_args
    from harness.plan import resolve_plan

    path = write(tmp_path, {name: 10 for name in TARGETS})  # R_total 120; parameters 10 x (64 x 8 + 96 x 4) = 8960

    def plan(*flags):
        args = parse_args(["--task", "sst2", "--rank_pattern", str(path), "--max_steps", "4", *flags])
        return resolve_plan(args, TARGETS, COSTS, (), num_train_examples=64)

    default = plan()
    assert (default.rank_budget, default.param_budget, default.budget_label) == (120, None, "r120")
    assert plan("--rank_budget", "150").rank_budget == 150
    with pytest.raises(ValueError, match=r"^--rank_pattern .*: its ranks sum to 120, more than --rank_budget 119\.$"):
        plan("--rank_budget", "119")
    params = plan("--budget_unit", "params")
    assert (params.param_budget, params.rank_budget) == (8960, 96)  # R_total: the uniform start's, as every params run
    assert plan("--budget_unit", "params", "--param_budget", "9000").param_budget == 9000
    with pytest.raises(ValueError, match=r"= 8960 exceed --param_budget 8959\.$"):
        plan("--budget_unit", "params", "--param_budget", "8959")


def test_bad_rank_pattern_fails_before_anything_is_written(tiny_bert, glue_dir, tmp_path):
    pattern = write(tmp_path, {**hand_pattern(), TARGETS[2]: 0})
    out = tmp_path / "out"
    with pytest.raises(ValueError, match="has rank 0"):
        run(tiny_bert, glue_dir("sst2"), "lora", out, "--rank_pattern", str(pattern))
    assert not out.exists()
    with pytest.raises(ValueError, match="--rank_pattern .* has no effect with --method glora"):
        run(tiny_bert, glue_dir("sst2"), "glora", out, "--rank_pattern", str(write(tmp_path, hand_pattern())))
    with pytest.raises(ValueError, match="--arm 'a b'"):
        run(tiny_bert, glue_dir("sst2"), "lora", out, "--arm", "a b")


def test_default_arm_names_method_budget_unit_and_pattern(tiny_bert, glue_dir, tmp_path):
    data = glue_dir("sst2")
    assert run(tiny_bert, data, "glora", tmp_path / "a", "--budget_unit", "params")["arm"] == "glora_params"
    assert run(tiny_bert, data, "glora", tmp_path / "b")["arm"] == "glora"
    identity = json.loads((tmp_path / "b" / "run_args.json").read_text())
    assert identity["resolved"]["arm"] == "glora" and identity["peft"]["arm"] is None  # asked vs resolved

"""Issue 11's training-side fairness: Adam's step size on slices a resize adds, budgets in parameters, low budgets,
scaling parity between methods, and GLoRA's score normalisation."""

import json

import pytest
import torch
from conftest import Tiny, glora_plan, trial_args
from peft import LoraConfig, get_peft_model

import run_glue_peft
from gradnorm_rank import GradNormRank, LoopHost

LR, BETAS, EPS = 1e-3, (0.9, 0.999), 1e-8


def adam(model):
    return torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=LR, betas=BETAS, eps=EPS,
                             weight_decay=0.0)


def grown_run(adam_rule, warmup=1000, after=5):
    """Tiny LoRA (r 2 on `up` and `down`) trained `warmup` AdamW steps, resized to up 3 / down 1, then `after` steps.
    Returns, per step after the resize, the gradient and the update of `up`'s new B column, and `up`'s kept B."""
    torch.manual_seed(0)
    model = get_peft_model(Tiny(), LoraConfig(r=2, lora_alpha=4, target_modules=["up", "down"]))
    optimizer = adam(model)
    constant = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    glora = GradNormRank(model, glora_plan(4, 10**6, adam_rule=adam_rule))
    glora.attach(LoopHost(optimizer, constant, make_optimizer=lambda: adam(model),
                          make_scheduler=lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0)))
    data = torch.Generator().manual_seed(1)

    def step():
        x = torch.randn(16, 6, generator=data)
        loss = model(x).pow(2).mean() + (model(x) - 1).abs().mean()
        loss.backward()
        glora.host.optimizer.step()
        glora.after_optimizer_step()
        glora.host.optimizer.zero_grad()

    for _ in range(warmup):
        step()
    glora.rebuild(glora.resize({"up": 3, "down": 1}))
    layer = glora.layers["up"]
    trace = []
    for _ in range(after):
        b = layer.lora_B["default"].weight
        before = b.detach().clone()
        peek = torch.Generator().set_state(data.get_state())  # the batch `step` is about to draw, for its gradient
        x = torch.randn(16, 6, generator=peek)
        (model(x).pow(2).mean() + (model(x) - 1).abs().mean()).backward()
        grad = b.grad[:, 2].detach().clone()
        model.zero_grad()
        step()
        trace.append((grad, before[:, 2] - b.detach()[:, 2], b.detach()[:, :2].clone()))
    return trace


def fresh_adam_updates(grads):
    """The updates a fresh AdamW (zero moments, step count from 1) makes from these gradients."""
    m = v = torch.zeros_like(grads[0])
    updates = []
    for k, g in enumerate(grads, start=1):
        m = BETAS[0] * m + (1 - BETAS[0]) * g
        v = BETAS[1] * v + (1 - BETAS[1]) * g * g
        updates.append(LR * (m / (1 - BETAS[0] ** k)) / ((v / (1 - BETAS[1] ** k)).sqrt() + EPS))
    return updates


def update_ratios(trace):
    fresh = fresh_adam_updates([g for g, _, _ in trace])
    return [float(applied.norm() / expected.norm()) for (_, applied, _), expected in zip(trace, fresh)]


def test_grown_slice_steps_like_a_fresh_adam_and_kept_slices_are_unchanged():
    corrected, inherited = grown_run("slice_bias_correction"), grown_run("inherit_step")
    ratios = update_ratios(corrected)
    assert all(1 / 1.5 <= r <= 1.5 for r in ratios), ratios
    assert ratios == pytest.approx([1.0] * len(ratios), rel=1e-3)  # exact up to float rounding
    # The old rule (the ablation) is what the issue measured: bias correction never applies to the new slice.
    old = update_ratios(inherited)
    assert old[0] > 1.5, old
    # Kept slices take exactly the same step under both rules (later steps differ only because the new slice does).
    assert torch.equal(corrected[0][2], inherited[0][2])


# ---------------------------------------------------------------- budgets, low budgets, scaling (real runs)


def run(model_dir, data_dir, method, out, *extra):
    results = run_glue_peft.main(trial_args(model_dir, data_dir, "sst2", method, out, "--max_steps", "6", *extra))
    return results, json.loads((out / "ranks.json").read_text())


def test_glora_parameter_budget_is_spent_to_within_one_rank_unit(tiny_bert, glue_dir, tmp_path):
    results, record = run(tiny_bert, glue_dir("sst2"), "glora", tmp_path / "out", "--budget_unit", "params",
                          "--glora_warmup_steps", "3")
    modules = record["modules"].values()
    costs = [m["d_in"] + m["d_out"] for m in modules]
    assert sorted(set(costs)) == [64, 96]  # tiny BERT: attention 32 + 32, FFN 32 + 64 (or 64 + 32)
    budget = 4 * sum(costs)  # lora_r 4 x sum(d_in + d_out): what uniform LoRA spends
    assert results["param_budget"] == budget == results["adapter_params_start"]
    spent = sum(m["final_rank"] * (m["d_in"] + m["d_out"]) for m in modules)
    assert spent == results["adapter_params_after_allocation"]
    # apportion_parameters leaves unspent less than the unit of every matrix still below its continuous share (it
    # gives no unit past a share), so less than the largest unit.
    assert budget - max(costs) < spent <= budget
    assert len({m["final_rank"] for m in modules}) > 1  # it did reallocate
    assert results["adapter_params_effective"] <= spent


def test_adalora_parameter_budget_picks_the_closest_uniform_target(tiny_bert, glue_dir, tmp_path):
    out = tmp_path / "out"
    # 12 matrices, sum(d_in + d_out) = 8 x 64 + 4 x 96 = 896; 2,700 parameters is closest to target rank 3 (2,688).
    run(tiny_bert, glue_dir("sst2"), "adalora", out, "--budget_unit", "params", "--param_budget", "2700",
        "--tinit", "1", "--tfinal", "1", "--deltaT", "1")
    resolved = json.loads((out / "run_args.json").read_text())["resolved"]
    assert resolved["param_budget"] == 2700 and resolved["adalora"]["target_r"] == 3


@pytest.mark.parametrize("lora_r", [1, 2])
@pytest.mark.parametrize("method", ["lora", "adalora", "glora"])
def test_low_budgets_work_for_every_method(tiny_bert, glue_dir, tmp_path, method, lora_r):
    extra = {"adalora": ["--tinit", "1", "--tfinal", "1", "--deltaT", "1"], "glora": ["--glora_warmup_steps", "3"]}
    results, record = run(tiny_bert, glue_dir("sst2"), method, tmp_path / "out", "--lora_r", str(lora_r),
                          *extra.get(method, []))
    assert results["final_rank_total"] == results["rank_budget"] == lora_r * 12
    ranks = [m["final_rank"] for m in record["modules"].values()]
    assert min(ranks) >= (0 if method == "adalora" else 1)  # AdaLoRA may prune a matrix away; peft LoRA cannot
    if lora_r == 1 and method == "glora":  # the floor of 1 (peft cannot hold rank 0) leaves nothing to move
        assert ranks == [1] * 12


@pytest.mark.parametrize("parity, scaling", [("True", 16 / 4), ("False", 16 / 6)])
def test_adalora_scaling_parity(tiny_bert, glue_dir, tmp_path, parity, scaling):
    out = tmp_path / "out"
    _, record = run(tiny_bert, glue_dir("sst2"), "adalora", out, "--adalora_alpha_parity", parity,
                    "--tinit", "1", "--tfinal", "1", "--deltaT", "1")
    assert record["initial_scaling"] == pytest.approx(scaling)  # LoRA's alpha / r = 16 / 4; init_r = 6
    # What peft builds: AdaLoRA's forward scales by lora_alpha / ranknum (= init_r).
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["lora_alpha"] / config["init_r"] == pytest.approx(scaling)


# ---------------------------------------------------------------- score normalisation


@pytest.mark.parametrize("norm", ["raw", "per_entry", "per_rank_unit"])
def test_score_normalisation(norm):
    model = get_peft_model(Tiny(), LoraConfig(r=2, lora_alpha=4, target_modules=["up", "down"]))
    glora = GradNormRank(model, glora_plan(4, 10, score_norm=norm))
    glora.ema = torch.tensor([3.0, 1.0], dtype=torch.float64)  # up (6 -> 10), down (10 -> 5)
    divisor = {"raw": [1.0, 1.0], "per_rank_unit": [6 + 10, 10 + 5],
               "per_entry": [(10 * 2) ** 0.5, (5 * 2) ** 0.5]}[norm]  # lora_b: ||grad B|| over d_out x r entries
    expected = [3.0 / divisor[0], 1.0 / divisor[1]]
    scores = glora.scores()
    assert list(scores) == ["up", "down"]
    assert [scores["up"], scores["down"]] == pytest.approx([e / sum(expected) for e in expected])


@pytest.mark.parametrize("flags, message", [
    (["--budget_unit", "tokens"], "Unknown --budget_unit 'tokens'"),
    (["--param_budget", "1000"], "needs --budget_unit params"),
    (["--budget_unit", "params", "--rank_budget", "48"], "would be ignored"),
    (["--budget_unit", "params", "--param_budget", "0"], "--param_budget must be >= 1"),
    (["--glora_adam_rule", "fresh"], "Unknown --glora_adam_rule 'fresh'"),
    (["--glora_score_norm", "l1"], "Unknown --glora_score_norm 'l1'"),
])
def test_budget_and_rule_flags_are_checked_before_training(tiny_bert, glue_dir, tmp_path, flags, message):
    out = tmp_path / "out"
    with pytest.raises(ValueError, match=message):
        run_glue_peft.main(trial_args(tiny_bert, glue_dir("sst2"), "sst2", "glora", out, *flags))
    assert not (out / "run_args.json").exists()


# ---------------------------------------------------------------- presets that name their source


def preset_plan(preset, name, num_matrices):
    """The plan a preset resolves to on DeBERTa-v3-base's shapes (h 768, FFN 3072) with MNLI's training set size."""
    from conftest import ROOT

    from harness.arguments import parse_args
    from harness.plan import resolve_plan

    args = parse_args([str(ROOT / "configs" / preset / f"{name}.yaml"), "--use_cpu", "True"])
    matrices = args.peft.target_modules
    costs = [768 + 3072 if m in ("ffn_in", "ffn_out") else 768 + 768 for m in matrices] * 12
    targets = [f"layer.{i}.{m}" for i in range(12) for m in matrices]
    assert len(targets) == num_matrices
    return resolve_plan(args, targets, costs, ["pooler", "classifier"], num_train_examples=392_702)


def test_proposal_presets_resolve_to_the_run_files_values():
    adalora = preset_plan("proposal", "adalora_mnli", 24).adalora  # peft's default targets: query, value
    assert (adalora.init_r, adalora.target_r, adalora.tinit, adalora.beta1, adalora.beta2) == (8, 5, 12000, 0.9, 0.99)
    assert adalora.orth_reg_weight == 5e-4 and adalora.lora_alpha == 16  # peft's plain alpha, as the proposal ran it
    glora = preset_plan("proposal", "glora_mnli", 24).glora
    assert (glora.rank_budget, glora.warmup_steps, glora.beta) == (128, 12000, 0.9)
    assert preset_plan("proposal", "lora_mnli", 24).rank_budget == 8 * 24


def test_equal_parameter_presets_spend_uniform_loras_parameters():
    lora = preset_plan("", "lora_mnli", 72)
    unit_costs_sum = 12 * (4 * 1536 + 2 * 3840)
    for method in ("lora", "adalora", "glora"):
        plan = preset_plan("equal_params", f"{method}_mnli", 72)
        assert plan.budget_unit == "params" and plan.param_budget == 8 * unit_costs_sum
    assert preset_plan("equal_params", "adalora_mnli", 72).adalora.target_r == 8 == lora.rank_budget // 72
    # This project's default plan: the AdaLoRA paper's schedule, with scaling parity.
    adalora = preset_plan("", "adalora_mnli", 72).adalora
    assert (adalora.init_r, adalora.target_r, adalora.beta1, adalora.beta2, adalora.orth_reg_weight) == (12, 8, 0.85, 0.85, 0.1)
    assert adalora.lora_alpha / adalora.init_r == lora.lora_alpha / lora.lora_r


def test_low_budget_study_launcher_dry_run(tiny_bert, glue_dir, tmp_path, python_for_launchers):
    """launch/low_budget_study.sh end to end on fixtures: tuning on the held-out split (and only on it), the chosen
    rate per arm, final runs at it labelled with their arm, and one comparison of them all."""
    import os
    import subprocess

    from conftest import ROOT

    data = glue_dir("sst2", n_train=64, n_eval=16)
    root = tmp_path / "study"
    env = {**os.environ, "PYTHON": python_for_launchers, "STUDY_ROOT": str(root), "STUDY_MODEL": str(tiny_bert),
           "STUDY_GRID": "1e-3 2e-3", "STUDY_SEEDS": "1", "STUDY_EXTRA_ARGS": "--max_steps 3 --max_seq_length 32"}
    done = subprocess.run(["bash", str(ROOT / "launch" / "low_budget_study.sh"), str(data)], env=env,
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    chosen = json.loads((root / "chosen_rates.json").read_text())
    assert set(chosen) == {"lora", "adalora", "glora_rank", "glora_params"} and set(chosen.values()) <= {1e-3, 2e-3}
    for arm, lr in chosen.items():
        run_args = json.loads((root / "final" / f"{arm}_seed1" / "run_args.json").read_text())
        assert run_args["training"]["learning_rate"] == lr and run_args["data"]["tuning_split_fraction"] == 0
        assert json.loads((root / "final" / f"{arm}_seed1" / "all_results.json").read_text())["arm"] == arm
        tuned = json.loads((root / "tuning" / arm / "lr1e-3" / "run_args.json").read_text())
        assert tuned["data"]["eval_split"] == "tuning"
        tuned_results = json.loads((root / "tuning" / arm / "lr1e-3" / "all_results.json").read_text())
        assert "eval_tuning_accuracy" in tuned_results and "eval_accuracy" not in tuned_results  # dev never read
    glora_params = json.loads((root / "final" / "glora_params_seed1" / "all_results.json").read_text())
    assert glora_params["budget_unit"] == "params"
    comparison = (root / "comparison" / "comparison.md").read_text()  # one call on every final run
    assert "| LoRA |" in comparison and "| AdaLoRA |" in comparison
    assert not list(root.glob("comparison_*"))
    frontier = (root / "frontier" / "frontier.md").read_text()  # every arm once, and each arm's tuning curve
    assert all(f"| sst2 | {arm} |" in frontier for arm in chosen)
    curves = (root / "frontier" / "lr_curves.md").read_text()
    assert "lr 0.001 | lr 0.002" in curves and all(f"| {arm} |" in curves for arm in chosen)


def test_low_budget_study_refuses_an_unknown_arm_or_task_in_one_line(tmp_path):
    import os
    import subprocess

    from conftest import ROOT

    refusals = {}
    for name, value, line in (("STUDY_ARMS", "lora lora_r5", "STUDY_ARMS: unknown arm 'lora_r5'; choose from "),
                              ("STUDY_TASK", "mnli", "STUDY_TASK is sst2 or rte, got 'mnli'")):
        env = {**os.environ, "STUDY_ROOT": str(tmp_path / "study"), "STUDY_MODEL": "unused", name: value}
        done = subprocess.run(["bash", str(ROOT / "launch" / "low_budget_study.sh")], env=env, capture_output=True,
                              text=True, timeout=60)
        assert done.returncode == 2 and done.stderr.count("\n") == 1 and line in done.stderr
        assert not (tmp_path / "study").exists()
        refusals[name] = done.stderr
    known = set(refusals["STUDY_ARMS"].split("choose from ")[1].split())
    assert {"lora", "lora_r1", "lora_r3", "lora_r4", "eva", "glora_cal", "glora_pru", "glora_un", "adalora"} <= known


def test_a_flag_given_twice_takes_its_last_value_so_study_extra_args_override_the_launchers():
    """The study launchers put STUDY_EXTRA_ARGS after their own flags (e.g. --use_cpu True): the last one wins."""
    from harness.arguments import parse_args

    args = parse_args(["--task", "sst2", "--use_cpu", "True", "--learning_rate", "1e-3", "--use_cpu", "False",
                       "--learning_rate", "3e-3"])
    assert args.training.use_cpu is False and args.training.learning_rate == 3e-3


def test_trial_run_scales_adaloras_schedule_into_the_run(tiny_bert, glue_dir, tmp_path):
    """The proposal's AdaLoRA space starts pruning at step 500-1500: in a 6-step run with --trial_run false an error;
    as a trial run (--max_steps alone) scaled into the run, which still prunes."""
    out = tmp_path / "out"
    with pytest.raises(ValueError, match=r"^AdaLoRA's schedule does not fit: tinit 1000 \(--tinit 1000\) \+ tfinal 1 "
                                         r"\(default --tfinal_fraction 0\.2\) >= 6 optimizer steps: .*--trial_run unset or true"):
        run(tiny_bert, glue_dir("sst2"), "adalora", out, "--tinit", "1000", "--deltaT", "1", "--trial_run", "false")
    assert not out.exists()
    results, record = run(tiny_bert, glue_dir("sst2"), "adalora", out, "--tinit", "1000", "--deltaT", "1")
    resolved = json.loads((out / "run_args.json").read_text())["resolved"]["adalora"]
    assert (resolved["tinit"], resolved["tfinal"]) == (0, 1)  # 10 % and 20 % of 6 steps
    assert results["final_rank_total"] == results["rank_budget"]


def test_glora_state_of_another_budget_is_refused():
    model = get_peft_model(Tiny(), LoraConfig(r=2, lora_alpha=4, target_modules=["up", "down"]))
    state = GradNormRank(model, glora_plan(4, 10)).state_dict()
    assert (state["budget_unit"], state["param_budget"]) == ("rank", None)
    by_params = GradNormRank(model, glora_plan(4, 10, budget_unit="params", param_budget=2 * (16 + 15)))
    with pytest.raises(ValueError, match="another budget"):
        by_params.load_state_dict(state)


@pytest.mark.parametrize("resuming", [False, True])
def test_eval_log_is_kept_on_resume_and_restarted_otherwise(tmp_path, resuming):
    from types import SimpleNamespace

    from harness.eval_log import EvalLog
    from harness.records import EVAL_LOG, read_eval_log

    (tmp_path / EVAL_LOG).write_text('{"step": 3, "max_steps": 9, "split": "dev", "metrics": {"accuracy": 0.5}}\n')
    EvalLog(tmp_path, "dev", resuming=resuming).on_train_begin(None, SimpleNamespace(is_world_process_zero=True), None)
    assert len(read_eval_log(tmp_path)) == (1 if resuming else 0)

"""The default arm label (plan.arm_label): it names every setting that defines the method's arm (the `arm` metadata of
arguments.PeftArguments, declared once) where not at its default, and today's defaults keep today's labels."""

import dataclasses

import pytest

from harness.arguments import ARM_NAME, ARM_SETTING_FLAGS, ArmPart, PeftArguments, check_args, parse_args
from harness.plan import resolve_plan
from search.identity import ARM_FLAGS

# tiny_bert's shapes (tests/test_rank_pattern.py): 2 layers x 6 matrices, q/k/v/attention-output 64 per rank, ffn 96.
TARGETS = [f"layer.{layer}.{m}" for layer in range(2) for m in ("q", "k", "v", "o", "ffn_in", "ffn_out")]
COSTS = [64, 64, 64, 64, 96, 96] * 2


def plan_of(*flags):
    """The plan run_glue_peft.py resolves for these flags, on tiny_bert's shapes: its arm and output folder."""
    args = parse_args(["--task", "sst2", "--max_steps", "12", "--lora_r", "4", *flags])
    check_args(args)
    return resolve_plan(args, TARGETS, COSTS, (), num_train_examples=64)


@pytest.mark.parametrize("flags, arm", [
    # today's labels, unchanged: what existing records and expected tables hold
    ((), "lora"),
    (("--method", "adalora"), "adalora"),
    (("--method", "glora"), "glora"),
    (("--method", "glora", "--budget_unit", "params"), "glora_params"),
    (("--method", "eva"), "eva"),
    (("--method", "eva", "--eva_rho", "1"), "eva_rho1"),
    # a hyper-parameter a study tunes is not the arm
    (("--method", "glora", "--glora_beta", "0.8", "--glora_warmup_steps", "5"), "glora"),
    # the settings that change what GLoRA measures or how it allocates
    (("--method", "glora", "--glora_signal", "sensitivity", "--glora_calibration_steps", "8"), "glora_sensitivity_cal8"),
    (("--method", "glora", "--glora_score_norm", "per_rank_unit"), "glora_lora_b_per_rank_unit"),
    (("--method", "glora", "--glora_signal", "random", "--glora_signal_seed", "3"), "glora_random_s3"),
    (("--method", "glora", "--glora_signal", "shuffled", "--glora_shuffle_base", "sensitivity"),
     "glora_shuffled_base-sensitivity"),
    (("--method", "glora", "--glora_signal", "kfac", "--glora_signal_damping", "1e-5"), "glora_kfac_damp1e-05"),
    (("--method", "glora", "--glora_signal", "activation_variance", "--glora_top_r", "2"),
     "glora_activation_variance_top2"),
    (("--method", "glora", "--glora_min_rank", "2", "--glora_max_rank", "6"), "glora_lora_b_min2_max6"),
    (("--method", "glora", "--glora_adam_rule", "inherit_step", "--budget_unit", "params"),
     "glora_params_lora_b_inherit_step"),
    (("--method", "eva", "--eva_rho", "1.5", "--eva_tau", "0.9"), "eva_rho1.5_tau0.9"),
    # an explicit label is the user's
    (("--method", "glora", "--glora_signal", "sensitivity", "--arm", "mine"), "mine"),
])
def test_the_default_arm_names_every_setting_that_defines_the_method(flags, arm):
    plan = plan_of(*flags)
    assert plan.arm == arm and ARM_NAME.fullmatch(plan.arm)
    assert plan.output_dir == f"outputs/sst2/{arm}_{plan.budget_label}_seed42"  # two such arms never share a folder


def test_arm_settings_are_declared_once_on_the_flags_of_one_method():
    """The `arm` metadata is the one declaration: hpo.py's ARM_FLAGS (never searched) hold exactly those flags, each
    belongs to one method (so a label never names another method's setting), and its default gives no label part."""
    declared = [f for f in dataclasses.fields(PeftArguments) if "arm" in f.metadata]
    assert [f.name for f in declared] and set(ARM_SETTING_FLAGS) == {f.name for f in declared}
    assert set(ARM_FLAGS) - set(ARM_SETTING_FLAGS) == {"task", "method", "budget_unit", "rank_pattern", "arm"}
    for f in declared:
        assert isinstance(f.metadata["arm"], ArmPart) and len(f.metadata["methods"]) == 1, f.name
    assert [f.name for f in declared if f.metadata["arm"].lead] == ["glora_signal"]

"""The run plan: every number resolved from the arguments, computed once and frozen.

The flags say what the user asked for ("a third of training", "the default budget"); the plan says what that is
for this model, data and world size (step 78, R_total 288). Everything downstream — peft configs, GLoRA, the
output directory, run_args.json's `resolved` block — reads the plan, never re-derives it. A schedule that does not fit
the run is an error, unless the run is a trial run (--trial_run, by default on for a --max_steps run): then it is
scaled into the run, with a log line.
"""

import dataclasses
import logging
import math
from dataclasses import dataclass

from gradnorm_rank import GradNormRankConfig
from harness.arguments import STEPS_OR_FRACTION, arm_settings, arm_suffix
from harness.rank_pattern import RankPattern, resolve_rank_pattern

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class AdaLoraPlan:
    """peft's AdaLoraConfig schedule arguments, by name."""

    lora_alpha: float  # peft scales by lora_alpha / init_r
    init_r: int
    target_r: int
    tinit: int  # optimizer steps without pruning
    tfinal: int  # final optimizer steps with fixed ranks
    deltaT: int
    beta1: float
    beta2: float
    orth_reg_weight: float
    total_step: int


@dataclass(frozen=True)
class EvaPlan:
    """peft's EvaConfig as this run sets it (eva_init.py), and the batches its SVD reads: the training set's, in
    dataset order from its first, batch_size examples each, at most max_batches forward passes."""

    rho: float  # each matrix may get up to round(rho x lora_r) ranks; 1: no redistribution
    tau: float  # cosine similarity of consecutive SVD components at which a matrix's SVD has converged
    max_batches: int
    batch_size: int  # --per_device_train_batch_size


@dataclass(frozen=True)
class RunPlan:
    task: str
    method: str
    arm: str  # the run's label: --arm, or derived from method, budget unit, rank pattern and arm settings (`arm_label`)
    output_dir: str
    targets: tuple  # module paths of the adapted matrices
    unit_costs: tuple  # d_in + d_out of each target: the parameters one rank of it costs
    head: tuple  # modules trained in full by every method
    budget_unit: str
    rank_budget: int  # R_total over all adapted matrices (the uniform start's, under --budget_unit params)
    param_budget: int | None  # adapter parameters, under --budget_unit params
    lora_r: int
    lora_alpha: float
    lora_dropout: float
    total_steps: int  # optimizer steps of the run
    # HF's --warmup_steps as the run passes it to the Trainer: steps if >= 1, else a ratio of the run that the Trainer
    # turns into ceil(ratio x total_steps) steps itself; in a trial run a step count that does not fit is scaled.
    lr_warmup_steps: float
    world_size: int
    trial_run: bool = False  # --trial_run as resolved (`resolve_trial_run`): schedules that did not fit were scaled
    adalora: AdaLoraPlan | None = None
    glora: GradNormRankConfig | None = None  # GLoRA's settings, its budgets resolved
    rank_pattern: RankPattern | None = None  # LoRA's fixed per-matrix ranks (--rank_pattern)
    eva: EvaPlan | None = None  # EVA's settings (--method eva)

    @property
    def num_matrices(self) -> int:
        return len(self.targets)

    @property
    def structure_final_step(self) -> int:
        """The optimizer step of the method's last structural change: GLoRA's reallocation, AdaLoRA's last masking
        (total_step - tfinal, where its budget reaches the target); 0 for LoRA, whose shape never changes. An
        evaluation at a later step scores the adapter in its final shape (hpo.py prunes on no earlier one)."""
        if self.glora is not None:
            return self.glora.warmup_steps or 0  # calibration: the ranks are final before step 1
        if self.adalora is not None:
            return self.adalora.total_step - self.adalora.tfinal
        return 0

    @property
    def budget_label(self) -> str:
        """The budget in the output directory's name: r<R_total> or p<parameters>."""
        return f"r{self.rank_budget}" if self.budget_unit == "rank" else f"p{self.param_budget}"

    def resolved(self) -> dict:
        """run_args.json's `resolved` block."""
        return dataclasses.asdict(self)


def optimizer_steps(num_examples, training_args, world_size) -> int:
    """Optimizer steps the Trainer will take: the same arithmetic as Trainer.set_initial_training_values with
    Accelerate's even batch sharding. Checked against the Trainer's own count when training starts."""
    if training_args.max_steps > 0:
        return training_args.max_steps
    batches = math.ceil(math.ceil(num_examples / training_args.per_device_train_batch_size) / world_size)
    per_epoch = max(math.ceil(batches / training_args.gradient_accumulation_steps), 1)
    return math.ceil(training_args.num_train_epochs * per_epoch)


def schedule_steps(peft, flag: str, total_steps: int) -> int:
    """A schedule point in optimizer steps: the steps flag of STEPS_OR_FRACTION as given, else its fraction flag (or
    that flag's default fraction when neither is given) times the run's steps, rounded."""
    fraction_flag, default = STEPS_OR_FRACTION[flag]
    steps, fraction = getattr(peft, flag), getattr(peft, fraction_flag)
    if steps is not None:
        return steps
    return int(round((default if fraction is None else fraction) * total_steps))


def asked_as(peft, flag: str) -> str:
    """How a schedule point was asked for, for error lines: '--tinit 5', '--tinit_fraction 0.5' or 'default
    --tinit_fraction 0.1'."""
    fraction_flag, default = STEPS_OR_FRACTION[flag]
    steps, fraction = getattr(peft, flag), getattr(peft, fraction_flag)
    if steps is not None:
        return f"--{flag} {steps}"
    return f"--{fraction_flag} {fraction:g}" if fraction is not None else f"default --{fraction_flag} {default:.3g}"


TRIAL_WAY_OUT = "a trial of the code path (--max_steps N, --trial_run unset or true) scales it into the run"


def resolve_trial_run(training) -> bool:
    """--trial_run as this run uses it: as given, or when unset on for a --max_steps run (with a log line) and off for
    a run over epochs."""
    if training.trial_run is not None:
        return training.trial_run
    if training.max_steps <= 0:
        return False
    logger.info(f"--max_steps {training.max_steps} without --trial_run: a trial run; a schedule that does not fit is "
                "scaled into it with a log line (--trial_run false makes that an error).")
    return True


def resolve_plan(args, targets, unit_costs, head, num_train_examples: int) -> RunPlan:
    """The plan of one run from its parsed arguments, its model's adapted matrices (paths and the d_in + d_out of
    each) and its training set size."""
    peft, training = args.peft, args.training
    world_size = training.world_size
    total_steps = optimizer_steps(num_train_examples, training, world_size)
    trial_run = resolve_trial_run(training)
    rank_budget = resolve_rank_budget(peft, len(targets))
    param_budget = resolve_param_budget(peft, unit_costs)
    pattern = None
    if peft.rank_pattern:
        pattern = resolve_rank_pattern(peft.rank_pattern, list(targets), list(unit_costs), rank_budget=peft.rank_budget,
                                       param_budget=peft.param_budget)
        rank_budget, param_budget = pattern_budgets(peft, pattern, unit_costs, rank_budget, param_budget)
    adalora = glora = eva = None
    if peft.method == "adalora":
        adalora = resolve_adalora(peft, rank_budget=rank_budget, param_budget=param_budget, unit_costs=unit_costs,
                                  total_steps=total_steps, trial_run=trial_run)
    if peft.method == "glora":
        glora = resolve_glora(peft, rank_budget=rank_budget, param_budget=param_budget, total_steps=total_steps,
                              trial_run=trial_run)
        check_glora_floor(glora, unit_costs)
        check_glora_rank_cap(glora, unit_costs)
    if peft.method == "eva":
        eva = EvaPlan(rho=peft.eva_rho, tau=peft.eva_tau, max_batches=peft.eva_max_batches,
                      batch_size=training.per_device_train_batch_size)
    plan = RunPlan(
        task=args.data.task, method=peft.method,
        arm=peft.arm or arm_label(peft.method, peft.budget_unit, pattern, arm_settings(peft.method, vars(peft))),
        output_dir="", targets=tuple(targets), unit_costs=tuple(unit_costs),
        head=tuple(head), budget_unit=peft.budget_unit, rank_budget=rank_budget, param_budget=param_budget,
        lora_r=peft.lora_r, lora_alpha=peft.lora_alpha, lora_dropout=peft.lora_dropout, total_steps=total_steps,
        lr_warmup_steps=resolve_lr_warmup(training.warmup_steps, total_steps, trial_run), world_size=world_size,
        trial_run=trial_run, adalora=adalora, glora=glora, rank_pattern=pattern, eva=eva,
    )
    output_dir = training.output_dir or f"outputs/{plan.task}/{plan.arm}_{plan.budget_label}_seed{training.seed}"
    return dataclasses.replace(plan, output_dir=output_dir)


def arm_label(method: str, budget_unit: str, pattern: RankPattern | None, settings=()) -> str:
    """The default arm: `glora`, `glora_params`, `lora_pattern-1a2b3c4d` (the pattern file's sha256 prefix), then the
    settings that define the arm (arguments.arm_settings) where not at their defaults, as arguments.arm_suffix names
    them: `glora_sensitivity_cal8`, `glora_lora_b_per_rank_unit`, `glora_random_s3`, `eva_rho1` (`eva_rho1.5`)."""
    label = method + ("_params" if budget_unit == "params" else "") + (f"_pattern-{pattern.sha256[:8]}" if pattern else "")
    return label + arm_suffix(method, settings)


def resolve_lr_warmup(warmup: float, total_steps: int, trial_run: bool) -> float:
    """HF's --warmup_steps as this run uses it: a ratio (< 1) is the Trainer's own, of the run; a step count (>= 1)
    that does not fit the run is an error, or in a trial run is scaled to 10 % of the run, so that a trial still
    trains at its learning rate."""
    if warmup < 1 or warmup < total_steps:
        return warmup
    if not trial_run:
        raise ValueError(f"--warmup_steps {warmup:g} never ends in a run of {total_steps} optimizer steps: give fewer "
                         f"steps or a ratio of the run (e.g. 0.06); {TRIAL_WAY_OUT}.")
    scaled = round(0.1 * total_steps)
    logger.warning(f"LR warm-up {warmup:g} >= max_steps {total_steps}: trial run, warming up over {scaled} steps.")
    return scaled


def resolve_rank_budget(peft, num_matrices: int) -> int:
    uniform = peft.lora_r * num_matrices
    budget = peft.rank_budget or uniform
    if peft.method == "lora" and budget != uniform and not peft.rank_pattern:
        raise ValueError(f"LoRA spends lora_r x matrices = {uniform}; --rank_budget {budget} differs (with "
                         "--rank_pattern it is the pattern's cap).")
    if peft.method == "eva" and budget != uniform:
        raise ValueError(f"EVA redistributes peft's budget lora_r x matrices = {uniform}; --rank_budget {budget} differs: "
                         "give --lora_r instead.")
    if peft.method == "adalora" and budget % num_matrices:
        raise ValueError(f"AdaLoRA needs a budget divisible by the {num_matrices} matrices; got {budget}.")
    return budget


def pattern_budgets(peft, pattern: RankPattern, unit_costs, rank_budget: int, param_budget: int | None) -> tuple:
    """(R_total, parameter budget) of a --rank_pattern run: what the pattern spends, unless --rank_budget (or under
    --budget_unit params --param_budget) is given, which caps it (resolve_rank_pattern refused a pattern above it) and
    is recorded. Under --budget_unit params R_total stays the uniform start's, as for every method (what compare_runs
    groups a parameter-budget comparison by). A pattern is never recorded at a budget it does not spend or exceeds."""
    ranks = [rank for _, rank in pattern.ranks]
    if peft.budget_unit == "params":
        return rank_budget, peft.param_budget or sum(r * c for r, c in zip(ranks, unit_costs))
    return peft.rank_budget or sum(ranks), param_budget


def resolve_param_budget(peft, unit_costs) -> int | None:
    """Under --budget_unit params: the adapter parameters to spend (default: what uniform LoRA at lora_r spends)."""
    if peft.budget_unit != "params":
        return None
    uniform = peft.lora_r * sum(unit_costs)
    budget = peft.param_budget or uniform
    if peft.method == "lora" and budget != uniform and not peft.rank_pattern:
        raise ValueError(f"LoRA spends lora_r x sum(d_in + d_out) = {uniform} parameters; --param_budget {budget} differs "
                         "(with --rank_pattern it is the pattern's cap).")
    return budget


def resolve_adalora(peft, *, rank_budget: int, param_budget: int | None, unit_costs, total_steps: int,
                    trial_run: bool) -> AdaLoraPlan:
    """AdaLoRA's target rank per matrix: R_total / N, or under a parameter budget the rank whose uniform spending
    comes closest to it (peft prunes by a count of singular values, so the parameters it ends with depend on where
    the kept ranks sit; ranks.json records them)."""
    if param_budget is None:
        target_r = rank_budget // len(unit_costs)
    else:
        target_r = max(1, round(param_budget / sum(unit_costs)))
    tinit, tfinal = schedule_steps(peft, "tinit", total_steps), schedule_steps(peft, "tfinal", total_steps)
    if tinit + tfinal >= total_steps:
        if not trial_run:
            raise ValueError(f"AdaLoRA's schedule does not fit: tinit {tinit} ({asked_as(peft, 'tinit')}) + tfinal {tfinal} "
                             f"({asked_as(peft, 'tfinal')}) >= {total_steps} optimizer steps: give fewer steps or smaller "
                             f"fractions; {TRIAL_WAY_OUT}.")
        # A trial run must still run AdaLoRA's pruning phase: the AdaLoRA paper's fractions instead.
        scaled = int(0.1 * total_steps), int(0.2 * total_steps)
        logger.warning(f"AdaLoRA tinit {tinit} + tfinal {tfinal} >= max_steps {total_steps}: trial run, tinit "
                       f"{scaled[0]} and tfinal {scaled[1]} instead.")
        tinit, tfinal = scaled
    init_r = peft.init_r or math.ceil(1.5 * target_r)
    # peft's AdaLoRA scales by alpha / init_r; parity gives it LoRA's alpha / r at the start.
    lora_alpha = peft.lora_alpha * init_r / peft.lora_r if peft.adalora_alpha_parity else peft.lora_alpha
    return AdaLoraPlan(
        lora_alpha=lora_alpha, init_r=init_r, target_r=target_r, tinit=tinit, tfinal=tfinal, deltaT=peft.deltaT,
        beta1=peft.beta1, beta2=peft.beta2, orth_reg_weight=peft.orth_reg_weight, total_step=total_steps,
    )


def check_glora_floor(glora: GradNormRankConfig, unit_costs):
    """The budget must give every matrix --glora_min_rank: R_total >= min_rank x matrices, or under --budget_unit
    params the parameters of min_rank on every matrix."""
    least, n = glora.min_rank, len(unit_costs)
    if glora.budget_unit == "rank" and glora.rank_budget < least * n:
        raise ValueError(f"--rank_budget {glora.rank_budget} is below GLoRA's floor: --glora_min_rank {least} on each of "
                         f"the {n} matrices needs R_total >= {least * n}; give a larger --rank_budget or a smaller "
                         "--glora_min_rank.")
    if glora.budget_unit == "params" and glora.param_budget < least * sum(unit_costs):
        raise ValueError(f"--param_budget {glora.param_budget} is below GLoRA's floor: --glora_min_rank {least} on each of "
                         f"the {n} matrices costs {least} x sum(d_in + d_out) = {least * sum(unit_costs)} parameters; "
                         "give a larger --param_budget or a smaller --glora_min_rank.")


def check_glora_rank_cap(glora: GradNormRankConfig, unit_costs):
    """--glora_max_rank must leave room for the budget: with every matrix at the cap, at least all of it is spent."""
    cap, n = glora.max_rank, len(unit_costs)
    if cap is None:
        return
    if glora.budget_unit == "rank" and cap * n < glora.rank_budget:
        raise ValueError(f"--glora_max_rank {cap} cannot hold the rank budget: {n} matrices x {cap} = {cap * n} < R_total "
                         f"{glora.rank_budget}; give at least {math.ceil(glora.rank_budget / n)} or a smaller budget.")
    if glora.budget_unit == "params" and cap * sum(unit_costs) < glora.param_budget:
        raise ValueError(f"--glora_max_rank {cap} cannot hold the parameter budget: every matrix at rank {cap} spends "
                         f"{cap * sum(unit_costs)} < {glora.param_budget} parameters; give at least "
                         f"{math.ceil(glora.param_budget / sum(unit_costs))} or a smaller budget.")


def resolve_glora(peft, *, rank_budget: int, param_budget: int | None, total_steps: int,
                  trial_run: bool) -> GradNormRankConfig:
    settings = dict(budget_unit=peft.budget_unit, rank_budget=rank_budget, param_budget=param_budget,
                    beta=peft.glora_beta, signal=peft.glora_signal, min_rank=peft.glora_min_rank,
                    max_rank=peft.glora_max_rank, score_norm=peft.glora_score_norm, adam_rule=peft.glora_adam_rule,
                    signal_seed=peft.glora_signal_seed, shuffle_base=peft.glora_shuffle_base,
                    signal_damping=peft.glora_signal_damping, top_r=peft.glora_top_r)
    if peft.glora_calibration_steps is not None:
        return GradNormRankConfig(calibration_steps=peft.glora_calibration_steps, **settings)
    warmup = schedule_steps(peft, "glora_warmup_steps", total_steps)
    if warmup < 1:
        raise ValueError(f"GLoRA's warm-up ({asked_as(peft, 'glora_warmup_steps')}) is {warmup} of {total_steps} optimizer "
                         "steps: it needs at least one; give a larger fraction or --glora_warmup_steps.")
    if warmup >= total_steps:
        if not trial_run:
            raise ValueError(
                f"GLoRA's warm-up of {warmup} steps ({asked_as(peft, 'glora_warmup_steps')}) never ends in a run of "
                f"{total_steps} optimizer steps: give fewer steps or a fraction (--glora_warmup_fraction); "
                f"{TRIAL_WAY_OUT}."
            )
        # A trial run must still exercise the reallocation and the resize.
        clamped = max(1, total_steps // 2)
        logger.warning(f"GLoRA warm-up {warmup} >= max_steps {total_steps}: trial run, reallocating at step {clamped}.")
        warmup = clamped
    return GradNormRankConfig(warmup_steps=warmup, **settings)

#!/usr/bin/env python
"""Fine-tune an encoder on a GLUE task with LoRA, AdaLoRA, GLoRA or EVA at the same rank budget.

    accelerate launch run_glue_peft.py --method glora --task mnli
    accelerate launch run_glue_peft.py configs/glora_mnli.yaml --max_steps 2 --max_eval_samples 64

A YAML/JSON config file may come first; flags after it override its values. See README.md and
docs/architecture.md (the path of one run through the files).
"""

import contextlib
import dataclasses
import json
import logging
import os
import sys
import time
from pathlib import Path

import datasets
import numpy as np
import transformers
from accelerate import PartialState
from peft import get_peft_model
from torch.utils.data import SequentialSampler
from transformers import (
    AutoConfig,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    DataCollatorWithPadding,
    Trainer,
    TrainerCallback,
    default_data_collator,
    set_seed,
)
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, has_length

from gradnorm_rank import GradNormRank, GradNormRankMixin, MethodOverhead
from harness.adapters import (
    AdaLoraCallback,
    build_peft_config,
    current_ranks,
    head_modules,
    rank_record,
    resolve_targets,
    trainable_parameters,
    unit_costs,
)
from harness.arguments import check_args, parse_args
from harness.checkpoints import (
    IDENTITY_FILE,
    NO_PROGRESS,
    CheckpointSeal,
    checkpoint_problem,
    checkpoints_newest_first,
    identity_differences,
    identity_of,
    newest_complete_checkpoint,
    read_progress,
    unseal,
)
from harness.eva_init import EvaInit
from harness.eval_log import EvalLog
from harness.glue_data import data_fingerprint, load_glue_data, tokenize_splits
from harness.glue_tasks import GLUE_TASKS, glue_metrics
from harness.plan import resolve_plan
from harness.planted_task import (
    ReadoutModel,
    VectorLabelCollator,
    check_labels,
    check_planting,
    check_token_counts,
    read_planting,
    real_outputs,
    write_predictions,
)
from harness.records import RESULTS_FILE, RUN_ARGS_FILE, RankRecord, Results, RunArgs
from harness.run_folder import REPLACED_SUFFIX, discard_replaced, folder_lock, move_aside, sibling

logger = logging.getLogger(__name__)
TRAIN_FIGURES = ("train_runtime", "train_samples_per_second", "train_steps_per_second", "train_loss")


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    check_args(args)
    setup_logging()
    warn_single_process_launch(PartialState().num_processes)
    planting = read_planting(args.data.dataset_dir) if GLUE_TASKS[args.data.task].is_vector else None

    raw = load_glue_data(args.data, args.model.cache_dir)
    if planting:
        check_labels(raw, planting)
    # Common random numbers across arms: the head's initial weights are drawn right after seeding, before any
    # method's adapter draws its own, and the training order comes from the seed alone (data_seed), so that every
    # arm of one seed starts from the same head and sees the same batches.
    set_seed(args.training.seed)
    model, tokenizer = load_model(args.model, args.data.task, planting)
    if planting:
        check_planting(planting, model, args.data.max_seq_length)
        check_token_counts(raw, tokenizer, planting)
    targets = resolve_targets(model, args.peft.target_modules)
    plan = resolve_plan(args, targets, unit_costs(model, targets), head_modules(model), len(raw["train"]))
    training_args = dataclasses.replace(args.training, output_dir=plan.output_dir, warmup_steps=plan.lr_warmup_steps,
                                        data_seed=data_seed(args.training))

    model = get_peft_model(model, build_peft_config(plan))
    initial_ranks = current_ranks(model)
    method = method_hooks(model, plan)
    logger.info(f"{plan.arm} ({plan.method}): {plan.num_matrices} adapted matrices, R_total {plan.rank_budget}, "
                f"{trainable_parameters(model, plan.head)}")

    run_args = run_args_of(args, plan, data_fingerprint(raw, args.data.task))
    resume = check_resume(run_args, plan, training_args)
    training_args = dataclasses.replace(training_args, resume_from_checkpoint=resume and str(resume))
    with folder_lock(plan.output_dir, hold=PartialState().is_main_process):
        replaced = prepare_output_dir(run_args, plan, training_args, args.data.overwrite_output_dir)
        trainer = None
        try:
            encoded = tokenize_splits(raw, tokenizer, args.data, training_args)
            initialise_eva(method, encoded, tokenizer, args.data, training_args, planting)
            trainer = build_trainer(model, tokenizer, encoded, plan, training_args, method, args.data,
                                    identity_of(run_args.to_json()), planting)
            cpu_start = time.process_time()
            train_result = trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
        except Exception:
            if not resume and replaced is None and training_args.should_save and (trainer is None or trainer.state.global_step == 0):
                forget_failed_start(plan.output_dir)
            raise
        train_result.metrics["train_process_cpu_seconds"] = time.process_time() - cpu_start
        trainer.save_model()  # the adapter, with its final ranks in rank_pattern
        trainer.save_state()

        results = trainer.whole_run_metrics(train_result.metrics)
        results.update(evaluate_and_write_predictions(trainer, raw, encoded, plan, training_args, args.data.eval_split,
                                                      planting))
        results = write_records(results, model, plan, initial_ranks, method, training_args)
        if training_args.should_save:
            discard_replaced(replaced)
    return results


# ---- the steps of main, in order ----


def setup_logging():
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    transformers.utils.logging.set_verbosity_warning()
    datasets.utils.logging.set_verbosity_warning()


def warn_single_process_launch(world_size: int):
    """`accelerate launch --cpu --num_processes N` starts ONE process (its simple launcher sets MASTER_ADDR for N > 1,
    but no WORLD_SIZE, and runs the script once): say so rather than train N times slower without a word."""
    asked_several = "MASTER_ADDR" in os.environ and "WORLD_SIZE" not in os.environ
    if world_size == 1 and asked_several and os.environ.get("ACCELERATE_USE_CPU", "").lower() == "true":
        logger.warning("accelerate launch --cpu --num_processes N started a single process (world size 1); for N CPU "
                       "processes use torchrun --nproc_per_node N run_glue_peft.py ... --use_cpu True.")


def data_seed(training_args) -> int:
    """The seed of the training order: --data_seed, else --seed. Given to the Trainer explicitly, so that the order
    never depends on what drew from the global RNG before the sampler (a method's adapter initialisation)."""
    return training_args.seed if training_args.data_seed is None else training_args.data_seed


def load_model(model_args, task_name, planting=None):
    """The pretrained encoder with a fresh classification head for the task (for the planted control: with the
    planting's frozen read-out instead, planted_task.ReadoutModel), and its tokenizer."""
    task = GLUE_TASKS[task_name]
    with hub_errors_named("--model_name_or_path", model_args.model_name_or_path):
        if planting:
            model = ReadoutModel.load(model_args.model_name_or_path, planting, cache_dir=model_args.cache_dir)
        else:
            config = AutoConfig.from_pretrained(model_args.model_name_or_path, num_labels=task.num_labels,
                                                finetuning_task=task_name, cache_dir=model_args.cache_dir)
            model = AutoModelForSequenceClassification.from_pretrained(
                model_args.model_name_or_path, config=config, cache_dir=model_args.cache_dir
            )
    tokenizer_flag = "--tokenizer_name" if model_args.tokenizer_name else "--model_name_or_path"
    with hub_errors_named(tokenizer_flag, model_args.tokenizer_name or model_args.model_name_or_path):
        tokenizer = AutoTokenizer.from_pretrained(model_args.tokenizer_name or model_args.model_name_or_path, cache_dir=model_args.cache_dir)
    return model, tokenizer


@contextlib.contextmanager
def hub_errors_named(flag, name):
    """A hub id that cannot be loaded (offline, unreachable, no such repository) fails with the flag and the way out."""
    try:
        yield
    except OSError as error:
        if os.path.isdir(name):  # a local copy that is broken: transformers' own message names what is missing
            raise
        raise OSError(f"Could not load {flag} {name}: not a local directory, and the Hugging Face Hub could not provide it "
                      f"(offline, unreachable, or no such repository); pass a local copy with {flag} DIR.") from error


def method_hooks(peft_model, plan) -> list:
    """The method's own training-loop hooks: AdaLoRA's budget schedule, GLoRA, or EVA's initialisation and its ranks
    in checkpoints; none for LoRA."""
    if plan.adalora is not None:
        return [AdaLoraCallback(peft_model, plan.adalora)]
    if plan.glora is not None:
        return [GradNormRank(peft_model, plan.glora)]
    if plan.eva is not None:
        return [EvaInit(peft_model, plan)]
    return []


def initialise_eva(method, encoded, tokenizer, data_args, training_args, planting=None):
    """EVA's ranks and lora_A from the training batches, before the Trainer is built (which seeds itself, so the
    training data order is untouched); a resume instead builds the checkpoint's ranks (`EvaInit.load`)."""
    for hook in method:
        if isinstance(hook, EvaInit) and not training_args.resume_from_checkpoint:
            hook.initialise(encoded["train"], data_collator(tokenizer, data_args, training_args, planting),
                            tokenizer.model_input_names)


def run_args_of(args, plan, fingerprint: dict) -> RunArgs:
    """run_args.json: what was asked, what it resolved to, the content of the data (glue_data.data_fingerprint), and
    for runs chosen by hpo.py its `hpo` block."""
    hpo = json.loads(Path(args.data.hpo_record).read_text()) if args.data.hpo_record else None
    return RunArgs(**args.asked(), resolved=plan.resolved(), world_size=plan.world_size, hpo=hpo,
                   data_fingerprint=fingerprint)


def check_resume(run_args, plan, training_args) -> Path | None:
    """--resume_from_checkpoint: the checkpoint folder to continue from (True: the newest complete one in
    output_dir), checked before anything is written. It must be complete (`checkpoints.checkpoint_problem`: sealed,
    every file as saved) and come from this very run: its run_identity.json equals this run's identity, every flag
    but those a resume may change (`arguments.RESUME_MAY_CHANGE`)."""
    asked = training_args.resume_from_checkpoint
    if not asked:
        return None
    if str(asked).lower() == "true":
        folder = newest_complete_checkpoint(plan.output_dir)
        if folder is None:
            raise FileNotFoundError(f"--resume_from_checkpoint True: no complete checkpoint in {plan.output_dir}"
                                    f"{incomplete_note(plan.output_dir)}.")
        logger.info(f"--resume_from_checkpoint True: continuing from {folder}{incomplete_note(plan.output_dir)}.")
    else:
        folder = Path(asked)
        if not folder.is_dir():
            raise FileNotFoundError(f"--resume_from_checkpoint {folder}: no such checkpoint folder.")
        problem = checkpoint_problem(folder)
        if problem:
            newest = newest_complete_checkpoint(folder.parent)
            other = f"; the newest complete checkpoint there is {newest}" if newest else ""
            raise ValueError(f"--resume_from_checkpoint {folder}: {problem}{other}.")
    differs = identity_differences(json.loads((folder / IDENTITY_FILE).read_text()), identity_of(run_args.to_json()))
    if differs:
        raise ValueError(f"--resume_from_checkpoint {folder} is from another run ({'; '.join(differs)}): a resume may "
                         "change only where and how the run reports and checkpoints (arguments.RESUME_MAY_CHANGE); "
                         "resume it with its own settings, or start a new run.")
    return folder


def incomplete_note(output_dir) -> str:
    """', skipping incomplete checkpoint-N (...)' for the incomplete checkpoints newer than the newest complete one."""
    skipped = []
    for folder in checkpoints_newest_first(output_dir):
        problem = checkpoint_problem(folder)
        if problem is None:
            break
        skipped.append(f"{folder.name} ({problem})")
    return f", skipping incomplete {'; '.join(skipped)}" if skipped else ""


def prepare_output_dir(run_args, plan, training_args, overwrite: bool):
    """Refuse to mix with a finished or an unfinished run; write run_args.json. --overwrite_output_dir moves the run
    there aside whole (`run_folder.move_aside`), returned so that it is deleted once this run has finished. A resume
    into its own folder keeps run_args.json, which must be this run's."""
    output_dir = Path(plan.output_dir)
    resume = training_args.resume_from_checkpoint
    finished = (output_dir / RESULTS_FILE).exists()
    unfinished = not finished and is_unfinished_run(output_dir)
    if overwrite and resume and (finished or unfinished) and Path(resume).resolve().is_relative_to(output_dir.resolve()):
        raise ValueError(f"--overwrite_output_dir would move {output_dir} aside, and with it the checkpoint "
                         f"--resume_from_checkpoint {resume} continues from: drop --overwrite_output_dir to continue "
                         "the run there.")
    if finished and not overwrite:
        raise FileExistsError(f"{output_dir} holds a finished run; pass --overwrite_output_dir or another --output_dir"
                              f"{replaced_note(output_dir)}.")
    if unfinished and not (resume or overwrite):
        newest = newest_complete_checkpoint(output_dir)
        how = f"--resume_from_checkpoint {newest} to continue it, or " if newest else ""
        raise FileExistsError(f"{output_dir} holds an unfinished run (no all_results.json{incomplete_note(output_dir)}): "
                              f"pass {how}--overwrite_output_dir True to start again, or another --output_dir"
                              f"{replaced_note(output_dir)}.")
    keep_run_args = bool(resume) and unfinished and not overwrite and (output_dir / RUN_ARGS_FILE).is_file()
    if keep_run_args:
        differs = identity_differences(identity_of(RunArgs.read(output_dir).to_json()), identity_of(run_args.to_json()))
        if differs:
            raise ValueError(f"{output_dir}/run_args.json is another run's ({'; '.join(differs)}): resume into that "
                             "run's own folder only with its settings, or pass another --output_dir.")
    PartialState().wait_for_everyone()  # under DDP every process checks before the main one writes
    replaced = None
    if training_args.should_save:
        if overwrite and (finished or unfinished):
            replaced = move_aside(output_dir)
        output_dir.mkdir(parents=True, exist_ok=True)
        if not keep_run_args:
            run_args.write(output_dir)
    PartialState().wait_for_everyone()
    return replaced


def replaced_note(output_dir: Path) -> str:
    """'; the run it replaced is whole in OUTPUT_DIR.replaced ...' when an --overwrite_output_dir that did not finish
    left the older run there (run_folder.move_aside); else ''."""
    slot = sibling(output_dir, REPLACED_SUFFIX)
    if not slot.is_dir():
        return ""
    return (f" (the run in it is an --overwrite_output_dir that did not finish; the run it replaced is whole in {slot}, "
            "deleted once a run in its place finishes)")


def forget_failed_start(output_dir):
    """A run that failed before its first optimizer step (e.g. at Trainer construction) in a folder that held no run:
    its run_args.json goes (and the folder, if nothing else is in it), so the same command is not refused as an
    unfinished run. A resume or a replacement (--overwrite_output_dir) keeps what it has."""
    output_dir = Path(output_dir)
    (output_dir / RUN_ARGS_FILE).unlink(missing_ok=True)
    if output_dir.is_dir() and not any(output_dir.iterdir()):
        output_dir.rmdir()
    logger.warning(f"The run failed before its first optimizer step: {output_dir}/{RUN_ARGS_FILE} removed, so the same "
                   "command can start it again.")


def data_collator(tokenizer, data_args, training_args, planting=None):
    """How training batches are collated (the Trainer's, and EVA's batches before it)."""
    multiple = 8 if training_args.fp16 or training_args.bf16 else None
    if planting:
        return VectorLabelCollator(tokenizer, planting, data_args.pad_to_max_length, pad_to_multiple_of=multiple)
    if data_args.pad_to_max_length:
        return default_data_collator
    return DataCollatorWithPadding(tokenizer, pad_to_multiple_of=multiple)


def build_trainer(model, tokenizer, encoded, plan, training_args, method, data_args, identity, planting=None):
    task = GLUE_TASKS[plan.task]

    def compute_metrics(prediction):
        if planting:  # one row per example or per real token
            predicted, labels, _, base = real_outputs(prediction.predictions, prediction.label_ids, planting.per_token)
            return glue_metrics(plan.task, predicted, labels, base_sq_error=base)
        return glue_metrics(plan.task, prediction.predictions, prediction.label_ids)

    # --eval_split tuning: every evaluation scores the held-out tuning split (metrics eval_tuning_*), for hpo.py's
    # trials; the final one too (evaluate_and_write_predictions), so such a run never evaluates dev.
    eval_dataset = {"tuning": encoded["tuning"]} if data_args.eval_split == "tuning" else encoded[task.eval_splits[0].name]
    return GlueTrainer(
        model=model,
        args=training_args,
        train_dataset=encoded["train"],
        eval_dataset=eval_dataset,
        processing_class=tokenizer,
        data_collator=data_collator(tokenizer, data_args, training_args, planting),
        compute_metrics=compute_metrics,
        callbacks=[ScheduleCheck(plan.total_steps), EvalLog(plan.output_dir, data_args.eval_split,
                                                                 plan.structure_final_step,
                                                                 resuming=bool(training_args.resume_from_checkpoint))]
        + ([ProgressLine()] if training_args.disable_tqdm else [])
        + [hook for hook in method if not isinstance(hook, GradNormRank)],
        gradnorm_rank=next((hook for hook in method if isinstance(hook, GradNormRank)), None),
        method=method,
        identity=identity,
    )


def evaluate_and_write_predictions(trainer, raw, encoded, plan, training_args, eval_split="dev", planting=None) -> dict:
    """Metrics of every dev split, and its per-example predictions as predictions_<split>.csv (the planted control:
    planted_task.write_predictions); under --eval_split tuning those of the tuning split alone (eval_tuning_*,
    predictions_tuning.csv): a trial never reads dev."""
    task = GLUE_TASKS[plan.task]
    results = {}
    for split, prefix, suffix in final_eval_splits(task, eval_split):
        output = trainer.predict(encoded[split], metric_key_prefix=prefix)
        results.update({f"{k}{suffix}": v for k, v in output.metrics.items()})
        if not training_args.should_save:
            continue
        if planting:
            write_predictions(plan.output_dir, split, raw[split]["idx"], raw[split]["label"], output.predictions,
                              output.label_ids, planting.per_token)
            continue
        if not np.allclose(output.label_ids.reshape(-1), np.asarray(raw[split]["label"], dtype=float), atol=1e-6):
            raise RuntimeError(f"{split}: predictions are not in dataset order; predictions_{split}.csv would "
                               "pair them with the wrong idx")
        predicted = output.predictions.reshape(-1) if task.is_regression else output.predictions.argmax(-1)
        lines = ["idx,label,prediction"] + [
            f"{i},{label},{p}" for i, label, p in zip(raw[split]["idx"], output.label_ids.tolist(), predicted.tolist())
        ]
        Path(plan.output_dir, f"predictions_{split}.csv").write_text("\n".join(lines) + "\n")
    return results


def final_eval_splits(task, eval_split) -> list:
    """(split, metric prefix, metric suffix) of the final evaluation: the task's dev splits, or the tuning split."""
    if eval_split == "tuning":
        return [("tuning", "eval_tuning", "")]
    return [(split.name, "eval", split.metric_suffix) for split in task.eval_splits]


def write_records(metrics, model, plan, initial_ranks, method, training_args) -> dict:
    """ranks.json, the W&B rank table, and all_results.json last: its presence marks a finished run. `metrics`: the
    Trainer's figures; returns all_results.json's content."""
    ranks = rank_record(model, plan, initial_ranks)
    for hook in method:
        add_method_block(ranks, hook)
    results = Results(
        task=plan.task, method=plan.method, arm=plan.arm, seed=training_args.seed, rank_budget=plan.rank_budget,
        rank_pattern=plan.rank_pattern.record() if plan.rank_pattern else None, budget_unit=plan.budget_unit,
        param_budget=plan.param_budget, train_runtime=metrics["train_runtime"],
        **trainable_parameters(model, plan.head),
        final_rank_total=ranks.final_rank_total, adapter_params_start=ranks.adapter_params("initial_rank"),
        adapter_params_after_allocation=ranks.adapter_params("final_rank"),
        adapter_params_effective=ranks.adapter_params("effective_rank"),
        metrics={**{key: value for key, value in metrics.items() if key != "train_runtime"}, **overhead_record(method),
                 **{"glora_reallocated": hook.done for hook in method if isinstance(hook, GradNormRank)}},
    )
    if training_args.should_save:
        ranks.write(plan.output_dir)
        log_to_wandb(training_args, ranks)
        results.write(plan.output_dir)
    logger.info(f"results: {json.dumps(results.to_json(), indent=1, default=str)}")
    return results.to_json()


def add_method_block(ranks: RankRecord, hook):
    """ranks.json's block of the run's method: GLoRA's summary (gradnorm_rank.GradNormRank.summary) and each module's
    score, AdaLoRA's schedule (adapters.AdaLoraCallback.add_to_record) or EVA's settings and cost
    (eva_init.EvaInit.add_to_record)."""
    if isinstance(hook, GradNormRank):
        for name, score in hook.scores().items():
            ranks.modules[name].score = score
        ranks.glora = hook.summary()
    else:
        hook.add_to_record(ranks)


def overhead_record(method) -> dict:
    """all_results.json's method overhead, named as gradnorm_rank.MethodOverhead names it: GLoRA's total and its
    signal, resize and grown-slice parts; AdaLoRA's and EVA's totals (their parts null); LoRA, which has no method hook,
    0 s."""
    records = [hook.overhead.record() if isinstance(hook, GradNormRank) else hook.overhead_record() for hook in method]
    if len(records) > 1:
        raise RuntimeError(f"{len(records)} method hooks: all_results.json records the overhead of one.")
    return records[0] if records else MethodOverhead().record()


# ---- the Trainer ----


class GlueTrainer(GradNormRankMixin, Trainer):
    """Trainer that evaluates in dataset order, normalises the loss itself, makes GLoRA's calls (the package's
    mixin, as any user's Trainer), seals its checkpoints (`checkpoints.CheckpointSeal`), and on a resume stops where
    the run ends and reports whole-run figures."""

    def __init__(self, *args, method=(), identity: dict, **kwargs):
        super().__init__(*args, **kwargs)
        # Sequence classifiers take **kwargs, so transformers assumes they normalise the loss by the token count
        # it passes them; they ignore it and return a batch mean. Left True, the loss is then never divided by the
        # accumulation steps (8 x 2 gives twice the gradient of 16 x 1) and is multiplied by the world size when
        # tokens are averaged across devices.
        self.model_accepts_loss_kwargs = False
        self.method = list(method)
        self.prior = None  # the resumed checkpoint's progress (checkpoints.read_progress); None: a fresh run
        self.seal = CheckpointSeal(identity, self.progress)
        self.add_callback(self.seal)  # last: after every other callback's on_save

    def _get_eval_sampler(self, eval_dataset):
        # transformers also groups (and seed-shuffles) evaluation batches under --train_sampling_strategy
        # group_by_length; evaluate in dataset order so that each prediction lines up with its example's idx.
        if eval_dataset is None or not has_length(eval_dataset):
            return None
        return SequentialSampler(eval_dataset) if self.args.world_size <= 1 else None  # None: accelerate shards in order

    def train(self, resume_from_checkpoint=None, **kwargs):
        """`resume_from_checkpoint`: a folder `check_resume` accepted."""
        if self.callback_handler.callbacks[-1] is not self.seal:
            raise RuntimeError("CheckpointSeal must be the last callback: a callback added after it writes into "
                               "checkpoints after they are sealed.")
        self.prior = read_progress(resume_from_checkpoint) if resume_from_checkpoint else None
        if resume_from_checkpoint:
            for hook in self.method:  # GLoRA's is loaded by the mixin (before the checkpoint's weights, of its ranks)
                if hook is not self.gradnorm_rank:
                    hook.load(resume_from_checkpoint)
        return super().train(resume_from_checkpoint=resume_from_checkpoint, **kwargs)

    def _init_training_state(self, max_steps, num_update_steps_per_epoch, num_train_epochs, resume_from_checkpoint, trial):
        epochs_trained, batches_trained = super()._init_training_state(
            max_steps, num_update_steps_per_epoch, num_train_epochs, resume_from_checkpoint, trial)
        # A resume may change how often the run logs and checkpoints (arguments.RESUME_MAY_CHANGE); transformers
        # would keep the checkpoint's cadence from its trainer_state.json.
        self.state.compute_steps(self.args, max_steps)
        if self.state.global_step >= max_steps:
            # A checkpoint of the run's last step. transformers stops only after a step (should_training_stop is set
            # in on_step_end), so when --max_steps ends mid-epoch it would resume into that epoch and train step
            # max_steps + 1. Every epoch is trained: the loop is skipped and the run goes on to its evaluation.
            return num_train_epochs, 0
        return epochs_trained, batches_trained

    def _save_checkpoint(self, model, trial):
        if self.args.should_save:  # a checkpoint folder being (re)written is not complete until sealed again
            unseal(Path(self._get_output_dir(trial), f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"))
        with contextlib.ExitStack() as stack:
            for hook in self.method:
                if isinstance(hook, AdaLoraCallback):
                    stack.enter_context(hook.full_width_checkpoint())
            super()._save_checkpoint(model, trial)

    def progress(self, seconds: float) -> dict:
        """The whole run's figures at a checkpoint, `seconds` into this process's training: the Trainer's own loss
        accumulators (those its train_loss divides by the steps) plus the resumed checkpoint's."""
        prior = self.prior or NO_PROGRESS
        return {"global_step": self.state.global_step, "train_runtime": prior["train_runtime"] + seconds,
                "train_loss_sum": prior["train_loss_sum"] + self._total_loss_scalar + float(self._tr_loss)}

    def whole_run_metrics(self, part: dict) -> dict:
        """The Trainer's figures of this train() call, for the whole run: after a resume they cover only the part
        since the checkpoint, kept as resumed_part_*; train_runtime, train_loss, epoch and the rates become the whole
        run's (the checkpoint's recorded progress plus this part)."""
        metrics = {**part, "epoch": self.state.epoch}
        if self.prior is None:
            return metrics
        steps, part_steps = self.state.global_step, self.state.global_step - self.prior["global_step"]
        metrics.update({f"resumed_part_{key}": part[key] for key in TRAIN_FIGURES},
                       resumed_from_step=self.prior["global_step"], resumed_part_steps=part_steps)
        runtime = self.prior["train_runtime"] + part["train_runtime"]
        metrics.update(
            train_runtime=runtime,
            train_loss=(self.prior["train_loss_sum"] + part["train_loss"] * part_steps) / max(steps, 1),
            train_steps_per_second=steps / runtime,
            train_samples_per_second=self.samples_per_step() * steps / runtime,
        )
        return metrics

    def samples_per_step(self) -> float:
        """Training examples per optimizer step as the Trainer counts them for train_samples_per_second."""
        args = self.args
        if args.max_steps > 0:
            return args.train_batch_size * args.gradient_accumulation_steps * args.world_size
        return len(self.train_dataset) * args.num_train_epochs / self.state.max_steps


class ScheduleCheck(TrainerCallback):
    """AdaLoRA and GLoRA were configured from a predicted step count; stop at once if the Trainer disagrees, or if it
    is about to train past it."""

    def __init__(self, expected_steps):
        self.expected_steps = expected_steps

    def on_train_begin(self, args, state, control, **kwargs):
        if state.max_steps != self.expected_steps:
            raise RuntimeError(f"Trainer plans {state.max_steps} optimizer steps, the schedule assumed {self.expected_steps}.")

    def on_step_begin(self, args, state, control, **kwargs):
        if state.global_step >= state.max_steps:
            raise RuntimeError(f"The Trainer is about to train step {state.global_step + 1} of a run of {state.max_steps} "
                               "steps (GlueTrainer._init_training_state no longer stops a resume at the run's end?).")


class ProgressLine(TrainerCallback):
    """With --disable_tqdm (no progress bar): one log line per logged loss, with the step, the elapsed time of this
    process's training and the ETA of the rest at the pace so far."""

    def on_train_begin(self, args, state, control, **kwargs):
        self.start, self.first_step = time.monotonic(), state.global_step

    def on_log(self, args, state, control, logs=None, **kwargs):
        done = state.global_step - self.first_step
        if not state.is_world_process_zero or "loss" not in (logs or {}) or done < 1:
            return
        elapsed = time.monotonic() - self.start
        eta = elapsed / done * (state.max_steps - state.global_step)
        logger.info(f"progress: step {state.global_step}/{state.max_steps} ({state.global_step / state.max_steps:.0%}), "
                    f"loss {logs['loss']:.4f}, {elapsed:.0f} s elapsed, ETA {eta:.0f} s")


def is_unfinished_run(output_dir: Path) -> bool:
    """run_args.json or checkpoints without all_results.json: a run that stopped or is still going."""
    return (output_dir / RUN_ARGS_FILE).exists() or any(output_dir.glob(f"{PREFIX_CHECKPOINT_DIR}-*"))


def log_to_wandb(training_args, ranks):
    """Final ranks (and GLoRA's scores) as a W&B table, when the run reports to W&B."""
    if "wandb" not in (training_args.report_to or []):
        return
    import wandb

    if wandb.run is None:
        return
    columns = ["module", "layer", "matrix", "d_in", "d_out", "initial_rank", "final_rank", "score"]
    rows = [[name] + [getattr(m, c) for c in columns[1:]] for name, m in ranks.modules.items()]
    wandb.log({"rank_allocation": wandb.Table(columns=columns, data=rows)})
    wandb.run.summary["final_ranks"] = {name: m.final_rank for name, m in ranks.modules.items()}


if __name__ == "__main__":
    main()

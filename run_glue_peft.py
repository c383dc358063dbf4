#!/usr/bin/env python
"""Fine-tune an encoder on a GLUE task with LoRA, AdaLoRA or GLoRA at the same rank budget.

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
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, get_last_checkpoint, has_length

from adapters import (
    AdaLoraCallback,
    build_peft_config,
    current_ranks,
    head_modules,
    rank_record,
    resolve_targets,
    trainable_parameters,
    unit_costs,
)
from arguments import check_args, parse_args
from eval_log import EvalLog
from glora_callback import STATE_FILE as GLORA_STATE_FILE
from glora_callback import GLoRA, TrainerHost
from glue_data import load_glue_data, tokenize_splits
from glue_tasks import GLUE_TASKS, glue_metrics
from plan import resolve_plan

logger = logging.getLogger(__name__)
IDENTITY_FILE = "run_identity.json"  # in every checkpoint: method, budget, target matrices, model


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    check_args(args)
    setup_logging()
    set_seed(args.training.seed)

    raw = load_glue_data(args.data, args.model.cache_dir)
    model, tokenizer = load_model(args.model, args.data.task)
    targets = resolve_targets(model, args.peft.target_modules)
    plan = resolve_plan(args, targets, unit_costs(model, targets), head_modules(model), len(raw["train"]))
    training_args = dataclasses.replace(args.training, output_dir=plan.output_dir, warmup_steps=plan.lr_warmup_steps)

    model = get_peft_model(model, build_peft_config(plan))
    initial_ranks = current_ranks(model)
    method = method_hooks(model, plan)
    logger.info(f"{plan.arm} ({plan.method}): {plan.num_matrices} adapted matrices, R_total {plan.rank_budget}, "
                f"{trainable_parameters(model, plan.head)}")

    check_resume(args, plan, training_args)
    prepare_output_dir(args, plan, training_args)
    encoded = tokenize_splits(raw, tokenizer, args.data, training_args)
    trainer = build_trainer(model, tokenizer, encoded, plan, training_args, method, args.data)

    trainer.add_callback(RunIdentity(run_identity(args, plan)))  # checkpoint-N/run_identity.json, for check_resume
    train_result = trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    trainer.save_model()  # the adapter, with its final ranks in rank_pattern
    trainer.save_state()

    results = dict(train_result.metrics)
    results.update(evaluate_and_write_predictions(trainer, raw, encoded, plan, training_args, args.data.eval_split))
    return write_records(results, model, plan, initial_ranks, method, training_args)


# ---- the steps of main, in order ----


def setup_logging():
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    transformers.utils.logging.set_verbosity_warning()
    datasets.utils.logging.set_verbosity_warning()


def load_model(model_args, task_name):
    """The pretrained encoder with a fresh classification head for the task, and its tokenizer."""
    task = GLUE_TASKS[task_name]
    with hub_errors_named("--model_name_or_path", model_args.model_name_or_path):
        config = AutoConfig.from_pretrained(
            model_args.model_name_or_path, num_labels=task.num_labels, finetuning_task=task_name, cache_dir=model_args.cache_dir
        )
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
    """The method's own training-loop hooks: AdaLoRA's budget schedule, or GLoRA; none for LoRA."""
    if plan.adalora is not None:
        return [AdaLoraCallback(peft_model, plan.adalora)]
    if plan.glora is not None:
        return [GLoRA(peft_model, plan.glora)]
    return []


def check_resume(args, plan, training_args):
    """--resume_from_checkpoint: the checkpoint must come from a run of the same method, budget, target matrices and
    model (its run_identity.json, and glora_state.json for GLoRA). Refused before anything is written."""
    if not training_args.resume_from_checkpoint:
        return
    folder = Path(checkpoint_folder(training_args.resume_from_checkpoint, plan.output_dir))
    if not folder.is_dir():
        raise FileNotFoundError(f"--resume_from_checkpoint {folder}: no such checkpoint folder.")
    if (folder / GLORA_STATE_FILE).is_file() and plan.method != "glora":
        raise ValueError(f"--resume_from_checkpoint {folder} holds {GLORA_STATE_FILE}: it was written by a --method glora "
                         f"run, which --method {plan.method} cannot continue.")
    if plan.method == "glora" and not (folder / GLORA_STATE_FILE).is_file():
        raise ValueError(f"--resume_from_checkpoint {folder} has no {GLORA_STATE_FILE}: it was not written by a --method "
                         "glora run, which this run is.")
    saved_file = folder / IDENTITY_FILE
    if not saved_file.is_file():
        raise FileNotFoundError(f"{saved_file} is missing: cannot check that the checkpoint's run (method, budget, target "
                                "matrices, model) is this one.")
    saved = json.loads(saved_file.read_text())
    differs = [f"{key} {saved.get(key)} there, {value} here" for key, value in run_identity(args, plan).items()
               if saved.get(key) != value]
    if differs:
        raise ValueError(f"--resume_from_checkpoint {folder} is from another run ({'; '.join(differs)}): resume it with "
                         "its own settings, or start a new run.")


def run_identity(args, plan) -> dict:
    """What a checkpoint records (run_identity.json) and a run resuming it must share."""
    return {"method": plan.method, "arm": plan.arm, "budget_unit": plan.budget_unit,
            "budget": plan.rank_budget if plan.budget_unit == "rank" else plan.param_budget,
            "target_modules": sorted(args.peft.target_modules), "model": args.model.model_name_or_path}


def prepare_output_dir(args, plan, training_args):
    """Refuse to mix with a finished or an unfinished run; write run_args.json (what was asked and what was resolved)."""
    output_dir = Path(plan.output_dir)
    if (output_dir / "all_results.json").exists():
        if not args.data.overwrite_output_dir:
            raise FileExistsError(f"{output_dir} holds a finished run; pass --overwrite_output_dir or another --output_dir.")
        if training_args.should_save:
            (output_dir / "all_results.json").unlink()  # until this run finishes, the directory is unfinished
    elif is_unfinished_run(output_dir) and not (training_args.resume_from_checkpoint or args.data.overwrite_output_dir):
        last = get_last_checkpoint(output_dir)
        resume = f"--resume_from_checkpoint {last} to continue it, or " if last else ""
        raise FileExistsError(f"{output_dir} holds an unfinished run (no all_results.json): pass {resume}"
                              "--overwrite_output_dir True to start again, or another --output_dir.")
    PartialState().wait_for_everyone()  # under DDP every process checks before the main one writes
    if training_args.should_save:
        output_dir.mkdir(parents=True, exist_ok=True)
        run_args = {**args.asked(), "resolved": plan.resolved(), "world_size": plan.world_size}
        if args.data.hpo_record:  # how hpo.py chose this run's hyper-parameters (compare_runs reads it)
            run_args["hpo"] = json.loads(Path(args.data.hpo_record).read_text())
        write_json_atomic(output_dir / "run_args.json", run_args)


def build_trainer(model, tokenizer, encoded, plan, training_args, method, data_args):
    task = GLUE_TASKS[plan.task]
    if data_args.pad_to_max_length:
        collator = default_data_collator
    else:
        collator = DataCollatorWithPadding(tokenizer, pad_to_multiple_of=8 if training_args.fp16 or training_args.bf16 else None)

    def compute_metrics(prediction):
        return glue_metrics(plan.task, prediction.predictions, prediction.label_ids)

    glora = next((hook for hook in method if isinstance(hook, GLoRA)), None)
    # --eval_split tuning: every evaluation scores the held-out tuning split (metrics eval_tuning_*), for hpo.py's
    # trials; the final one too (evaluate_and_write_predictions), so such a run never evaluates dev.
    eval_dataset = {"tuning": encoded["tuning"]} if data_args.eval_split == "tuning" else encoded[task.eval_splits[0].name]
    return GlueTrainer(
        model=model,
        args=training_args,
        train_dataset=encoded["train"],
        eval_dataset=eval_dataset,
        processing_class=tokenizer,
        data_collator=collator,
        compute_metrics=compute_metrics,
        callbacks=[ScheduleCheck(plan.total_steps), EvalLog(plan.output_dir, data_args.eval_split,
                                                                 resuming=bool(training_args.resume_from_checkpoint))]
        + [hook for hook in method if hook is not glora],
        glora=glora,
    )


def evaluate_and_write_predictions(trainer, raw, encoded, plan, training_args, eval_split="dev") -> dict:
    """Metrics of every dev split, and its per-example predictions as predictions_<split>.csv; under --eval_split
    tuning those of the tuning split alone (eval_tuning_*, predictions_tuning.csv): a trial never reads dev."""
    task = GLUE_TASKS[plan.task]
    results = {}
    for split, prefix, suffix in final_eval_splits(task, eval_split):
        output = trainer.predict(encoded[split], metric_key_prefix=prefix)
        results.update({f"{k}{suffix}": v for k, v in output.metrics.items()})
        if not training_args.should_save:
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


def write_records(results, model, plan, initial_ranks, method, training_args) -> dict:
    """ranks.json, the W&B rank table, and all_results.json last: its presence marks a finished run."""
    record = rank_record(model, plan, initial_ranks)
    for hook in method:
        hook.add_to_record(record)
    results.update(
        task=plan.task, method=plan.method, arm=plan.arm, rank_pattern=record["rank_pattern"], seed=training_args.seed, rank_budget=plan.rank_budget,
        num_adapted_matrices=plan.num_matrices, method_hook_seconds=sum(hook.method_seconds for hook in method),
        **trainable_parameters(model, plan.head),
        final_rank_total=sum(m["final_rank"] for m in record["modules"].values()),
        **{key: record[key] for key in ("budget_unit", "param_budget", "adapter_params_start",
                                        "adapter_params_after_allocation", "adapter_params_effective")},
    )
    if training_args.should_save:
        output_dir = Path(plan.output_dir)
        write_json_atomic(output_dir / "ranks.json", record)
        log_to_wandb(training_args, record)
        write_json_atomic(output_dir / "all_results.json", results)
    logger.info(f"results: {json.dumps(results, indent=1, default=str)}")
    return results


# ---- the Trainer ----


class GlueTrainer(Trainer):
    """Trainer that evaluates in dataset order, normalises the loss itself, and makes GLoRA's calls."""

    def __init__(self, *args, glora: GLoRA | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        # Sequence classifiers take **kwargs, so transformers assumes they normalise the loss by the token count
        # it passes them; they ignore it and return a batch mean. Left True, the loss is then never divided by the
        # accumulation steps (8 x 2 gives twice the gradient of 16 x 1) and is multiplied by the world size when
        # tokens are averaged across devices.
        self.model_accepts_loss_kwargs = False
        self.glora = glora
        if glora is not None:
            glora.attach(TrainerHost(self))
            self.add_callback(glora)

    def _get_eval_sampler(self, eval_dataset):
        # transformers also groups (and seed-shuffles) evaluation batches under --train_sampling_strategy
        # group_by_length; evaluate in dataset order so that each prediction lines up with its example's idx.
        if eval_dataset is None or not has_length(eval_dataset):
            return None
        return SequentialSampler(eval_dataset) if self.args.world_size <= 1 else None  # None: accelerate shards in order

    def training_step(self, model, inputs, num_items_in_batch=None):
        if self.glora is None:
            return super().training_step(model, inputs, num_items_in_batch)
        return self.glora.training_step(super().training_step, model, inputs, num_items_in_batch, self.accelerator)

    def train(self, resume_from_checkpoint=None, **kwargs):
        if self.glora is not None and resume_from_checkpoint:
            # Before the Trainer loads the checkpoint's weights and optimizer state: they have its ranks.
            self.glora.load(checkpoint_folder(resume_from_checkpoint, self.args.output_dir))
        return super().train(resume_from_checkpoint=resume_from_checkpoint, **kwargs)


class ScheduleCheck(TrainerCallback):
    """AdaLoRA and GLoRA were configured from a predicted step count; stop at once if the Trainer disagrees."""

    def __init__(self, expected_steps):
        self.expected_steps = expected_steps

    def on_train_begin(self, args, state, control, **kwargs):
        if state.max_steps != self.expected_steps:
            raise RuntimeError(f"Trainer plans {state.max_steps} optimizer steps, the schedule assumed {self.expected_steps}.")


def is_unfinished_run(output_dir: Path) -> bool:
    """run_args.json or checkpoints without all_results.json: a run that stopped or is still going."""
    return (output_dir / "run_args.json").exists() or any(output_dir.glob(f"{PREFIX_CHECKPOINT_DIR}-*"))


class RunIdentity(TrainerCallback):
    """checkpoint-N/run_identity.json at every checkpoint: what `check_resume` compares with a resuming run."""

    def __init__(self, identity: dict):
        self.identity = identity

    def on_save(self, args, state, control, **kwargs):
        if args.should_save:  # called right after the Trainer wrote the checkpoint
            write_json_atomic(Path(args.output_dir, f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}", IDENTITY_FILE),
                              self.identity)


def checkpoint_folder(resume_from_checkpoint, output_dir):
    """The folder `Trainer.train(resume_from_checkpoint=...)` loads: True means the last one in output_dir."""
    if resume_from_checkpoint is True:
        folder = get_last_checkpoint(output_dir) if os.path.isdir(output_dir) else None
        if folder is None:
            raise ValueError(f"No checkpoint to resume from in {output_dir}.")
        return folder
    return resume_from_checkpoint


def write_json_atomic(path, obj):
    tmp = Path(str(path) + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=str))
    os.replace(tmp, path)


def log_to_wandb(training_args, record):
    """Final ranks (and GLoRA's scores) as a W&B table, when the run reports to W&B."""
    if "wandb" not in (training_args.report_to or []):
        return
    import wandb

    if wandb.run is None:
        return
    columns = ["module", "layer", "matrix", "d_in", "d_out", "initial_rank", "final_rank", "score"]
    rows = [[name] + [m.get(c) for c in columns[1:]] for name, m in record["modules"].items()]
    wandb.log({"rank_allocation": wandb.Table(columns=columns, data=rows)})
    wandb.run.summary["final_ranks"] = {name: m["final_rank"] for name, m in record["modules"].items()}


if __name__ == "__main__":
    main()

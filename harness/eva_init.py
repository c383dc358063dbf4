"""EVA as an arm (--method eva): peft's own Explained Variance Adaptation (peft.tuners.lora.eva), at LoRA's budget.

Before training, peft runs the frozen model (adapters off, eval mode) on training batches and keeps an incremental
SVD of every adapted matrix's input. Each matrix offers its first round(rho x lora_r) components; the lora_r x
matrices components of highest explained-variance ratio over all matrices are kept, so a matrix gets as many ranks
as it has among them (matrices that share an input, as query/key/value do, share one SVD). lora_A is set to the kept
components, lora_B stays zero, and with peft's adjust_scaling_factors every matrix keeps the scaling alpha / lora_r.
A matrix given rank 0 loses its adapter. peft writes the ranks as rank_pattern / alpha_pattern, and training runs at
these ranks from step 1. The total is lora_r x matrices exactly (a count of the top components); ranks.json records
each matrix's uniform start and EVA's rank.

The batches are the training set in dataset order from its first example, at the training batch size, collated as
training collates them; no random number is drawn for them, and the Trainer seeds itself when it is built, after EVA,
so the training data order is that of a LoRA run with the same seed. Their seconds are the method's overhead.

A checkpoint holds EVA's ranks (eva_state.json) beside the adapter: a resume builds the layers at those ranks through
peft's own loader (no SVD runs again) before the Trainer loads the checkpoint's weights into them.
"""

import dataclasses
import time
from pathlib import Path

import torch
from peft.tuners.lora import initialize_lora_eva_weights
from transformers import TrainerCallback

from gradnorm_rank import MethodOverhead, lora_layers
from harness.records import read_json_object, write_json_atomic

PEFT_PREFIX = "base_model.model."
COLLATED_LABELS = ("label", "base_sq_error")  # columns a collator may need beyond the inputs (planted_task's)


class TrainingBatches:
    """The training set's batches in dataset order, as peft's EVA reads a dataloader: `len` and iteration (peft
    cycles through it until its SVD converges), each batch a dict of the model's inputs. Draws no random number."""

    def __init__(self, dataset, collator, batch_size: int, input_names):
        # The collator may need the label columns (the planted task's pads its vector labels by the tokens); the
        # batches handed to EVA keep the model's inputs only.
        self.input_names = [name for name in input_names if name in dataset.column_names]
        collated = self.input_names + [name for name in COLLATED_LABELS if name in dataset.column_names]
        self.dataset = dataset.select_columns(collated)
        self.collator = collator
        self.batch_size = batch_size

    def __len__(self):
        return -(-len(self.dataset) // self.batch_size)

    def __iter__(self):
        for start in range(0, len(self.dataset), self.batch_size):
            rows = self.dataset.select(range(start, min(start + self.batch_size, len(self.dataset))))
            batch = self.collator([rows[i] for i in range(len(rows))])
            yield {name: batch[name] for name in self.input_names}


class CountedForward:
    """peft's forward_fn, counting the forward passes and stopping EVA at max_batches with one line."""

    def __init__(self, max_batches: int):
        self.max_batches = max_batches
        self.calls = 0

    def __call__(self, model, inputs):
        if self.calls == self.max_batches:
            raise RuntimeError(f"EVA's SVD has not converged after --eva_max_batches {self.max_batches} forward passes "
                               "over training batches: give more, or a lower --eva_tau.")
        self.calls += 1
        return model(**inputs)


class EvaInit(TrainerCallback):
    """EVA's initialisation (`initialise`, before the Trainer is built, on a fresh run) and its ranks in every
    checkpoint (`on_save`, `load` on a resume)."""

    STATE_FILE = "eva_state.json"

    def __init__(self, peft_model, plan):
        self.peft_model = peft_model
        self.schedule = plan.eva  # plan.EvaPlan
        self.targets = plan.targets
        self.ranks = None  # {module path: EVA's rank}, once initialised or loaded
        self.forward_passes = None
        self.overhead_seconds = 0.0
        check_components(peft_model, plan)

    def initialise(self, train_dataset, collator, input_names):
        """peft's EVA on the training batches (`TrainingBatches`): sets every adapted matrix's rank and lora_A."""
        forward = CountedForward(self.schedule.max_batches)
        batches = TrainingBatches(train_dataset, collator, self.schedule.batch_size, input_names)
        start = time.perf_counter()
        initialize_lora_eva_weights(self.peft_model, batches, forward_fn=forward, show_progress_bar=False,
                                    gather_distributed_inputs=False)  # every process reads the same batches
        self.overhead_seconds = time.perf_counter() - start
        self.forward_passes = forward.calls
        layers = lora_layers(self.peft_model)
        self.ranks = {name: int(layers[name].r["default"]) if name in layers else 0 for name in self.targets}

    def on_save(self, args, state, control, **kwargs):
        if args.should_save:  # right after the Trainer wrote checkpoint-<step>
            write_json_atomic(Path(args.output_dir, f"checkpoint-{state.global_step}", self.STATE_FILE),
                              {"ranks": self.ranks, "forward_passes": self.forward_passes,
                               "method_overhead_seconds": self.overhead_seconds})

    def load(self, folder):
        """Before the Trainer loads checkpoint `folder`: its EVA ranks, built by peft's loader from placeholder
        components (zeros, which the checkpoint's lora_A replaces), and the seconds the initialisation took."""
        saved = read_json_object(Path(folder, self.STATE_FILE))
        modules = dict(self.peft_model.named_modules())
        placeholders = {PEFT_PREFIX + name: torch.zeros(rank, modules[PEFT_PREFIX + name].in_features)
                        for name, rank in saved["ranks"].items()}
        initialize_lora_eva_weights(self.peft_model, eva_state_dict=placeholders)
        self.ranks, self.forward_passes = saved["ranks"], saved["forward_passes"]
        self.overhead_seconds = saved["method_overhead_seconds"]

    def overhead_record(self) -> dict:
        """The method overhead under the names GLoRA's records use (gradnorm_rank.MethodOverhead): EVA's
        initialisation as one total (its signal/resize/grown-slice parts: null)."""
        return MethodOverhead.unsplit_record(self.overhead_seconds)

    def add_to_record(self, record):
        """ranks.json's `eva` block (records.RankRecord): EVA's settings, the forward passes its SVD took and its
        seconds; each matrix's EVA rank is its final_rank."""
        record.eva = {**dataclasses.asdict(self.schedule), "forward_passes": self.forward_passes,
                      "method_overhead_seconds": self.overhead_seconds}


def check_components(peft_model, plan):
    """peft's incremental SVD needs round(rho x lora_r) components of every matrix's input, at most its width."""
    components = round(plan.eva.rho * plan.lora_r)
    narrowest = min(layer.get_base_layer().in_features for layer in lora_layers(peft_model).values())
    if components > narrowest:
        raise ValueError(f"--eva_rho {plan.eva.rho:g} x --lora_r {plan.lora_r} asks EVA for {components} components "
                         f"of each matrix's input, but the narrowest adapted matrix takes {narrowest} inputs: give "
                         f"--eva_rho <= {narrowest / plan.lora_r:g}.")

"""The seconds the method adds to training (`GradNormRank.overhead`), in a module of its own so that the readers of
records (the harness's reports) need not import torch."""

import dataclasses
from dataclasses import dataclass


@dataclass
class MethodOverhead:
    """Wall-clock seconds the method's own work adds to training, by part, each measured where it runs: `signal`
    (observe_gradients and the `delta` signal's backward hooks, during the warm-up), `resize` (reallocate: allocation,
    resize and optimizer rebuild) and `grown_slice` (after_optimizer_step: Adam's bias correction of the slices the
    resize added). `record()` names them as every record and reader does: method_overhead_seconds (the total) and
    method_overhead_<part>_seconds."""

    signal_seconds: float = 0.0
    resize_seconds: float = 0.0
    grown_slice_seconds: float = 0.0

    @property
    def seconds(self) -> float:
        return self.signal_seconds + self.resize_seconds + self.grown_slice_seconds

    def record(self) -> dict:
        parts = {f"method_overhead_{f.name}": getattr(self, f.name) for f in dataclasses.fields(self)}
        return {"method_overhead_seconds": self.seconds, **parts}

    @classmethod
    def unsplit_record(cls, seconds: float) -> dict:
        """The record of a method whose overhead is one measured total (its parts null: not measured apart)."""
        return {"method_overhead_seconds": seconds, **{f"method_overhead_{f.name}": None for f in dataclasses.fields(cls)}}

    @classmethod
    def from_record(cls, record: dict) -> "MethodOverhead":
        return cls(**{f.name: record[f"method_overhead_{f.name}"] for f in dataclasses.fields(cls)})

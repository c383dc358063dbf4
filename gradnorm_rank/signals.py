"""The signal family: what `GradNormRank` measures per adapted matrix before it apportions the rank budget.

Every signal goes through the same EMA (or, under calibration, the mean over the calibration batches), the same
score normalisation, apportioner, resize and Adam rule; only the per-matrix number differs. A signal is one object
behind a small interface (`Signal`), made by `make_signal(name, ...)`:

    install()            before the first observation: hooks, if it needs any (removed by remove())
    step_values()        once per observation (an optimizer step after its last micro-batch, or one calibration
                         batch): one value per matrix, float tensor, or None when the signal observes nothing
    final_values(agg)    at the allocation: the aggregated values -> the values the shares are taken from
    permute(shares)      after the score normalisation: the shares as allocated (identity but for `shuffled`)
    entries(k)           the entries the value of matrix k is a norm over (score_norm per_entry)
    buffer_bytes()       the memory the signal's own accumulators hold now

The signals (G = sum over tokens of g x^T, the gradient of the frozen d_out x d_in weight W, from the layer's input
x and output gradient g; the statistics are summed over the observation's micro-batches and reset after it):
- `lora_b`: ||grad B||_F; `lora_ab`: sqrt(||grad A||^2 + ||grad B||^2) (no hooks).
- `delta` and `weight_grad`: ||G||_F (one quantity, two names: `delta` is the name earlier runs recorded).
- `sensitivity`: GoRA's sum_ij |W_ij G_ij|, aggregated over the observations.
- `whitened`: ||G C_x^{-1/2}||_F, C_x = E[x x^T] over the observation's tokens (uncentred, K-FAC's input factor).
- `kfac`: ||C_g^{-1/2} G C_x^{-1/2}||_F with C_g = E[g g^T]: the gradient's norm under the Kronecker-factored
  Gauss-Newton metric C_g (x) C_x. Both factors damped as C + damping * tr(C)/d * I (`signal_damping`; relative,
  so it does not depend on the scale of x or g). Computed through Cholesky factors: ||L_g^{-1} G L_x^{-T}||_F equals
  the symmetric-square-root form because ||M L^{-T}||_F^2 = tr(M C^{-1} M^T) for C = L L^T.
- `activation_variance`: EVA's statistic, the explained-variance ratio of the top r principal components of the
  layer's input tokens: sum_{i<=r} lambda_i / sum_i lambda_i, lambda the eigenvalues of the centred covariance of the
  inputs (EVA fits peft's IncrementalPCA, which centres, and divides by the total variance). r = `top_r` or the
  matrix's starting LoRA rank (EVA's r). Padding tokens are left out where the model was called with an
  attention_mask (as EVA's default prepare function does). EVA itself then picks the globally largest components;
  here the statistic goes through the common apportioner like every other signal (the EVA arm runs peft's own).
- `update_concentration`: the share of ||s B A||_F^2 in its top r singular values (r = `top_r`, default 1; B A has
  rank at most the LoRA rank, where the share is always 1), at the allocation. It observes nothing, so it needs
  training steps before the allocation (the warm-up, not calibration).
- `update_norm`: ||s B A||_F / ||W||_F, the size of the update relative to the frozen weight, at the allocation
  (||B A||_F^2 = tr(B^T B A A^T), r x r). Like `update_concentration` it reads s B A as it stands, which is the
  update since the start under peft's default initialisation (B = 0); it observes nothing and needs the warm-up.
- `random`: scores drawn uniformly in [0, 1) from a generator seeded by `signal_seed` (observes nothing).
- `shuffled`: the shares of `shuffle_base` (a signal above), permuted over the matrices by a permutation seeded by
  `signal_seed`: the base's distribution of shares, placed at random.

Padding: G is exact over all rows (masked positions get g = 0); C_x and C_g use the unmasked tokens.
"""

import time

import torch
import torch.distributed as dist


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def norms(params):
    """Frobenius norms of the parameters' gradients in one fused call (0 where a gradient is missing)."""
    grads = [p.grad if p.grad is not None else torch.zeros(1, device=p.device) for p in params]
    return torch.stack(torch._foreach_norm(grads)).float()


class Signal:
    """One number per adapted matrix. `layers`: {name: peft LoraLayer}; `ranks`: their ranks at the start; `config`:
    the GradNormRankConfig; `overhead`: the MethodOverhead its hooks add seconds to; `model`: the peft model."""

    def __init__(self, model, layers, adapter_name, ranks, config, overhead):
        self.model, self.layers, self.adapter_name = model, layers, adapter_name
        self.ranks, self.config, self.overhead = ranks, config, overhead

    def install(self):
        pass

    def remove(self):
        pass

    def step_values(self):
        return None

    def final_values(self, aggregated):
        return aggregated

    def permute(self, shares: list) -> list:
        return shares

    def entries(self, k: int) -> int:
        layer = list(self.layers.values())[k]
        return layer.out_features * layer.in_features

    def buffer_bytes(self) -> int:
        return 0


class LoraGradient(Signal):
    """`lora_b` and `lora_ab`: norms of the LoRA factors' gradients."""

    def step_values(self):
        a = self.adapter_name
        b_norms = norms([layer.lora_B[a].weight for layer in self.layers.values()])
        if self.name == "lora_b":
            return b_norms
        a_norms = norms([layer.lora_A[a].weight for layer in self.layers.values()])
        return torch.sqrt(a_norms**2 + b_norms**2)

    def entries(self, k):
        layer, rank = list(self.layers.values())[k], self.ranks[k]
        b_only = self.name == "lora_b"
        return layer.out_features * rank if b_only else (layer.out_features + layer.in_features) * rank


class LayerStatistics:
    """Per layer and observation: G = sum g x^T (fp32), and where asked the uncentred sums of x x^T, x, g g^T over
    the unmasked tokens and their count. Filled by hooks on the LoRA layer; `reset()` after each observation."""

    def __init__(self, layer, gradient: bool, inputs: bool, outputs: bool):
        base = layer.get_base_layer()
        device, d_out, d_in = base.weight.device, base.out_features, base.in_features
        zeros = lambda *shape: torch.zeros(*shape, dtype=torch.float32, device=device)  # noqa: E731
        self.G = zeros(d_out, d_in) if gradient else None
        self.xx, self.x = (zeros(d_in, d_in), zeros(d_in)) if inputs else (None, None)
        self.gg = zeros(d_out, d_out) if outputs else None
        self.tokens = zeros(())

    def tensors(self):
        return [t for t in (self.G, self.xx, self.x, self.gg, self.tokens) if t is not None]

    def reset(self):
        for t in self.tensors():
            t.zero_()

    def all_reduce(self):
        """Under DDP: G averaged over the processes (as DDP averages gradients), the token sums added."""
        for t in self.tensors():
            dist.all_reduce(t)
        if self.G is not None:
            self.G /= dist.get_world_size()


class Hooked(Signal):
    """Signals computed from G and the input/output-gradient statistics, collected by hooks while installed."""

    needs = {"delta": (True, False, False), "weight_grad": (True, False, False), "sensitivity": (True, False, False),
             "whitened": (True, True, False), "kfac": (True, True, True), "activation_variance": (False, True, False)}

    def install(self):
        gradient, inputs, outputs = self.needs[self.name]
        self.stats = [LayerStatistics(layer, gradient, inputs, outputs) for layer in self.layers.values()]
        self.mask = None  # the current forward's attention_mask, when the model was called with one
        self.hooks = [self.model.register_forward_pre_hook(self._keep_mask, with_kwargs=True)]
        self.hooks += [layer.register_forward_hook(self._make_hook(stats)) for layer, stats in
                       zip(self.layers.values(), self.stats)]

    def remove(self):
        for hook in getattr(self, "hooks", []):
            hook.remove()
        self.hooks, self.stats = [], None

    def buffer_bytes(self):
        return sum(t.numel() * t.element_size() for s in self.stats or [] for t in s.tensors())

    def _keep_mask(self, module, args, kwargs):
        mask = kwargs.get("attention_mask")
        self.mask = mask.detach().reshape(-1).bool() if mask is not None else None

    @staticmethod
    def _rows(t, mask):
        """The unmasked tokens of a (..., d) activation as rows; all rows if the mask does not fit its shape."""
        flat = t.reshape(-1, t.shape[-1]).float()
        if mask is not None and mask.numel() == flat.shape[0]:
            return flat[mask.to(flat.device)]
        return flat

    def _make_hook(self, stats):
        def forward_hook(module, args, output):
            if not torch.is_grad_enabled():
                return
            start = time.perf_counter()
            x, mask = args[0].detach(), self.mask
            if stats.xx is not None:
                rows = self._rows(x, mask)
                stats.xx.add_(rows.T @ rows)
                stats.x.add_(rows.sum(0))
                stats.tokens.add_(rows.shape[0])
            self.overhead.signal_seconds += time.perf_counter() - start
            if (stats.G is None and stats.gg is None) or not output.requires_grad:
                return

            def grad_hook(grad_output):
                start = time.perf_counter()
                # G = sum over tokens of g x^T. bf16 stays bf16 (tensor cores, fp32 accumulation); fp16 would
                # overflow with a loss scale, so fp32.
                dtype = torch.bfloat16 if x.dtype == torch.bfloat16 else torch.float32
                g = grad_output.reshape(-1, grad_output.shape[-1]).to(dtype)
                stats.G.add_((g.T @ x.reshape(-1, x.shape[-1]).to(dtype)).float())
                if stats.gg is not None:
                    rows = self._rows(grad_output, mask)
                    stats.gg.add_(rows.T @ rows)
                self.overhead.signal_seconds += time.perf_counter() - start

            output.register_hook(grad_hook)

        return forward_hook

    def step_values(self):
        if _distributed():
            for stats in self.stats:
                stats.all_reduce()
        values = torch.stack([self.value(k, s) for k, s in enumerate(self.stats)])
        for stats in self.stats:
            stats.reset()
        return values

    def value(self, k, stats):
        """Matrix k's value from its statistics; NaN when they are not finite (the step is then skipped)."""
        name = self.name
        if name in ("delta", "weight_grad"):
            return stats.G.norm()
        if name == "sensitivity":
            weight = list(self.layers.values())[k].get_base_layer().weight
            return (weight.detach().float() * stats.G).abs().sum()
        if not all(torch.isfinite(t).all() for t in stats.tensors()):  # a factorisation would fail on them
            return torch.tensor(float("nan"), device=stats.tokens.device)
        if name == "activation_variance":
            return explained_variance(covariance(stats, centred=True), self.top_r(k))
        tokens = stats.tokens.clamp(min=1)
        whitened = whiten(stats.G.double(), damped(stats.xx.double() / tokens, self.config.signal_damping), side="right")
        if name == "whitened":
            return whitened.norm().float()
        return whiten(whitened, damped(stats.gg.double() / tokens, self.config.signal_damping), side="left").norm().float()

    def top_r(self, k):
        return self.config.top_r or self.ranks[k]


def covariance(stats, centred):
    tokens = stats.tokens.double().clamp(min=1)
    second = stats.xx.double() / tokens
    if not centred:
        return second
    mean = stats.x.double() / tokens
    return second - torch.outer(mean, mean)


def damped(c, damping):
    """C + damping * mean eigenvalue * I (relative damping: the same whatever the scale of C)."""
    d = c.shape[0]
    return c + damping * (torch.trace(c) / d).clamp(min=torch.finfo(c.dtype).tiny) * torch.eye(d, dtype=c.dtype,
                                                                                              device=c.device)


def whiten(m, c, side):
    """M L^{-T} (side right, C = L L^T the d_in-side covariance) or L^{-1} M (side left): the Frobenius norm of the
    result equals that of M C^{-1/2} or C^{-1/2} M."""
    lower = torch.linalg.cholesky(c)
    if side == "right":
        return torch.linalg.solve_triangular(lower, m.T, upper=False).T
    return torch.linalg.solve_triangular(lower, m, upper=False)


def explained_variance(c, r):
    """Share of the total variance (trace of C) in C's r largest eigenvalues."""
    eigenvalues = torch.linalg.eigvalsh(c).flip(0).clamp(min=0)
    total = eigenvalues.sum()
    return (eigenvalues[:r].sum() / total).float() if total > 0 else torch.zeros((), dtype=torch.float32)


class UpdateConcentration(Signal):
    """The share of ||s B A||_F^2 in its top r singular values, read at the allocation (observes nothing)."""

    def final_values(self, aggregated):
        a, r = self.adapter_name, self.config.top_r or 1
        shares = []
        for layer in self.layers.values():
            update = layer.scaling[a] * layer.lora_B[a].weight.detach().double() @ layer.lora_A[a].weight.detach().double()
            singular = torch.linalg.svdvals(update)
            total = (singular**2).sum()
            shares.append((singular[:r] ** 2).sum() / total if total > 0 else torch.zeros((), dtype=torch.float64))
        return torch.stack(shares).to(aggregated)


class UpdateNorm(Signal):
    """||s B A||_F / ||W||_F per matrix, read at the allocation (observes nothing)."""

    def final_values(self, aggregated):
        a, values = self.adapter_name, []
        for layer in self.layers.values():
            b, down = layer.lora_B[a].weight.detach().double(), layer.lora_A[a].weight.detach().double()
            update = torch.trace((b.T @ b) @ (down @ down.T)).clamp(min=0).sqrt() * abs(layer.scaling[a])
            values.append(update / layer.get_base_layer().weight.detach().double().norm())
        return torch.stack(values).to(aggregated)


class Random(Signal):
    """Uniform draws in [0, 1), one per matrix, from a generator seeded by `signal_seed`."""

    def final_values(self, aggregated):
        generator = torch.Generator().manual_seed(self.config.signal_seed)
        return torch.rand(len(self.layers), generator=generator, dtype=torch.float64).to(aggregated)


class Shuffled(Signal):
    """`shuffle_base`'s shares permuted over the matrices by a permutation seeded by `signal_seed`."""

    def __init__(self, *args):
        super().__init__(*args)
        self.base = make_signal(self.config.shuffle_base, *args)

    def install(self):
        self.base.install()

    def remove(self):
        self.base.remove()

    def step_values(self):
        return self.base.step_values()

    def final_values(self, aggregated):
        return self.base.final_values(aggregated)

    def entries(self, k):
        return self.base.entries(k)

    def buffer_bytes(self):
        return self.base.buffer_bytes()

    def permute(self, shares):
        generator = torch.Generator().manual_seed(self.config.signal_seed)
        order = torch.randperm(len(shares), generator=generator).tolist()
        return [shares[i] for i in order]


HOOKED_SIGNALS = tuple(Hooked.needs)  # hooks on the forward pass while the signal is collected
CLASSES = {"lora_b": LoraGradient, "lora_ab": LoraGradient, "update_concentration": UpdateConcentration,
           "update_norm": UpdateNorm, "random": Random, "shuffled": Shuffled, **{name: Hooked for name in Hooked.needs}}


def make_signal(name, model, layers, adapter_name, ranks, config, overhead) -> Signal:
    """The signal `name` (one of config.SIGNALS) over `layers`, not yet installed."""
    signal = CLASSES[name](model, layers, adapter_name, ranks, config, overhead)
    signal.name = name
    return signal

"""Per-document low-rank adapters on a model's projections, batched: row b of a batch has its own adapter.

For a Linear W (out × in) chosen by name, each batch row b adds  (x_b A_bᵀ) B_bᵀ · alpha/rank  to W x_b, with
A_b (rank × in) random and B_b (out × rank) zero, so a fresh adapter leaves the model's output unchanged;
`attn` and `mlp` add it, from the sublayer's input, to the whole attention or MLP sublayer's output.
`head` adapts the tied output head the same way: `logit_delta(h)` is added to h Eᵀ before the softcap (the
1.0611 record's lm_head adapter); the caller passes it to the model's `head`.
`reset()` starts every row over (a new document); `reset(keep_a=True)` zeroes B alone, so each row's A
carries what its earlier documents trained into it (eval.ttt_lora_warm_a, the 1.0611 record's warm-started A).
With `per_pass`, a looped block's hooked modules have one adapter per pass: each hook counts its calls in the
forward (zeroed by a pre-hook on the embedding, the forward's first module).
A forward of n < batch rows uses the first n adapters (the documents still running are a prefix of the
batch: they drop out at its end); `active = False` switches the adapters off. The adapters are forward
hooks, which torch.compile traces into the model's graph, pass counters included (the rows come from the
input's shape, so a smaller batch is no new graph under dynamic shapes).
The base weights are not touched.
"""
from __future__ import annotations

import math

import torch
from torch import nn

# Names in eval.ttt_lora_targets -> attribute path inside each block (pgolf.layers.Block). attn and mlp hook
# the whole sublayer: a parallel adapter from its normed input to its output (the 1.0611 record's o and MLP
# adapters). head: the tied output head, no module of a block.
TARGETS = {"q": "attn.q", "k": "attn.k", "v": "attn.v", "o": "attn.proj", "mlp_fc": "mlp.fc",
           "mlp_proj": "mlp.proj", "attn": "attn", "mlp": "mlp", "head": None}


class BatchedLoRA(nn.Module):
    def __init__(self, model: nn.Module, targets: list[str], rank: int, alpha: float | None, batch: int,
                 seed: int = 0, per_pass: bool = False):
        """per_pass: a block applied several times per forward (depth recurrence) gets adapters of its own
        for each pass (eval.ttt_lora_per_pass, the 1.0611 record's one adapter per layer application);
        otherwise its passes share one."""
        super().__init__()
        unknown = sorted(set(targets) - set(TARGETS))
        if unknown:
            raise ValueError(f"eval.ttt_lora_targets: unknown {unknown}; expected some of {sorted(TARGETS)}")
        self.rank, self.scale = rank, (alpha or rank) / rank
        schedule = model.config.schedule(model.looping)
        hooked = [(i, block.get_submodule(TARGETS[t])) for i, block in enumerate(model.blocks)
                  for t in targets if TARGETS[t]]
        weight = model.tok_emb.weight
        # (in, out) of each adapter: the hooked modules' (with per_pass, one per pass of its block, in pass
        # order; a sublayer maps model_dim to model_dim), then the head's (model_dim -> vocab) last.
        # slots[k]: hooked module k's adapters.
        sizes, self.slots = [], []
        dim = model.config.model_dim
        for i, module in hooked:
            passes = schedule.count(i) if per_pass else 1
            self.slots.append(list(range(len(sizes), len(sizes) + passes)))
            sizes += [(getattr(module, "in_features", dim), getattr(module, "out_features", dim))] * passes
        self.has_head = "head" in targets
        if self.has_head:
            sizes.append((weight.size(1), weight.size(0)))
        self.a = nn.ParameterList(nn.Parameter(torch.empty(batch, rank, n_in, device=weight.device))
                                  for n_in, _ in sizes)
        self.b = nn.ParameterList(nn.Parameter(torch.empty(batch, n_out, rank, device=weight.device))
                                  for _, n_out in sizes)
        # One draw per adapter, kept on the device: every reset copies it, with no host-to-device copy.
        gen = torch.Generator().manual_seed(seed)
        self.a_init = [_uniform(a.shape[1:], 1.0 / math.sqrt(a.size(-1)), gen).to(weight.device) for a in self.a]
        self.active = True
        # Calls of each hooked module in the current forward (its block's pass), zeroed as the forward
        # starts: the embedding is the first module hidden_states calls.
        self.calls = [0] * len(hooked)
        self.handles = [module.register_forward_hook(self._hook(k)) for k, (_, module) in enumerate(hooked)]
        self.handles.append(model.tok_emb.register_forward_pre_hook(self._new_forward))
        self.reset()

    @torch.no_grad()
    def reset(self, keep_a: bool = False) -> None:
        """Fresh adapters for every row, all rows and every reset from the same draw: a document's result
        depends neither on the documents before it nor on its row in the batch (nor on the rank count).
        keep_a: B alone is zeroed (the adapter still adds nothing); A keeps what the row's earlier documents,
        all scored already, trained into it, so a document's result then depends on its row's predecessors."""
        for a, init, b in zip(self.a, self.a_init, self.b):
            if not keep_a:
                a.copy_(init.expand_as(a))
            b.zero_()

    def _delta(self, i: int, x: torch.Tensor) -> torch.Tensor:
        """Adapter i's output for the [rows, n, in] input: each row through its own adapter."""
        rows = x.size(0)
        a, b = self.a[i][:rows], self.b[i][:rows]
        return torch.bmm(torch.bmm(x, a.transpose(1, 2).to(x.dtype)), b.transpose(1, 2).to(x.dtype)) * self.scale

    def _new_forward(self, module, inputs) -> None:
        for k in range(len(self.calls)):
            self.calls[k] = 0

    def _hook(self, k: int):
        slots = self.slots[k]

        def add_delta(module, inputs, output):
            passed = self.calls[k]
            self.calls[k] = passed + 1
            if not self.active:  # global phases train the base weights alone
                return output
            return output + self._delta(slots[passed] if len(slots) > 1 else slots[0], inputs[0])
        return add_delta

    def logit_delta(self, hidden: torch.Tensor) -> torch.Tensor | None:
        """The head adapter's addition to the logits before the softcap, [rows, n, vocab]; None without one."""
        if not (self.has_head and self.active):
            return None
        return self._delta(len(self.a) - 1, hidden)

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


def _uniform(shape, bound: float, gen: torch.Generator) -> torch.Tensor:
    """U(-bound, bound), drawn on the CPU from `gen` (the same numbers on every device)."""
    return torch.rand(shape, generator=gen).mul_(2 * bound).sub_(bound)

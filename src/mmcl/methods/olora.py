"""`olora`: orthogonal LoRA subspaces, one adapter per step (scenario setting).

Reference: Wang, Chen, Ge, Zhou, Xi, Zheng, Zhang, Gui, Huang, "Orthogonal Subspace Learning for
Language Model Continual Learning" (O-LoRA), Findings of EMNLP 2023.

What this method does per step of the stream:
- step 1 trains the LoRA adapter the model already has (peft's "default" adapter, injected by
  `VLM` into the language model's `vlm.lora_targets`); every later step k adds a new adapter
  `step<k>` to the same modules with peft's multi-adapter support (`inject_adapter_in_model` with a
  new `adapter_name` on layers that are already LoRA layers, then `set_adapter` of the list of all
  adapter names on every LoRA layer). peft initialises B at zero, so adding an adapter leaves the
  model's output unchanged.
- every adapter stays active (peft's LoRA layer adds the outputs of all active adapters), the
  previous ones frozen (requires_grad False: not in the optimiser, bitwise unchanged); only the
  current adapter is trained in the language model. At test time `predict` is the base class's
  greedy generation with all adapters summed: no task / step / scenario id is needed or read.
- loss = answer-token cross-entropy
         + lambda_1 * sum over LoRA layers, over previous adapters i of sum_jk |(A_i A_t^T)_jk|
         + lambda_2 * sum over the current adapter's A and B matrices of ||W||_2
  with A of shape (r, in) as peft stores it, so A_i A_t^T is the paper's A_i^T A_t (r x r).

Follows the paper: a new low-rank subspace per task, earlier ones frozen and kept, the L1 of the
overlap matrices between the current A and every previous A as the orthogonality term with weight
lambda_1 (0.5 in the authors' code), an L2 term on the current adapter with weight lambda_2 (0 by
default in the authors' code; like their code, the sum of per-matrix Frobenius norms, not squared),
inference without a task id by summing every adapter. Previous adapters as separate peft adapters is
equivalent to the authors' concatenation of earlier A / B along the rank (same alpha / r scaling).

Our reconstruction / adaptation: one adapter per *step* (the 20-step protocol gets 20 adapters,
returning scenarios get a new one); the multimodal parts outside the language model (vision tower,
vision-language projector) train as `vlm.*` says for every method, as in `finetune` (the paper has
no vision side; so O-LoRA has the same budget as the other methods and does not protect those
parts); new adapters' A initialised by peft's default (Kaiming-uniform) under a generator seeded by
(seed, step) so runs and resumes are reproducible; a fresh optimiser per step is required
(`train.reset_optimizer`), since each step trains different parameters.

Why peft's multi-adapter and not our own A / B stacks: `VLM` already injects LoRA with peft
(`inject_adapter_in_model`, no `PeftModel` wrapper), and peft's layers support several named
adapters per layer with summed outputs; adding more names to the same layers keeps the model one
module tree, `VLM.lora_parameters()` / `trainable_state_dict()` and the HF generation path unchanged.
peft's `BaseTunerLayer.set_adapter` marks every active adapter trainable, so trainability is
set again after each call (`_set_trainable`).

State: the number of adapters (rebuilt before the model state is loaded) and, in the model state,
every adapter's weights, also the frozen ones (the base class saves only trainable parameters).
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch

from mmcl.methods.base import Method, register
from mmcl.seeds import derive_seed


def adapter_name(k: int) -> str:
    """Adapter of step k (0-based): step 0 keeps the VLM's own "default" adapter."""
    return "default" if k == 0 else f"step{k}"


@register("olora")
class OLoRA(Method):
    settings = ("scenario",)
    fsdp = False  # adds LoRA modules to the language model at every step: not to a sharded one
    #: candidates tried on validation data by `mmcl sweep` (the same budget for every method)
    search_space = {"scenario": {"lambda_1": [0.05, 0.5, 5.0]}}

    #: allowed ranges of the numeric hyper-parameters (checked when the config loads)
    ranges = {"lambda_1": ">=0", "lambda_2": ">=0"}
    @dataclass
    class Hparams:
        lambda_1: float = 0.5  # weight of the orthogonality term sum |A_i A_t^T| (previous adapters i, current t)
        lambda_2: float = 0.0  # weight of the L2 term on the current adapter (sum of ||A_t||_2 + ||B_t||_2)

    def __init__(self, stream, cfg, hp, setting=None):
        if hp.lambda_1 < 0 or hp.lambda_2 < 0:
            raise ValueError(f"olora needs lambda_1 >= 0 and lambda_2 >= 0, got {hp.lambda_1}, {hp.lambda_2}")
        super().__init__(stream, cfg, hp, setting)
        if self.model.params.lm_train != "lora":
            raise ValueError(f"olora needs vlm.lm_train=lora, got {self.model.params.lm_train!r}")
        if not cfg["train"]["reset_optimizer"]:
            raise ValueError("olora needs train.reset_optimizer=true (each step trains a new adapter)")
        self.num_adapters = 1  # the VLM's "default" adapter
        self.current = 0  # the adapter being trained

    # -- adapters -----------------------------------------------------------------------
    def lora_layers(self) -> list:
        from peft.tuners.lora import LoraLayer

        return [m for m in self.model.language_model.modules() if isinstance(m, LoraLayer)]

    @property
    def names(self) -> list[str]:
        return [adapter_name(k) for k in range(self.num_adapters)]

    def add_adapter(self) -> int:
        """A new adapter on the same modules (B = 0: the output is unchanged); returns its index."""
        from peft import LoraConfig, inject_adapter_in_model

        p, k = self.model.params, self.num_adapters
        cfg = LoraConfig(r=p.lora_r, lora_alpha=p.lora_alpha, lora_dropout=p.lora_dropout,
                         target_modules=list(p.lora_targets), bias="none")
        with torch.random.fork_rng(), warnings.catch_warnings():
            # peft warns that the model already has an adapter: several adapters is the point here
            warnings.filterwarnings("ignore", message="Already found a `peft_config`")
            torch.manual_seed(derive_seed(self.cfg["seed"], "module", k))
            inject_adapter_in_model(cfg, self.model.language_model, adapter_name=adapter_name(k))
        self.num_adapters = k + 1
        return k

    def adapter_parameters(self, k: int, which: str = "AB") -> list[torch.nn.Parameter]:
        """Parameters of adapter k over all LoRA layers ("A", "B" or "AB")."""
        name, out = adapter_name(k), []
        for layer in self.lora_layers():
            if "A" in which:
                out.append(layer.lora_A[name].weight)
            if "B" in which:
                out.append(layer.lora_B[name].weight)
        return out

    def _set_trainable(self) -> None:
        """Every adapter active (outputs summed); only the current one trainable."""
        names = self.names
        for layer in self.lora_layers():
            layer.set_adapter(names)  # peft: marks every active adapter trainable ...
            for n in names:  # ... so freeze the previous ones again
                trainable = n == adapter_name(self.current)
                layer.lora_A[n].requires_grad_(trainable)
                layer.lora_B[n].requires_grad_(trainable)

    # -- steps ---------------------------------------------------------------------------
    def before_experience(self, exp):
        if exp.index > 0:
            self.current = self.add_adapter()
        self._set_trainable()

    # -- loss ----------------------------------------------------------------------------
    def orthogonality(self) -> torch.Tensor:
        """sum over LoRA layers and previous adapters i of sum |A_i A_t^T| (0 at the first step)."""
        cur = adapter_name(self.current)
        total = None
        for layer in self.lora_layers():
            a_t = layer.lora_A[cur].weight
            for k in range(self.current):
                a_i = layer.lora_A[adapter_name(k)].weight.detach()
                term = (a_i @ a_t.T).abs().sum()
                total = term if total is None else total + term
        return total if total is not None else torch.zeros((), device=self.model.device)

    def l2(self) -> torch.Tensor:
        return sum(torch.linalg.norm(w) for w in self.adapter_parameters(self.current))

    def loss_terms(self, batch) -> dict[str, torch.Tensor]:
        """The unweighted terms: 'task' (answer-token cross-entropy), 'orth' and 'l2'."""
        return {"task": self.model.loss(batch), "orth": self.orthogonality(), "l2": self.l2()}

    def training_loss(self, batch):
        task = self.model.loss(batch)
        loss = task
        if self.hp.lambda_1 and self.current > 0:
            loss = loss + self.hp.lambda_1 * self.orthogonality()
        if self.hp.lambda_2:
            loss = loss + self.hp.lambda_2 * self.l2()
        return loss

    # -- state ---------------------------------------------------------------------------
    def model_state(self, checkpoint: bool = False) -> dict:
        """Trainable parameters plus every adapter (the frozen previous ones too)."""
        names = {n for n, p in self.model.named_parameters() if p.requires_grad or "lora_" in n}
        return {k: v.detach().clone() for k, v in self.model.state_dict().items() if k in names}

    def extra_state(self):
        return {"num_adapters": self.num_adapters, "current": self.current}

    def restore_structure(self, extra):
        while self.num_adapters < extra["num_adapters"]:  # adapters first: the model state holds them
            self.add_adapter()
        self.current = extra["current"]
        self._set_trainable()

    def load_extra_state(self, state):
        if state["num_adapters"] != self.num_adapters:
            raise ValueError(f"olora: {self.num_adapters} adapters, checkpoint has {state['num_adapters']}")
        self.current = state["current"]

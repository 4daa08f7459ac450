"""A scalar head on a causal LM's backbone: reward models (and later value heads).

The head reads the last hidden state at each sequence's final token (right
padding: position attention_mask.sum() - 1) and maps it to one number. It
sits on the same backbone as the policy, LoRA included, so a reward model is
trained exactly like any other objective and saved as an adapter plus one small
file, ``reward_head.safetensors``.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from prefopt.errors import PrefoptError

HEAD_FILE = "reward_head.safetensors"
HEAD_META = "reward_head.json"


def _backbone(lm):
    """The transformer without its vocabulary projection (LoRA layers stay injected)."""
    base = lm.get_base_model() if hasattr(lm, "get_base_model") else lm
    return base.base_model


class ScalarHeadModel(nn.Module):
    """lm's backbone + Linear(hidden, 1): one scalar per sequence."""

    def __init__(self, lm, hidden_size: int):
        super().__init__()
        self.lm = lm
        self.head = nn.Linear(hidden_size, 1)
        # Small initial rewards: the Bradley-Terry loss starts near ln 2.
        nn.init.normal_(self.head.weight, std=1.0 / (hidden_size + 1) ** 0.5)
        nn.init.zeros_(self.head.bias)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = _backbone(self.lm)(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state  # (N, T, H)
        last = attention_mask.sum(-1) - 1  # (N,) index of each row's final token
        pooled = hidden[torch.arange(hidden.shape[0], device=hidden.device), last]  # (N, H)
        return self.head(pooled.to(self.head.weight.dtype)).squeeze(-1).float()  # (N,)

    def save_head(self, folder: Path) -> None:
        save_file({k: v.detach().cpu().contiguous() for k, v in self.head.state_dict().items()}, str(Path(folder) / HEAD_FILE))
        (Path(folder) / HEAD_META).write_text(json.dumps({"hidden_size": self.head.in_features}))

    def load_head(self, folder: Path) -> None:
        path = Path(folder) / HEAD_FILE
        if not path.is_file():
            raise PrefoptError(f"'{folder}' holds no reward head ({HEAD_FILE}); was it trained with --algo reward?")
        self.head.load_state_dict(load_file(str(path)))


def attach_scalar_head(lm) -> ScalarHeadModel:
    """Wrap a loaded policy (plain or peft) with a fresh, trainable scalar head."""
    hidden = lm.config.hidden_size if hasattr(lm, "config") else lm.get_base_model().config.hidden_size
    model = ScalarHeadModel(lm, hidden).to(next(lm.parameters()).device)
    return model


def forward_rewards(model: ScalarHeadModel, batch: dict) -> torch.Tensor:
    """(N,) scalar rewards for the N rows of a collated batch."""
    return model(batch["input_ids"], batch["attention_mask"])


def load_reward_model(run_dir: str | Path, device: str | torch.device = "cpu") -> ScalarHeadModel:
    """A reward model run (its outputs hold a saved scalar head, see ScalarHeadModel.save_head), ready to
    score (eval mode, no grad), e.g. one trained by `prefopt run --algo reward`.

    Reads the run's config.yaml for the base model, then puts the saved LoRA
    adapter (or the fully fine-tuned model) and the head on top. A QLoRA-trained
    adapter is applied to the float base, which differs slightly from the
    4-bit base it was trained on.
    """
    import yaml
    from transformers import AutoModelForCausalLM

    from prefopt.core.models import resolve_model

    run_dir = Path(run_dir)
    config_file = run_dir / "config.yaml"
    if not config_file.is_file():
        raise PrefoptError(f"'{run_dir}' is not a prefopt run folder (no config.yaml)")
    config = yaml.safe_load(config_file.read_text())
    full = (run_dir / "model").is_dir()  # full fine-tuning, else a LoRA adapter
    folder = run_dir / "model" if full else run_dir / "adapter"
    if not (folder / HEAD_FILE).is_file():  # what makes a reward model is its saved head, whatever the algorithm
        raise PrefoptError(f"'{run_dir}' is not a reward model run (no reward head saved)")
    if full:
        lm = AutoModelForCausalLM.from_pretrained(folder)
    else:
        from peft import PeftModel

        base = AutoModelForCausalLM.from_pretrained(resolve_model(config["model"]))
        lm = PeftModel.from_pretrained(base, folder)
    model = attach_scalar_head(lm)
    model.load_head(folder)
    model.to(device).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def policy_value_forward(model: ScalarHeadModel, batch: dict, first: int | None = None,
                         return_entropy: bool = False) -> dict[str, torch.Tensor]:
    """One backbone pass giving the policy's token log-probs, the head's values and (``return_entropy``) the
    policy's next-token entropies.

    For PPO: the value head reads every position's hidden state. Only the
    columns from the first response position on are kept (as in
    ``prefopt.core.logprobs.forward_token_logps``, so the columns line up with a
    reference forward of the same batch). Log-probs come from the output
    projection applied to the final hidden states; where it is a plain
    projection (``fused_head``) only response rows are projected, chunk by
    chunk (``hidden_token_logps``), else the (N, K, V) logits are made. Returns
    (N, K) tensors: logps, mask, values (the value of the state before each
    token) and, when asked, entropy (no grad, 0 off the mask).
    """
    from prefopt.core.logprobs import (
        chunked_entropy,
        first_response_position,
        fused_head,
        hidden_token_logps,
        selective_log_softmax,
    )

    input_ids, loss_mask = batch["input_ids"], batch["loss_mask"]  # (N, T)
    first = first_response_position(loss_mask) if first is None else first
    hidden = _backbone(model.lm)(input_ids=input_ids, attention_mask=batch["attention_mask"], use_cache=False).last_hidden_state
    hidden = hidden[:, first - 1 : -1]  # (N, K, H): the states before (and predicting) tokens first .. T-1
    values = model.head(hidden.to(model.head.weight.dtype)).squeeze(-1).float()  # (N, K)
    parts = fused_head(model.lm)
    if parts is not None:
        out = hidden_token_logps(hidden, parts[1], input_ids[:, first:], loss_mask[:, first:].float(), return_entropy)
    else:
        base = model.lm.get_base_model() if hasattr(model.lm, "get_base_model") else model.lm
        logits = base.get_output_embeddings()(hidden)  # (N, K, V)
        mask = loss_mask[:, first:].float()  # (N, K)
        labels = input_ids[:, first:].masked_fill(mask == 0, 0)  # (N, K); padding ids may be out of range
        logps = selective_log_softmax(logits, labels) * mask  # (N, K)
        out = (logps, mask, chunked_entropy(logits) * mask) if return_entropy else (logps, mask)
    result = {"logps": out[0], "mask": out[1], "values": values}
    if return_entropy:
        result["entropy"] = out[2]
    return result

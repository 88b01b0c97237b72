"""Learnable-context prompts (CoOp, GroupCoOp) on the frozen text path of an open_clip model.

`TextTower` runs the model's own frozen text path on token *embeddings*, so learned context vectors can be
spliced in; with the embeddings of real tokens it reproduces `model.encode_text` exactly.

Prompts are cut after their end-of-text token when the tower allows it: under a causal attention mask no
position sees a later one, so the padding after the pooled end token cannot change the features, and a
prompt of 8 tokens costs 8 positions instead of the context length (77 for OpenAI's CLIP).
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from gcctl.clip.captions import DEFAULT_CONTEXT
from gcctl.errors import GcctlError

_POOL_TYPES = ("argmax", "eos", "first", "last")
CLASS_POSITIONS = ("end", "middle", "front")
# Stands for one context token in the tokenised template; replaced by a learned vector.
_PLACEHOLDER = "X"


def _text_parts(model: nn.Module) -> dict:
    """The pieces of the text path, from a `CLIP` (attributes on the model) or a `CustomTextCLIP` (`model.text`)."""
    if hasattr(model, "token_embedding"):
        return {
            "token_embedding": model.token_embedding,
            "positional_embedding": model.positional_embedding,
            "transformer": model.transformer,
            "attn_mask": model.attn_mask,
            "ln_final": model.ln_final,
            "text_projection": model.text_projection,
            "pool_type": model.text_pool_type,
            "eos_id": getattr(model, "text_eos_id", None),
        }
    text = getattr(model, "text", None)
    # A TextTransformer with a CLS token or a padding mask changes the attention mask per input: not supported.
    if text is not None and hasattr(text, "token_embedding") and text.cls_emb is None and not text.use_pad_mask:
        return {
            "token_embedding": text.token_embedding,
            "positional_embedding": text.positional_embedding,
            "transformer": text.transformer,
            "attn_mask": text.attn_mask,
            "ln_final": text.ln_final,
            "text_projection": text.text_projection,
            "pool_type": text.pool_type,
            "eos_id": text.eos_id,
        }
    raise GcctlError(
        f"prompt learning needs an open_clip text transformer with token embeddings; "
        f"{type(model).__name__} has another text tower (e.g. Hugging Face or CoCa): choose a CLIP-style model"
    )


class TextTower(nn.Module):
    """The frozen text path of an open_clip model, fed with token embeddings instead of token ids."""

    def __init__(self, model: nn.Module):
        super().__init__()
        parts = _text_parts(model)
        if parts["pool_type"] not in _POOL_TYPES:
            raise GcctlError(f"text pooling '{parts['pool_type']}' is not supported for prompt learning; need one of {_POOL_TYPES}")
        self.token_embedding = parts["token_embedding"]
        self.positional_embedding = parts["positional_embedding"]
        self.transformer = parts["transformer"]
        self.ln_final = parts["ln_final"]
        self.text_projection = parts["text_projection"]
        self.pool_type = parts["pool_type"]
        self.eos_id = parts["eos_id"]
        self.register_buffer("attn_mask", parts["attn_mask"], persistent=False)
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> "TextTower":
        return super().train(False)  # frozen: dropout and friends stay off

    @property
    def width(self) -> int:
        return self.token_embedding.weight.shape[1]

    @property
    def device(self) -> torch.device:
        return self.token_embedding.weight.device

    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.token_embedding(tokens.to(self.device))

    def needed_length(self, tokens: torch.Tensor) -> int:
        """How many leading positions of `tokens` [P, L] determine the features: up to the last end token when
        the mask is causal and the end token is pooled, else all of them. (Padding is id 0.)"""
        if self.attn_mask is None or self.pool_type not in ("argmax", "eos"):
            return tokens.shape[1]
        used = (tokens != 0).long().cumsum(dim=1).argmax(dim=1)  # the last non-padding position of each row
        return int(used.max()) + 1

    def forward(self, embeddings: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """Text features [P, D] (not normalised) of token embeddings [P, L, W]; `tokens` [P, L] locate the pooled token."""
        cast_dtype = self.transformer.get_cast_dtype()
        length = embeddings.shape[1]  # prompts may be cut short (see needed_length)
        x = embeddings.to(cast_dtype) + self.positional_embedding[:length].to(cast_dtype)
        mask = self.attn_mask[:length, :length] if self.attn_mask is not None else None
        x = self.transformer(x, attn_mask=mask)
        x = self.ln_final(x)
        from open_clip.transformer import (
            text_global_pool,  # here: open_clip costs 2 s to import
        )

        x = text_global_pool(x, tokens, self.pool_type, eos_token_id=self.eos_id)
        if self.text_projection is None:
            return x
        if isinstance(self.text_projection, nn.Linear):
            return self.text_projection(x)
        return x @ self.text_projection


def _token_count(tokenizer, text: str) -> int:
    """Tokens of `text` without start/end tokens (padding is id 0 in open_clip tokenizers)."""
    return int((tokenizer([text])[0] != 0).sum()) - 2


def _template(name: str, n_ctx: int, class_position: str) -> str:
    """The prompt text with one placeholder word per context token."""
    ctx = [_PLACEHOLDER] * n_ctx
    half = n_ctx // 2
    words = {
        "end": ctx + [name],
        "front": [name] + ctx,
        "middle": ctx[:half] + [name] + ctx[half:],
    }[class_position]
    return " ".join(words) + "."


def _context_positions(n_ctx: int, name_len: int, class_position: str) -> list[int]:
    """Token positions of the context slots (position 0 is the start token)."""
    half = n_ctx // 2
    if class_position == "end":
        return list(range(1, 1 + n_ctx))
    if class_position == "front":
        return list(range(1 + name_len, 1 + name_len + n_ctx))
    return list(range(1, 1 + half)) + list(range(1 + half + name_len, 1 + n_ctx + name_len))


class PromptLearner(nn.Module):
    """Learnable context vectors spliced into one tokenised prompt per entry of `names`.

    Prompt p reads "<context> {names[p]}." with the class name at the end, front or middle of the context.
    `context_of[p]` picks the row of `contexts` prompt p uses: all zeros share one context (CoOp), the class
    index gives class-specific contexts, `arange(P)` gives each prompt its own (GroupCoOp).
    Only `contexts` is trainable; the text tower is frozen.
    """

    def __init__(
        self,
        tower: TextTower,
        tokenizer,
        names: Sequence[str],
        context_of: Sequence[int],
        *,
        ctx_init: str | None = DEFAULT_CONTEXT,
        n_ctx: int = 4,
        class_position: str = "end",
        generator: torch.Generator | None = None,
    ):
        super().__init__()
        if class_position not in CLASS_POSITIONS:
            raise GcctlError(f"class position '{class_position}' is unknown; choose one of {', '.join(CLASS_POSITIONS)}")
        if len(names) != len(context_of) or not names:
            raise ValueError("need one context index per prompt name")
        self.tower = tower
        if ctx_init:
            n_ctx = _token_count(tokenizer, ctx_init)
        if n_ctx < 1:
            raise GcctlError("prompt context needs at least one token: give --ctx-init words or --n-ctx ≥ 1")
        tokens, positions = self._tokenise(tokenizer, names, n_ctx, class_position)
        tokens = tokens[:, : tower.needed_length(tokens)]
        self.register_buffer("tokens", tokens.to(tower.device))
        self.register_buffer("ctx_positions", positions.to(tower.device))
        self.register_buffer("context_of", torch.as_tensor(list(context_of), dtype=torch.long, device=tower.device))
        with torch.no_grad():
            self.register_buffer("base_embeddings", tower.embed(tokens))
            n_contexts = int(self.context_of.max()) + 1
            if ctx_init:
                init = tower.embed(tokenizer([ctx_init]))[0, 1 : 1 + n_ctx].float()
                init = init.expand(n_contexts, -1, -1).clone()
            else:
                init = torch.randn(n_contexts, n_ctx, tower.width, generator=generator).to(tower.device) * 0.02
        self.contexts = nn.Parameter(init)

    @staticmethod
    def _tokenise(tokenizer, names: Sequence[str], n_ctx: int, class_position: str) -> tuple[torch.Tensor, torch.Tensor]:
        rows, positions = [], []
        placeholder_id = int(tokenizer([_PLACEHOLDER])[0][1])
        for name in names:
            tokens = tokenizer([_template(name, n_ctx, class_position)])[0]
            name_len = _token_count(tokenizer, name)
            slots = _context_positions(n_ctx, name_len, class_position)
            # start + context + name + "." + end; fewer means the tokenizer truncated the prompt
            if int((tokens != 0).sum()) != n_ctx + name_len + 3:
                raise GcctlError(f"the prompt for '{name}' does not fit the model's text context length; shorten the class name or the context")
            if not bool((tokens[slots] == placeholder_id).all()):
                raise GcctlError(f"cannot place context tokens around '{name}' with this tokenizer; use class position 'end'")
            rows.append(tokens)
            positions.append(torch.tensor(slots))
        return torch.stack(rows), torch.stack(positions)

    def forward(self) -> torch.Tensor:
        """Text features [P, D] of every prompt (not normalised), differentiable in `contexts`."""
        ctx = self.contexts[self.context_of].to(self.base_embeddings.dtype)
        index = self.ctx_positions.unsqueeze(-1).expand(-1, -1, ctx.shape[-1])
        embeddings = self.base_embeddings.scatter(1, index, ctx)
        return self.tower(embeddings, self.tokens)

    def learned(self) -> dict:
        """What training changed, as a run's params.pt keeps it."""
        return {"contexts": self.contexts.detach().clone()}

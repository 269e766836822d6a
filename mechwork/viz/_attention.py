"""Attention patterns of chosen heads on one prompt, token strings on both axes."""

from __future__ import annotations

import html
from collections.abc import Sequence

import plotly.graph_objects as go
import torch
from jaxtyping import Int
from plotly.subplots import make_subplots
from torch import Tensor

from ..hooks import cache_activations
from ..hooks._patching import position_labels


def _tokens(model, prompt) -> Int[Tensor, "1 pos"]:
    if isinstance(prompt, str):
        return model.to_tokens(prompt)
    tokens = torch.as_tensor(prompt)
    return tokens.unsqueeze(0) if tokens.ndim == 1 else tokens[:1]


def token_labels(model, tokens: Sequence[int]) -> list[str]:
    """The hooks layer's ``"i: token"`` position labels (unique, so repeated tokens keep separate axis
    slots), escaped for HTML."""
    return [html.escape(label) for label in position_labels(model, torch.as_tensor(tokens).unsqueeze(0))]


def attention_patterns(model, prompt, heads: Sequence[tuple[int, int]], *, title: str | None = None) -> go.Figure:
    """One heatmap per ``(layer, head)``: rows are query positions, columns key positions.

    ``prompt`` is a string (tokenised by the model) or token ids (the first prompt is drawn).
    """
    if not heads:
        raise ValueError("attention_patterns needs at least one (layer, head)")
    tokens = _tokens(model, prompt)
    layers = sorted({layer for layer, _ in heads})
    for layer, head in heads:
        if not (0 <= layer < model.cfg.n_layers and 0 <= head < model.cfg.n_heads):
            raise ValueError(f"no head {layer}.{head}: the model has {model.cfg.n_layers} layers of "
                             f"{model.cfg.n_heads} heads")
    _, cache = cache_activations(model, tokens, [f"blocks.{layer}.attn.hook_pattern" for layer in layers])
    labels = token_labels(model, tokens[0].tolist())
    fig = make_subplots(rows=1, cols=len(heads), subplot_titles=[f"head {layer}.{head}" for layer, head in heads],
                        horizontal_spacing=0.08)
    for col, (layer, head) in enumerate(heads, start=1):
        pattern = cache[f"blocks.{layer}.attn.hook_pattern"][0, head].float()
        fig.add_trace(go.Heatmap(
            z=pattern.tolist(), x=labels, y=labels, colorscale="Blues", zmin=0, zmax=1, showscale=col == 1,
            hovertemplate=f"head {layer}.{head}<br>query %{{y}}<br>key %{{x}}<br>attention %{{z:.3f}}<extra></extra>",
        ), row=1, col=col)
        fig.update_yaxes(autorange="reversed", row=1, col=col)
    fig.update_xaxes(title_text="key position")
    fig.update_yaxes(title_text="query position", row=1, col=1)
    fig.update_layout(title=html.escape(title or "attention patterns"), height=max(420, 22 * len(labels) + 160),
                      width=max(520, 420 * len(heads)))
    return fig

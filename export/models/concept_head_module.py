"""The ConceptSeg-R1 concept head: Q learned queries cross-attend to the generated tokens' hidden states and are
projected into SAM 3's 256-d prompt space ("latent concept tokens").

Module and parameter names follow the research code (mymodels/conceptr1.py, mymodels/qwen2_vl.py) so the published
safetensors load by name: learnable_query.param.weight, connector.pos_embed, connector.blocks.N.{norm0,norm1,norm2,
attn.q,attn.kv,attn.proj,mlp.fc1,mlp.fc2}, proj_to_sam.{0,2}.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# Research defaults: Qwen2VLVisionConnectorSimple(depth=4, ...) with its class defaults num_heads=16, mlp_ratio=4.
CONNECTOR_DEPTH = 4
CONNECTOR_HEADS = 16
CONNECTOR_MLP_RATIO = 4
SAM_PROMPT_DIM = 256
LAYER_NORM_EPS = 1e-6


class LearnableQuery(nn.Module):
    """Q learned query vectors (an Embedding indexed 0..Q-1, as in the research LearnableQueryLayer)."""

    def __init__(self, num_queries: int, hidden_size: int):
        super().__init__()
        self.param = nn.Embedding(num_queries, hidden_size)
        nn.init.normal_(self.param.weight, mean=0.0, std=0.02)

    def forward(self, batch: int) -> torch.Tensor:
        return self.param.weight.unsqueeze(0).expand(batch, -1, -1)


class CrossAttention(nn.Module):
    """Queries attend to all key/value positions: no mask, no positional information on the keys."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, query: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
        batch, length, dim = query.shape
        q = self.q(query).reshape(batch, length, self.num_heads, -1).transpose(1, 2)
        k, v = self.kv(memory).reshape(batch, memory.shape[1], 2, self.num_heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(batch, length, dim))


class QuickGeluMlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.fc1(x)
        return self.fc2(x * torch.sigmoid(1.702 * x))


class ConnectorBlock(nn.Module):
    """Pre-LN cross-attention-only block: q += attn(norm0(q), norm1(hs)); q += mlp(norm2(q))."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.norm0 = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.norm1 = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.norm2 = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.attn = CrossAttention(dim, num_heads)
        self.mlp = QuickGeluMlp(dim, dim * CONNECTOR_MLP_RATIO)

    def forward(self, query: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
        query = query + self.attn(self.norm0(query), self.norm1(memory))
        return query + self.mlp(self.norm2(query))


class Connector(nn.Module):
    def __init__(self, num_queries: int, dim: int):
        super().__init__()
        self.blocks = nn.ModuleList(ConnectorBlock(dim, CONNECTOR_HEADS) for _ in range(CONNECTOR_DEPTH))
        self.pos_embed = nn.Parameter(torch.zeros(1, num_queries, dim))

    def forward(self, query: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
        query = query + self.pos_embed[:, : query.shape[1]]
        for block in self.blocks:
            query = block(query, memory)
        return query


class ConceptHead(nn.Module):
    """Hidden states of the generated tokens [B, T, H] -> concept tokens [B, Q, 256].

    Built around existing modules so the same parameters serve the checkpoint model (where the research code keeps
    them as top-level attributes) and a standalone graph for export.
    """

    def __init__(self, learnable_query: LearnableQuery, connector: Connector, proj_to_sam: nn.Sequential):
        super().__init__()
        self.learnable_query = learnable_query
        self.connector = connector
        self.proj_to_sam = proj_to_sam

    @classmethod
    def create(cls, num_queries: int, hidden_size: int) -> "ConceptHead":
        if hidden_size % CONNECTOR_HEADS:
            raise ValueError(f"hidden_size {hidden_size} must be divisible by the connector's {CONNECTOR_HEADS} heads")
        proj_to_sam = nn.Sequential(nn.Linear(hidden_size, hidden_size), nn.GELU(), nn.Linear(hidden_size, SAM_PROMPT_DIM))
        return cls(LearnableQuery(num_queries, hidden_size), Connector(num_queries, hidden_size), proj_to_sam)

    @property
    def num_queries(self) -> int:
        return self.learnable_query.param.num_embeddings

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        query = self.learnable_query(hidden_states.shape[0])
        return self.proj_to_sam(self.connector(query, hidden_states))

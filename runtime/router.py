"""The learned Shortcut Router at serving time: features available before decoding -> p(shortcut suffices).

Features (their order is data: manifest["router"]["features"]): the mean post-norm hidden state of the prefill over
the question's tokens, then SAM 3's answer to the question alone: presence, best instance score, mean of the top-5
instance scores, share of the top-K instances above 0.5, and the question's word count. The classifier is a tiny
ONNX graph (standardisation + logistic regression) fitted by `cseg calib fit-router`.
"""

from __future__ import annotations

import numpy as np

SCALAR_FEATURES = ("presence", "instance_max", "instance_top5_mean", "instances_above_half", "question_words")
FEATURES = ("question_hidden_mean", *SCALAR_FEATURES)


def features(hidden_states: np.ndarray, question_tokens: np.ndarray, presence: float, scores: np.ndarray,
             question: str) -> np.ndarray:  # fmt: skip
    """[1, H + 5] float32 feature row."""
    pooled = hidden_states[0, question_tokens].mean(axis=0) if len(question_tokens) else hidden_states[0].mean(axis=0)
    ranked = np.sort(scores.reshape(-1))[::-1]
    scalars = [presence, ranked[0], ranked[:5].mean(), float((ranked > 0.5).mean()), float(len(question.split()))]
    return np.concatenate([pooled.astype(np.float32), np.asarray(scalars, np.float32)])[None]


class Router:
    def __init__(self, graph, settings: dict):
        self.graph = graph
        self.threshold = float(settings["threshold"])

    def score(self, pending, shortcut, presence: float, question: str) -> float:
        row = features(pending.prefilled.hidden_states, pending.question_tokens, presence, shortcut.scores, question)
        return float(self.graph.run({"features": row})["p_shortcut"].reshape(()))

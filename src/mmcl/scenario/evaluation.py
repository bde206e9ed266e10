"""Evaluation of the scenario setting: generate answers for every step's test questions, score them.

One row of the `vqa` and `grounding_f1` matrices per call (scores on every step j after
training step `after`; `after=-1` gives the base model's scores b[j]), computed with
`mmcl.scenario.metrics.ScenarioScorer`. Questions are answered in batches of
`eval.batch_size` with short-answer questions first and grounding questions last: a batch
stops decoding when all its answers ended, so short answers do not wait for box lists.
Batched greedy decoding equals one-by-one decoding, so the order changes no answer.

Answers are deterministic given the weights, so a row is not generated again when the
model has not changed since the last evaluation (`zeroshot`: one evaluation, not T + 1).
"""
from __future__ import annotations

import hashlib

import torch
from tqdm.auto import tqdm

from mmcl.scenario.metrics import ScenarioScorer


def _state_digest(model) -> str:
    """Hash of every weight and buffer: whatever a method changes, a changed model gets new answers."""
    h = hashlib.sha256()
    for name, t in model.state_dict().items():
        h.update(name.encode())
        h.update(t.detach().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


@torch.no_grad()
def evaluate_scenario(method, stream, after: int, cfg: dict, progress: bool = False) -> dict[str, list]:
    """{"vqa": row, "grounding_f1": row, "predictions": [one record per test question]}."""
    method.model.eval()
    digest = _state_digest(method.model)
    cache = getattr(method, "_eval_answers", None)
    if cache is None or cache[0] != digest:
        cache = method._eval_answers = (digest, {})
    rows: dict[str, list] = {"vqa": [], "grounding_f1": []}
    records = []
    bs = cfg["eval"]["batch_size"]
    for j, exp in enumerate(tqdm(stream, desc="evaluating", leave=False, disable=None if progress else True)):
        if j > after >= 0 and not cfg["eval"]["future"]:
            rows["vqa"].append(None)
            rows["grounding_f1"].append(None)
            continue
        test = exp.test
        if j not in cache[1]:
            order = torch.argsort(test.grounding.long(), stable=True)
            answers: list[str] = [""] * len(test)
            k = 0
            for batch in test.subset(order).batches(bs):
                for a in method.predict(batch, None):
                    answers[int(order[k])] = a
                    k += 1
            cache[1][j] = answers
        answers = cache[1][j]
        scorer = ScenarioScorer().update(answers, test.answers, test.grounding.tolist())
        for name, v in scorer.result().items():
            rows[name].append(v)
        records += [{"step": exp.name, "id": i, "scenario": sc, "question": q, "answer": a, "prediction": p}
                    for i, sc, q, a, p in zip(test.ids, test.scenarios, test.questions, test.answers, answers)]
    method.model.train()
    return {**rows, "predictions": records}


def last_row_by_scenario(rows: dict[str, list], stream) -> dict[str, dict[str, float | None]]:
    """Per matrix, the final row averaged over each scenario's steps (the 20-step protocol has 5 per scenario)."""
    out = {}
    for name, A in rows.items():
        per: dict[str, list] = {}
        for e, v in zip(stream, A[-1]):
            per.setdefault(e.scenario, []).append(v)
        out[name] = {sc: (sum(vs) / len(vs) if None not in vs else None) for sc, vs in per.items()}
    return out

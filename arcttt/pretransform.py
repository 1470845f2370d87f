"""A symmetry of the inputs alone, chosen by the model: the task's frame.

A task whose rule is a flip, a rotation or a transpose followed by something the model can do (a
copy, a colour map) becomes that simpler task when the same symmetry is applied to every input (the
demonstrations' and the test's) and to no output: the pairs ``(P x, y)``. The outputs are untouched,
so an answer found in the new frame is the answer to the task, with nothing to invert.

Which symmetry: the one under which the model finds the demonstrations' outputs most likely, each
output given the demonstrations before it (one teacher-forced forward per symmetry; the outputs are
the same tokens in every frame, so their summed log-likelihoods compare directly). The identity wins
ties and whatever the model cannot tell apart, so a task whose inputs have no better frame is left
as it is.

Measured on our own small model (weights/arcttt-tiny-syn, which has not learnt flips or rotations;
bench/RESULTS.md): the chosen frame was the rule's own symmetry on the held-out flips and rotations,
and with it TTT solved them. Off in every preset but ``cpu-tiny``: a published checkpoint is run
exactly as it was trained.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace


from arcttt.augment import D8_NAMES, Augmentation
from arcttt.data import Pair, Task


@dataclass
class Frame:
    """The chosen symmetry of the inputs and every candidate's summed log-likelihood of the
    demonstration outputs (higher is likelier), for the task's record."""

    symmetry: str = "id"
    logprobs: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> dict:
        return {"symmetry": self.symmetry, "logprobs": {k: round(v, 4) for k, v in self.logprobs.items()}}


def reframe(task: Task, symmetry: str) -> Task:
    """``task`` with ``symmetry`` applied to every input (demonstrations and tests), outputs as they are."""
    if symmetry == "id":
        return task
    aug = Augmentation(symmetry)
    return replace(task, train=tuple(Pair(aug.grid(p.input), p.output) for p in task.train),
                   test_inputs=tuple(aug.grid(g) for g in task.test_inputs))


def demo_logprob(model, task: Task, tm, max_len: int) -> float | None:
    """The model's summed log-probability of ``task``'s demonstration outputs after the first (and
    their end markers), each given the demonstrations before it, in one forward; None when the
    demonstrations do not fit ``max_len`` tokens."""
    import torch

    from arcttt.forward import inference, model_device

    enc = tm.encode(task.train, task.test_inputs[0], loss_on_demo_outputs=True)
    if len(enc.ids) > max_len or not enc.loss_mask.any():
        return None
    ids = torch.as_tensor(enc.ids, device=model_device(model))[None]
    with inference(model):
        logits = model(input_ids=ids).logits[0, :-1].float()
    logp = torch.log_softmax(logits, -1).gather(1, ids[0, 1:, None])[:, 0].cpu().numpy()
    return float(logp[enc.loss_mask[1:]].sum())


def choose_frame(model, task: Task, tm, max_len: int, symmetries=D8_NAMES) -> Frame:
    """The symmetry of the inputs under which ``model`` finds the demonstration outputs likeliest
    (the identity unless another is strictly likelier); the identity when there is nothing to
    compare (fewer than two demonstrations, or they do not fit)."""
    scores = {}
    for name in symmetries:
        lp = demo_logprob(model, reframe(task, name), tm, max_len)
        if lp is None:
            return Frame("id", {})
        scores[name] = lp
    return Frame(max(scores, key=lambda k: (scores[k], k == "id")), scores)  # a tie goes to the identity

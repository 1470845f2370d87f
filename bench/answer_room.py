"""How many test inputs lose a demonstration to the room their prompt leaves for the answer, per
format: room for the largest answer (30 x 30) vs room by the task's own evidence
(``ttt_data.answer_room``), against the true answer's own room (the least any rule could leave).
Also counts the test inputs whose true answer is longer than the evidence's room (the search could
not write it: the rule's cost).

    PYTHONPATH=. python bench/answer_room.py [--split arc-agi-2-eval] [--max-len 8192]
"""

from __future__ import annotations

import argparse

from arcttt.augment import Augmentation
from arcttt.data import load_split
from arcttt.formats import answer_ids
from arcttt.modeldir import build_tokenizer, token_map_from_tokenizer
from arcttt.templates import TemplateMap, template_map, template_tokenizer
from arcttt.ttt_data import answer_room, max_answer_len, test_prompts

FORMATS = ("compact", "nvarc", "architects", "mit", "omni-arc")


def token_map(name: str):
    if name in ("mit", "omni-arc"):
        return template_map(name, template_tokenizer(name))
    return token_map_from_tokenizer(name, build_tokenizer(name))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--split", default="arc-agi-2-eval")
    parser.add_argument("--max-len", type=int, default=8192)
    args = parser.parse_args()
    tasks = load_split(args.split)
    print(f"{args.split}: {sum(t.n_test for t in tasks)} test inputs, prompts of at most {args.max_len} tokens "
          "(identity view)\n")
    print("| format | lose a demo, room 30 x 30 | lose a demo, room by evidence | lose a demo beside the true answer "
          "| true answer longer than the evidence's room |")
    print("| --- | --- | --- | --- | --- |")
    for name in FORMATS:
        tm = token_map(name)
        counts = [0, 0, 0, 0]
        for task in tasks:
            for i in range(task.n_test):
                n = len(task.train)
                truth = len(answer_ids(task.test_outputs[i], tm))
                room = answer_room(task, i, tm)
                for k, reserve in enumerate((max_answer_len(tm), room, truth)):
                    try:
                        view = test_prompts(task, i, tm, [Augmentation()], args.max_len, reserve)[0]
                        counts[k] += view.n_demos < n
                    except ValueError:  # the test input alone does not fit
                        counts[k] += 1
                counts[3] += truth > room
        print(f"| {name}{' (fixture tokenizer)' if isinstance(tm, TemplateMap) else ''} | "
              + " | ".join(str(c) for c in counts) + " |")


if __name__ == "__main__":
    main()

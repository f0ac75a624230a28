"""Inter-annotator agreement on tasks labeled by several people: Cohen's kappa.

kappa = (p_o - p_e) / (1 - p_e), p_o the observed agreement, p_e the agreement expected by chance
from each rater's own label frequencies (Cohen, 1960).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from itertools import combinations

from sqlalchemy import select

from batray.annotate.db import Database, Label, Task, User
from batray.annotate.labels import helpfulness_to_ab


def cohen_kappa(rater1: list, rater2: list) -> float | None:
    """Cohen's kappa of two raters' labels on the same items; None without items or when p_e is 1."""
    if len(rater1) != len(rater2):
        raise ValueError("both raters must label the same items")
    n = len(rater1)
    if n == 0:
        return None
    p_o = sum(x == y for x, y in zip(rater1, rater2)) / n
    c1, c2 = Counter(rater1), Counter(rater2)
    p_e = sum(c1[k] * c2[k] for k in c1.keys() | c2.keys()) / (n * n)
    if p_e == 1.0:  # both raters always gave one and the same label: kappa is undefined
        return None
    return (p_o - p_e) / (1 - p_e)


def agreement_summary(db: Database) -> dict:
    """Kappa on helpfulness (a/b terms) and acceptability over every pair of labels on the same task.

    `overall` pools all pairs (the earlier label as rater 1); `pairs` is per pair of annotators.
    """
    by_task: dict[int, list[tuple[str, str, bool, bool]]] = defaultdict(list)
    with db.read() as s:
        query = (
            select(Label.task_id, User.name, Label.helpfulness, Label.acceptable_left, Label.acceptable_right, Task.left_is_a)
            .join(User, Label.user_id == User.id)
            .join(Task, Label.task_id == Task.id)
            .order_by(Label.id)
        )
        for task_id, name, h, acc_l, acc_r, left_is_a in s.execute(query):
            acc_a, acc_b = (acc_l, acc_r) if left_is_a else (acc_r, acc_l)
            by_task[task_id].append((name, helpfulness_to_ab(h, left_is_a), acc_a, acc_b))

    help1, help2, acc1, acc2 = [], [], [], []
    per_pair: dict[tuple[str, str], tuple[list, list]] = defaultdict(lambda: ([], []))
    for labels in by_task.values():
        for first, second in combinations(labels, 2):
            help1.append(first[1])
            help2.append(second[1])
            acc1 += [first[2], first[3]]
            acc2 += [second[2], second[3]]
            # per annotator pair, in a stable (alphabetical) rater order
            (n1, h1), (n2, h2) = sorted([(first[0], first[1]), (second[0], second[1])])
            pair = per_pair[(n1, n2)]
            pair[0].append(h1)
            pair[1].append(h2)
    return {
        "overall": {
            "tasks": len(help1),
            "helpfulness_kappa": cohen_kappa(help1, help2),
            "helpfulness_agreement": (sum(a == b for a, b in zip(help1, help2)) / len(help1)) if help1 else None,
            "acceptability_kappa": cohen_kappa(acc1, acc2),
        },
        "pairs": [
            {"annotators": list(names), "tasks": len(h1), "helpfulness_kappa": cohen_kappa(h1, h2)}
            for names, (h1, h2) in sorted(per_pair.items())
        ],
    }

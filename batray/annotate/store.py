"""What the annotation app does to the database, one transaction per call, independent of HTTP.

Task handout: an annotator first gets back a task they were given and have not answered (resume),
else the first task that still needs annotators, counting labels and other annotators' live leases
(`lease_minutes`), so two people are not sent the same single-annotation task at once. Skipped tasks
come back only when nothing else is left for that annotator.

A label is taken only for a task handed to that annotator by `next_task` and not skipped since
(after its lease ran out, only while nobody else holds the task's last open place); an admin may
label any task with `override` (recorded on the label and in the export). The database itself caps
a task at `needed` labels and one per annotator (see `db`); the checks here only word the refusal.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import and_, delete, exists, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from batray.annotate.db import Assignment, Database, Label, Task, User, utcnow
from batray.data.io import RejectReport, drop_duplicate_ids, read_rows


class NotFound(Exception):
    pass


class Conflict(Exception):
    pass


def task_order_and_overlap(pair_id: str, seed: int, overlap: float) -> tuple[bool, int]:
    """(left_is_a, needed) for one pair, a pure function of (seed, pair_id): re-imports never reshuffle."""
    rng = random.Random(f"{seed}:{pair_id}")
    left_is_a = rng.random() < 0.5
    needed = 2 if rng.random() < overlap else 1
    return left_is_a, needed


def import_tasks(db: Database, uri: str, seed: int, overlap: float) -> tuple[int, RejectReport]:
    """Add the pairs of `uri` (pairs contract) as tasks; pairs already present are kept as they are.

    Returns (number added, reject report of the rows that break the contract).
    """
    rows, report = read_rows(uri, "pairs")
    unique = drop_duplicate_ids(rows, report)
    added = 0
    with db.write() as s, s.begin():
        existing = set(s.scalars(select(Task.pair_id)))
        for row in unique:
            if row["pair_id"] in existing:
                continue
            left_is_a, needed = task_order_and_overlap(row["pair_id"], seed, overlap)
            s.add(
                Task(
                    pair_id=row["pair_id"],
                    prompt=row["prompt"],
                    response_a=row["response_a"],
                    response_b=row["response_b"],
                    model_a=row.get("model_a"),
                    model_b=row.get("model_b"),
                    left_is_a=left_is_a,
                    needed=needed,
                )
            )
            added += 1
    return added, report


def user_for_token_hash(db: Database, token_hash: str) -> User | None:
    with db.read() as s:
        return s.scalar(select(User).where(User.token_hash == token_hash))


def task_view(task: Task) -> dict:
    """What the annotator sees: the prompt and the two responses in the task's display order."""
    left, right = (task.response_a, task.response_b) if task.left_is_a else (task.response_b, task.response_a)
    return {"task_id": task.id, "prompt": task.prompt, "left": left, "right": right}


@dataclass
class Store:
    db: Database
    lease_minutes: float = 30.0

    def _labels_of(self, task_col):
        return select(func.count(Label.id)).where(Label.task_id == task_col).scalar_subquery()

    def _open_tasks(self, user_id: int):
        """Tasks this annotator has not labeled that still need annotators (ignoring leases)."""
        labeled_by_me = exists().where(and_(Label.task_id == Task.id, Label.user_id == user_id))
        return select(Task).where(~labeled_by_me, self._labels_of(Task.id) < Task.needed)

    def next_task(self, user_id: int) -> dict | None:
        """The annotator's next task (and a lease on it), or None when nothing is left for them."""
        now = utcnow()
        with self.db.write() as s, s.begin():
            # 1. resume: the most recent task handed to me that I neither answered nor skipped
            mine = (
                select(Task)
                .join(Assignment, and_(Assignment.task_id == Task.id, Assignment.user_id == user_id))
                .where(~Assignment.skipped, ~exists().where(and_(Label.task_id == Task.id, Label.user_id == user_id)))
                .order_by(Assignment.assigned_at.desc(), Assignment.id.desc())
                .limit(1)
            )
            task = s.scalar(mine)
            if task is not None:
                return task_view(task)
            # 2. the first task still needing annotators, counting others' live leases
            cutoff = now - timedelta(minutes=self.lease_minutes)
            leased_by_others = (
                select(func.count(Assignment.id))
                .where(
                    Assignment.task_id == Task.id,
                    Assignment.user_id != user_id,
                    ~Assignment.skipped,
                    Assignment.assigned_at > cutoff,
                    ~exists().where(and_(Label.task_id == Assignment.task_id, Label.user_id == Assignment.user_id)),
                )
                .scalar_subquery()
            )
            never_skipped = ~exists().where(
                and_(Assignment.task_id == Task.id, Assignment.user_id == user_id, Assignment.skipped)
            )
            candidates = self._open_tasks(user_id).where(self._labels_of(Task.id) + leased_by_others < Task.needed)
            task = s.scalar(candidates.where(never_skipped).order_by(Task.id).limit(1))
            if task is None:  # 3. only my skipped tasks are left: give them back, oldest skip first
                task = s.scalar(
                    self._open_tasks(user_id)
                    .join(Assignment, and_(Assignment.task_id == Task.id, Assignment.user_id == user_id))
                    .order_by(Assignment.assigned_at, Task.id)
                    .limit(1)
                )
            if task is None:
                return None
            self._assign(s, task.id, user_id, now)
            return task_view(task)

    def _assign(self, s: Session, task_id: int, user_id: int, now) -> None:
        a = s.scalar(select(Assignment).where(Assignment.task_id == task_id, Assignment.user_id == user_id))
        if a is None:
            s.add(Assignment(task_id=task_id, user_id=user_id, assigned_at=now))
        else:
            a.assigned_at, a.skipped = now, False

    def submit(self, user_id: int, task_id: int, acceptable_left: bool, acceptable_right: bool,
               helpfulness: str, comment: str | None, override: bool = False) -> int:
        """Store one label in one transaction; returns its id once committed.

        NotFound: no such task. Conflict: already labeled by this annotator, not handed to them
        (`override` lifts that, for admins), or the task has all the labels it needs.
        """
        now = utcnow()
        try:
            with self.db.write() as s, s.begin():
                task = s.get(Task, task_id)
                if task is None:
                    raise NotFound(f"task {task_id} does not exist")
                if s.scalar(select(Label.id).where(Label.task_id == task_id, Label.user_id == user_id)) is not None:
                    raise Conflict(f"task {task_id} is already labeled by you; undo it first to change the answer")
                if not override:
                    self._check_lease(s, task, user_id, now)
                taken = set(s.scalars(select(Label.slot).where(Label.task_id == task_id)))
                slot = next((k for k in range(task.needed) if k not in taken), None)
                if slot is None:
                    raise Conflict(f"task {task_id} already has the {task.needed} label(s) it needs")
                label = Label(task_id=task_id, user_id=user_id, needed=task.needed, slot=slot,
                              acceptable_left=acceptable_left, acceptable_right=acceptable_right,
                              helpfulness=helpfulness, comment=(comment or None), created_at=now,
                              admin_override=override)
                s.add(label)
                s.flush()
                return label.id
        except IntegrityError:
            # A concurrent writer took the last slot, or this annotator's label landed first: the
            # database's constraints decided (on SQLite writers queue, so this is PostgreSQL's case).
            raise Conflict(f"task {task_id} was labeled concurrently (by you, or it got all the labels it needs)") from None

    def _check_lease(self, s: Session, task: Task, user_id: int, now) -> None:
        a = s.scalar(select(Assignment).where(Assignment.task_id == task.id, Assignment.user_id == user_id))
        if a is None or a.skipped:
            how = "you skipped it" if a is not None else "it was not handed to you"
            raise Conflict(f"task {task.id} cannot be labeled: {how}; label the task /api/next gives you")
        cutoff = now - timedelta(minutes=self.lease_minutes)
        if a.assigned_at > cutoff:
            return
        # the lease ran out: fine while the task still has an open place nobody else holds
        others = s.scalar(
            select(func.count(Assignment.id)).where(
                Assignment.task_id == task.id, Assignment.user_id != user_id, ~Assignment.skipped,
                Assignment.assigned_at > cutoff,
                ~exists().where(and_(Label.task_id == Assignment.task_id, Label.user_id == Assignment.user_id)),
            )
        )
        labels = s.scalar(select(func.count(Label.id)).where(Label.task_id == task.id))
        if labels + others >= task.needed:
            raise Conflict(f"your lease on task {task.id} ran out and it went to another annotator; "
                           "take the next task from /api/next")

    def skip(self, user_id: int, task_id: int) -> None:
        with self.db.write() as s, s.begin():
            if s.get(Task, task_id) is None:
                raise NotFound(f"task {task_id} does not exist")
            if s.scalar(select(Label.id).where(Label.task_id == task_id, Label.user_id == user_id)) is not None:
                raise Conflict(f"task {task_id} is already labeled by you")
            a = s.scalar(select(Assignment).where(Assignment.task_id == task_id, Assignment.user_id == user_id))
            if a is None:
                s.add(Assignment(task_id=task_id, user_id=user_id, assigned_at=utcnow(), skipped=True))
            else:
                a.skipped, a.assigned_at = True, utcnow()

    def undo_last(self, user_id: int) -> dict:
        """Delete the annotator's most recent label; returns that task (to show again) and the old answer."""
        with self.db.write() as s, s.begin():
            label = s.scalar(select(Label).where(Label.user_id == user_id).order_by(Label.id.desc()).limit(1))
            if label is None:
                raise NotFound("nothing to undo: you have no labels")
            task = s.get(Task, label.task_id)
            previous = {
                "acceptable_left": label.acceptable_left,
                "acceptable_right": label.acceptable_right,
                "helpfulness": label.helpfulness,
                "comment": label.comment,
            }
            s.execute(delete(Label).where(Label.id == label.id))
            self._assign(s, task.id, user_id, utcnow())  # it is my current task again (resume point)
            return {**task_view(task), "previous": previous}

    def progress(self, user_id: int) -> dict:
        with self.db.read() as s, s.begin():
            labeled = s.scalar(select(func.count(Label.id)).where(Label.user_id == user_id))
            remaining = s.scalar(select(func.count()).select_from(self._open_tasks(user_id).subquery()))
            total = s.scalar(select(func.count(Task.id)))
        return {"labeled": labeled, "remaining": remaining, "total_tasks": total}

    def summary(self) -> dict:
        """The admin view: progress per annotator and overall task coverage."""
        with self.db.read() as s, s.begin():
            counts = dict(s.execute(select(Label.user_id, func.count(Label.id)).group_by(Label.user_id)).all())
            last = dict(s.execute(select(Label.user_id, func.max(Label.created_at)).group_by(Label.user_id)).all())
            skipped = dict(
                s.execute(
                    select(Assignment.user_id, func.count(Assignment.id))
                    .where(Assignment.skipped)
                    .group_by(Assignment.user_id)
                ).all()
            )
            annotators = [
                {
                    "name": u.name,
                    "admin": u.is_admin,
                    "labeled": counts.get(u.id, 0),
                    "skipped": skipped.get(u.id, 0),
                    "last_label_at": last[u.id].isoformat() + "Z" if last.get(u.id) else None,
                }
                for u in s.scalars(select(User).order_by(User.name))
            ]
            n_labels = self._labels_of(Task.id)
            total = s.scalar(select(func.count(Task.id)))
            done = s.scalar(select(func.count(Task.id)).where(n_labels >= Task.needed))
            overlap = s.scalar(select(func.count(Task.id)).where(Task.needed > 1))
            labels = s.scalar(select(func.count(Label.id)))
            left_is_a = s.scalar(select(func.count(Task.id)).where(Task.left_is_a))
            # answers in screen terms: a large left/right imbalance is position bias
            by_position = dict(s.execute(select(Label.helpfulness, func.count(Label.id)).group_by(Label.helpfulness)).all())
        return {
            "tasks": {"total": total, "done": done, "overlap": overlap, "left_is_a": left_is_a},
            "labels": labels,
            "helpfulness_on_screen": {h: by_position.get(h, 0) for h in ("left_better", "right_better", "both_good", "both_bad")},
            "annotators": annotators,
        }


def any_admin(db: Database) -> bool:
    with db.read() as s:
        return s.scalar(select(User.id).where(User.is_admin).limit(1)) is not None


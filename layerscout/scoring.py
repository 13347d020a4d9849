"""`layerscout score`: a task's reward on given completions, for users debugging their rewards and data. Each
input line names a dataset item by id and carries one completion; the item's columns (tests, gold answer) come
from the task's data, or from the line itself. Cost: the task's reward on every line, batched (code: parallel
sandboxes).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .errors import LayerscoutError
from .tasks.base import read_jsonl


def read_completions(path: str | Path) -> list[dict]:
    """The JSONL lines {"id": ..., "completion": ..., [column: value ...]}; errors name the line."""
    path = Path(path)
    if not path.is_file():
        raise LayerscoutError(f"no such file: {path}")
    records = []
    for n, record in read_jsonl(path):
        missing = [k for k in ("id", "completion") if k not in record]
        if missing:
            raise LayerscoutError(f"{path} line {n}: missing field {', '.join(map(repr, missing))}")
        if not isinstance(record["completion"], (str, list)):
            raise LayerscoutError(f"{path} line {n}: completion must be a string (or a list of messages)")
        records.append({**record, "id": str(record["id"]), "_where": f"{path} line {n}"})
    if not records:
        raise LayerscoutError(f"{path}: no completions")
    return records


def score_completions(task: Any, records: list[dict]) -> list[dict]:
    """[{id, reward, status, detail}] for each record, in order. A record's own keys (other than id and
    completion) override the item's columns, so an id the task cannot find scores if the line gives
    `task.reward_columns` itself. Example: `score_completions(get_task("code"), [{"id": "HumanEval/0",
    "completion": "    return False\\n"}])[0]["status"] == "failed"`."""
    found = task.lookup([r["id"] for r in records])
    rows = []
    for record, item in zip(records, found):
        extra = {k: v for k, v in record.items() if k not in ("id", "completion", "_where")}
        row = {**(item or {}), **extra}
        missing = [c for c in task.reward_columns if c not in row]
        if missing:
            where = f"{record['_where']}: " if "_where" in record else ""
            raise LayerscoutError(
                f"{where}unknown id {record['id']!r} for task {task.name!r} ({_id_hint(task)}); or give its "
                f"{', '.join(map(repr, missing))} in the line")
        rows.append(row)
    columns = {c: [row.get(c) for row in rows] for c in task.reward_columns}
    judged = task.judge([r["completion"] for r in records], **columns)
    return [{"id": r["id"], "reward": float(reward), "status": status, "detail": detail}
            for r, (reward, status, detail) in zip(records, judged, strict=True)]


def _id_hint(task: Any) -> str:
    known = task.ids()[:2]
    return f"ids look like {', '.join(map(repr, known))}" if known else "it has no items"

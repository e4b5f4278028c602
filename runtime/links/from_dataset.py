"""Replay a recorded dataset into chunk records, offline.

Rows are read from the dataset's parquet files (no video decoding) and fed through the same
:func:`~tandem.runtime.links.chunks.build_chunk` the live ``ChunkAssembler`` uses, so the records
equal the ones streamed live in the recording session, less the live stream's final observations
(a dataset keeps no observation after an episode's last frame, so a truncated episode's last chunk
replayed from it has no bootstrap state and keeps loss weight 0 on the learner). The learner loads
demonstrations and old sessions with :func:`load_chunk_records`; ``tandem replay DIR`` prints a summary.

Any LeRobotDataset with the recorder's per-frame features can be replayed; ``observation.state`` and
``action`` are required, the rest default (no head: zeros; no base proposal: the executed action; no
flags: false; ``chunk_index``: frame_index // H) so plain lerobot demonstrations load too.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tandem.hardware.features import ACTION_KEY, STATE_KEY
from tandem.protocol.chunk_record import ChunkRecord
from tandem.runtime.links.chunks import build_chunk, split_chunks
from tandem.runtime.recording.dataset_store import INFO_PATH, OUTCOMES_PATH
from tandem.runtime.recording.tick_spool import POLICY_FEATURES_KEY

_COLUMNS = (
    STATE_KEY, ACTION_KEY, "base_action", "head_action", POLICY_FEATURES_KEY, "reward", "is_intervention",
    "takeover_start", "done", "truncated", "head_version", "base_version", "obs_time", "send_time",
    "chunk_index", "episode_index", "frame_index", "index", "task_index",
)  # fmt: skip


@dataclass
class _Row:
    """One dataset frame with the TickRecord attribute names ``build_chunk`` reads."""

    state: np.ndarray
    features: np.ndarray
    base_action: np.ndarray
    head_action: np.ndarray
    action: np.ndarray
    reward: float
    is_intervention: bool
    takeover_start: bool
    done: bool
    truncated: bool
    head_version: int
    base_version: int
    obs_time: float
    send_time: float
    chunk_index: int
    failed: bool = False


def column_to_numpy(table: object, name: str) -> np.ndarray:
    """A parquet column as numpy: fixed-size lists become [N, k] arrays."""
    import pyarrow as pa

    col = table.column(name).combine_chunks()
    if pa.types.is_fixed_size_list(col.type) or pa.types.is_list(col.type):
        n = len(col)
        return col.flatten().to_numpy(zero_copy_only=False).reshape(n, -1)
    return col.to_numpy(zero_copy_only=False)


def read_frames(root: Path | str) -> tuple[dict[str, np.ndarray], list[str], dict]:
    """All frames' non-video columns as numpy arrays (sorted by global index), the task strings, info.json."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    root = Path(root)
    info = json.loads((root / INFO_PATH).read_text())
    paths = sorted((root / "data").glob("*/*.parquet"))
    if not paths:
        raise FileNotFoundError(f"{root} has no data files (is it a LeRobotDataset? run `tandem recover {root}`)")
    tables = []
    for path in paths:
        names = pq.read_schema(path).names
        tables.append(pq.read_table(path, columns=[c for c in _COLUMNS if c in names]))
    table = pa.concat_tables(tables, promote_options="default")
    cols = {name: column_to_numpy(table, name) for name in table.column_names}
    order = np.argsort(cols["index"], kind="stable")
    cols = {k: v[order] for k, v in cols.items()}
    tasks_table = pq.read_table(root / "meta" / "tasks.parquet").to_pandas()
    tasks = [""] * (int(tasks_table["task_index"].max()) + 1 if len(tasks_table) else 0)
    for task, idx in zip(tasks_table.index, tasks_table["task_index"], strict=True):
        tasks[int(idx)] = str(task)
    return cols, tasks, info


def read_outcomes(root: Path | str) -> dict[int, dict]:
    """``meta/tandem_episodes.jsonl`` by dataset episode index (empty if the dataset has none)."""
    path = Path(root) / OUTCOMES_PATH
    if not path.exists():
        return {}
    out = {}
    for line in path.read_text().splitlines():
        if line.strip():
            entry = json.loads(line)
            out[int(entry["episode_index"])] = entry
    return out


def _episode_rows(cols: dict[str, np.ndarray], sel: np.ndarray, horizon: int, failed: bool = False) -> list[_Row]:
    """The frames ``sel`` of one episode as rows; ``failed``: the episode's outcome is a failure (its
    ``done`` frame is a failed terminal)."""
    n = len(sel)
    action = cols[ACTION_KEY][sel].astype(np.float32)

    def get(name: str, default: np.ndarray) -> np.ndarray:
        return cols[name][sel] if name in cols else default

    zeros_b = np.zeros(n, bool)
    # each column gathered once for the episode (indexing ``cols[name][sel]`` copies the whole episode)
    state = cols[STATE_KEY][sel].astype(np.float32)
    features = get(POLICY_FEATURES_KEY, np.zeros((n, 0), np.float32))
    chunk_index = get("chunk_index", cols["frame_index"][sel] // horizon)
    base_action = get("base_action", action)
    head_action = get("head_action", np.zeros_like(action))
    reward = get("reward", np.zeros(n, np.float32))
    is_intervention = get("is_intervention", zeros_b)
    takeover_start = get("takeover_start", zeros_b)
    done = get("done", zeros_b)
    truncated = get("truncated", zeros_b)
    head_version = get("head_version", np.zeros(n, np.int64))
    base_version = get("base_version", np.zeros(n, np.int64))
    obs_time = get("obs_time", np.zeros(n))
    send_time = get("send_time", np.zeros(n))
    return [
        _Row(
            state=state[i],
            features=features[i],
            base_action=base_action[i],
            head_action=head_action[i],
            action=action[i],
            reward=float(reward[i]),
            is_intervention=bool(is_intervention[i]),
            takeover_start=bool(takeover_start[i]),
            done=bool(done[i]),
            truncated=bool(truncated[i]),
            head_version=int(head_version[i]),
            base_version=int(base_version[i]),
            obs_time=float(obs_time[i]),
            send_time=float(send_time[i]),
            chunk_index=int(chunk_index[i]),
            failed=failed and bool(done[i]),
        )
        for i in range(n)
    ]


def load_chunk_records(
    root: Path | str, horizon: int, robot_id: str, episode_ids: str = "dataset"
) -> list[ChunkRecord]:
    """Every chunk record of a recorded dataset, in episode and chunk order.

    Args:
        root: dataset directory.
        horizon: H (must be >= the chunk length the session ran with).
        robot_id: the records' robot id.
        episode_ids: "dataset": ``episode_id`` is the dataset's episode index (unique in the dataset);
            "session": the episode number within its recording session, as streamed live (falls back
            to the dataset index for episodes tandem did not record).
    """
    if episode_ids not in ("dataset", "session"):
        raise ValueError(f"episode_ids={episode_ids!r}: one of 'dataset', 'session'")
    cols, tasks, _ = read_frames(root)
    outcomes = read_outcomes(root)
    records: list[ChunkRecord] = []
    episodes = cols["episode_index"]
    bounds = np.flatnonzero(np.diff(episodes)) + 1
    for sel in np.split(np.arange(len(episodes)), bounds):
        if len(sel) == 0:
            continue
        index = int(episodes[sel[0]])
        sel = sel[np.argsort(cols["frame_index"][sel], kind="stable")]
        outcome = outcomes.get(index, {})
        episode_id = int(outcome["session_episode"]) if episode_ids == "session" and outcome else index
        task = tasks[int(cols["task_index"][sel[0]])]
        rows = _episode_rows(cols, sel, horizon, failed=outcome.get("outcome") == "failure")
        for group in split_chunks(rows, horizon):
            records.append(build_chunk(group, horizon, robot_id, episode_id, group[0].chunk_index, task))
    return records


def replay_summary(root: Path | str, horizon: int = 10, robot_id: str = "replay") -> dict:
    """What ``tandem replay`` prints: episodes, frames, outcomes and chunk-record statistics."""
    records = load_chunk_records(root, horizon, robot_id)
    outcomes = read_outcomes(root)
    info = json.loads((Path(root) / INFO_PATH).read_text())
    valid = sum(int(r.valid.sum()) for r in records)
    return {
        "root": str(root),
        "episodes": int(info["total_episodes"]),
        "frames": int(info["total_frames"]),
        "fps": info["fps"],
        "horizon": horizon,
        "chunk_records": len(records),
        "valid_ticks": valid,
        "done_records": sum(r.done for r in records),
        "truncated_records": sum(r.truncated for r in records),
        "intervention_ticks": sum(int(r.intervention.sum()) for r in records),
        "takeovers": sum(int(r.takeover_start.sum()) for r in records),
        "mean_reward_per_tick": round(sum(float(r.reward.sum()) for r in records) / valid, 6) if valid else 0.0,
        "head_versions": sorted({r.head_version for r in records}),
        "base_versions": sorted({r.base_version for r in records}),
        "tasks": dict(Counter(r.task for r in records if r.chunk_index == 0)),
        "outcomes": dict(Counter(e["outcome"] for e in outcomes.values())),
        "recovered_episodes": sum(bool(e.get("recovered")) for e in outcomes.values()),
    }

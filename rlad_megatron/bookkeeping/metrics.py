"""Metric sinks of one run: a JSONL file and TensorBoard always, Weights & Biases when configured.

    metrics = open_metrics(cfg.run_dir, enabled=is_logging_rank,
                           tensorboard=cfg.logging.tensorboard,
                           wandb_project=cfg.logging.wandb_project, config=resolved, resume=resumed)
    metrics.truncate_from(start_step)        # on resume: drop what the lost steps had logged
    metrics.log(step, {"rollout/reward_mean": 0.4, "time/step_s": 12.3})
    metrics.log_text(step, "samples/completion", text)
    metrics.close()

Only the logging rank (last pipeline stage, tp rank 0, dp rank 0; the trainer decides) gets a
real `MetricsLogger`; every other rank gets a `NullMetricsLogger` with the same methods, so the
loop never branches on the rank.

Files under RUN_DIR:
    metrics.jsonl   one line per `log`: {"step": int, "time": unix seconds, "area/name": value, ...}
                    flushed per line. Non-finite values are written as the strings "nan", "inf"
                    and "-inf" (JSON has no NaN); `read_metrics` turns them back into floats.
    text.jsonl      one line per `log_text`: {"step", "time", "key", "text"}
    tensorboard/    event files; a key `area/name` is the TensorBoard tag as is
    wandb_id.txt    the W&B run id, so that a resumed run continues the same W&B run

Resume: `truncate_from(step)` rewrites the JSONL files without the lines of steps >= `step` and
reopens TensorBoard with `purge_step=step` (TensorBoard then hides the older events of those
steps). W&B cannot delete history: its charts use the logged "step" as x axis
(`define_metric("*", step_metric="step")`), so repeated steps overlap instead of shifting.
"""

from __future__ import annotations

import json
import math
import os
import secrets
import time
from html import escape
from pathlib import Path
from typing import Any, Iterator, Mapping, Optional

METRICS_FILE = "metrics.jsonl"
TEXT_FILE = "text.jsonl"
TENSORBOARD_DIR = "tensorboard"
WANDB_ID_FILE = "wandb_id.txt"
_RESERVED = ("step", "time")


def _scalar(key: str, value: Any) -> float | int:
    """A Python number from an int, float, bool, numpy scalar or one-element tensor."""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, (int, float)):
        return value
    if hasattr(value, "item"):
        try:
            return _scalar(key, value.item())
        except (ValueError, RuntimeError) as err:  # a tensor or array with more than one element
            raise TypeError(f"metric {key!r}: expected a scalar, got {type(value).__name__} "
                            f"of shape {tuple(getattr(value, 'shape', ()))}") from err
    raise TypeError(f"metric {key!r}: expected a number, got {type(value).__name__}")


def _json_value(value: float | int) -> float | int | str:
    """JSON-safe value: non-finite floats become "nan", "inf" or "-inf"."""
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    return value


def _from_json(value: Any) -> Any:
    if value in ("nan", "inf", "-inf"):
        return float(value)
    return value


def _iter_jsonl(path: Path) -> Iterator[tuple[int, dict]]:
    """(line number, record) of a JSONL file. A torn last line (a crash mid-write) is skipped;
    a bad line elsewhere raises ValueError naming the file and line."""
    lines = path.read_text().splitlines()
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            yield number, json.loads(line)
        except json.JSONDecodeError as err:
            if number == len(lines):
                return
            raise ValueError(f"{path}:{number}: not a JSON line ({err})") from err


def read_metrics(run_dir_or_jsonl: str | os.PathLike) -> list[dict]:
    """The records of RUN_DIR/metrics.jsonl (or of the given .jsonl file), in file order, with
    "nan"/"inf"/"-inf" strings turned back into floats. A missing file gives []."""
    path = Path(run_dir_or_jsonl)
    if path.is_dir():
        path = path / METRICS_FILE
    if not path.exists():
        return []
    return [{k: _from_json(v) for k, v in rec.items()} for _, rec in _iter_jsonl(path)]


class _JsonlFile:
    """An append-only JSONL file, flushed per line, that can drop the records of late steps."""

    def __init__(self, path: Path, *, resume: bool):
        self.path = path
        if path.exists():
            if resume:
                data = path.read_bytes()  # drop a line torn by a crash, so appends stay parseable
                if data and not data.endswith(b"\n"):
                    path.write_bytes(data[: data.rfind(b"\n") + 1])
            else:
                path.unlink()  # a fresh run starts a fresh file
        self._file = None

    def write(self, record: dict) -> None:
        if self._file is None:
            self._file = open(self.path, "a", encoding="utf-8")
        self._file.write(json.dumps(record, allow_nan=False) + "\n")
        self._file.flush()

    def truncate_from(self, step: int) -> None:
        self.close()
        if not self.path.exists():
            return
        kept = [json.dumps(rec) for _, rec in _iter_jsonl(self.path) if rec.get("step", -1) < step]
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text("".join(line + "\n" for line in kept), encoding="utf-8")
        os.replace(tmp, self.path)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


class _TensorBoard:
    """TensorBoard scalars and text through torch's SummaryWriter, created on first use."""

    def __init__(self, log_dir: Path, *, resume: bool):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as err:
            raise ImportError("logging.tensorboard is true but the tensorboard package is missing: "
                              "pip install tensorboard (or set logging.tensorboard=false)") from err
        self._cls = SummaryWriter
        self.log_dir = log_dir
        self._purge_step: Optional[int] = None if resume else 0  # fresh run: hide old events
        self._writer = None

    @property
    def writer(self):
        if self._writer is None:
            self._writer = self._cls(log_dir=str(self.log_dir), purge_step=self._purge_step)
        return self._writer

    def log(self, step: int, metrics: Mapping[str, float]) -> None:
        for key, value in metrics.items():
            self.writer.add_scalar(key, value, global_step=step)
        self.writer.flush()

    def log_text(self, step: int, key: str, text: str) -> None:
        self.writer.add_text(key, "```\n" + text + "\n```", global_step=step)  # keep line breaks
        self.writer.flush()

    def truncate_from(self, step: int) -> None:
        self.close()
        self._purge_step = step  # the next writer marks steps >= step as orphaned

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


class _Wandb:
    """A Weights & Biases run whose id lives in RUN_DIR/wandb_id.txt."""

    def __init__(self, run_dir: Path, project: str, entity: Optional[str], config: Optional[dict],
                 resume: bool):
        try:
            import wandb
        except ImportError as err:
            raise ImportError(f"logging.wandb_project is set ({project!r}) but wandb is not "
                              "installed: pip install wandb (or unset logging.wandb_project)"
                              ) from err
        self._wandb = wandb
        id_file = run_dir / WANDB_ID_FILE
        if resume and id_file.exists():
            run_id = id_file.read_text().strip()
        else:
            run_id = secrets.token_hex(8)
            id_file.write_text(run_id + "\n")
        self.run = wandb.init(project=project, entity=entity, config=config, dir=str(run_dir),
                              id=run_id, resume="allow")
        self.run.define_metric("step")
        self.run.define_metric("*", step_metric="step")

    def log(self, step: int, metrics: Mapping[str, float]) -> None:
        self.run.log({"step": step, **metrics})

    def log_text(self, step: int, key: str, text: str) -> None:
        self.run.log({"step": step, key: self._wandb.Html(f"<pre>{escape(text)}</pre>")})

    def truncate_from(self, step: int) -> None:
        pass  # W&B history cannot be deleted; see the module docstring

    def close(self) -> None:
        self.run.finish()


class MetricsLogger:
    """The logging rank's sinks: RUN_DIR/metrics.jsonl, TensorBoard and W&B (the last two
    optional). Values are converted to Python numbers once and fanned out to every sink."""

    def __init__(self, run_dir: Path, sinks: list, metrics_file: _JsonlFile, text_file: _JsonlFile):
        self.run_dir = run_dir
        self._sinks = sinks
        self._metrics_file = metrics_file
        self._text_file = text_file

    def log(self, step: int, metrics: Mapping[str, Any]) -> None:
        """Log scalars (`area/name` keys; floats, ints, numpy scalars or 0-d tensors) at `step`."""
        clash = [k for k in _RESERVED if k in metrics]
        if clash:
            raise ValueError(f"metric keys {clash} are reserved for the JSONL record")
        values = {key: _scalar(key, value) for key, value in metrics.items()}
        record = {"step": int(step), "time": time.time()}
        record.update({key: _json_value(value) for key, value in values.items()})
        self._metrics_file.write(record)
        for sink in self._sinks:
            sink.log(int(step), values)

    def log_text(self, step: int, key: str, text: str) -> None:
        """Log a text (e.g. a sample completion) at `step` under `key`."""
        self._text_file.write({"step": int(step), "time": time.time(), "key": key, "text": text})
        for sink in self._sinks:
            sink.log_text(int(step), key, text)

    def truncate_from(self, step: int) -> None:
        """Forget what was logged for steps >= `step` (call once on resume, before logging)."""
        for part in (self._metrics_file, self._text_file, *self._sinks):
            part.truncate_from(int(step))

    def close(self) -> None:
        for part in (self._metrics_file, self._text_file, *self._sinks):
            part.close()

    def __enter__(self) -> "MetricsLogger":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class NullMetricsLogger:
    """The logger of every rank but the logging one: the same methods, doing nothing."""

    run_dir = None

    def log(self, step: int, metrics: Mapping[str, Any]) -> None:
        pass

    def log_text(self, step: int, key: str, text: str) -> None:
        pass

    def truncate_from(self, step: int) -> None:
        pass

    def close(self) -> None:
        pass

    def __enter__(self) -> "NullMetricsLogger":
        return self

    def __exit__(self, *exc) -> None:
        pass


def open_metrics(run_dir: str | os.PathLike, *, enabled: bool, tensorboard: bool = True,
                 wandb_project: Optional[str] = None, wandb_entity: Optional[str] = None,
                 config: Optional[dict] = None,
                 resume: bool = False) -> MetricsLogger | NullMetricsLogger:
    """The metric sinks of this rank: a `MetricsLogger` when `enabled`, else a null one.

    `resume=False` starts new JSONL files (old ones in RUN_DIR are replaced), hides older
    TensorBoard events (purge_step=0) and starts a new W&B run;
    `resume=True` appends to them and continues the W&B run of RUN_DIR/wandb_id.txt (call
    `truncate_from(start_step)` next). `config` (a plain dict) goes to W&B as the run config.
    """
    if not enabled:
        return NullMetricsLogger()
    root = Path(run_dir)
    root.mkdir(parents=True, exist_ok=True)
    sinks: list = []
    if tensorboard:
        sinks.append(_TensorBoard(root / TENSORBOARD_DIR, resume=resume))
    if wandb_project:
        sinks.append(_Wandb(root, wandb_project, wandb_entity, config, resume))
    return MetricsLogger(root, sinks, _JsonlFile(root / METRICS_FILE, resume=resume),
                         _JsonlFile(root / TEXT_FILE, resume=resume))

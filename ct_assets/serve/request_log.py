"""The request log: every scored row, buffered in memory and flushed to Parquet files.

A request's rows are appended before its response is sent, and the buffer is flushed at
`log_flush_rows` rows, when its oldest row is `log_flush_seconds` old, and at shutdown; so a
request answered is a request logged. Each flush writes one file,
`requests-<UTC stamp>-<pid>-<seq>.parquet`, as `.<name>.tmp` renamed into place: readers never
see a partial file. The Parquet write runs in a worker thread; the buffer is swapped under a
lock, so appending never waits for a write.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import os
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import chain
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

log = logging.getLogger("ct_assets.serve")


@dataclass(frozen=True)
class Chunk:
    """The rows of one request, column by column, as scored."""

    request_id: str
    received_us: int
    model_version: str
    features: tuple[tuple[str, str], ...]  # (name, kind) in the model's order
    columns: dict[str, Any]
    ids: Sequence[str]
    scores: np.ndarray
    decisions: Sequence[Any] | None


class RequestLog:
    """Buffer of scored rows with size and age flushing (nothing is written without a dir)."""

    def __init__(self, directory: Path | None, model_name: str, flush_rows: int,
                 flush_seconds: float) -> None:
        self.directory = directory
        self.model_name = model_name
        self.flush_rows = flush_rows
        self.flush_seconds = flush_seconds
        self.flushed_rows = 0
        self.files_written = 0
        self.write_errors = 0
        self._chunks: list[Chunk] = []
        self._rows = 0
        self._oldest = 0.0
        self._sequence = 0
        self._lock = threading.Lock()  # guards the buffer (appends and swaps)
        self._write_lock = threading.Lock()  # one flush writes at a time
        self._pending: asyncio.Future[Any] | None = None
        self._ticker: asyncio.Task[None] | None = None

    @property
    def buffered_rows(self) -> int:
        """Rows appended and not yet written."""
        return self._rows

    def append(self, chunk: Chunk) -> bool:
        """Buffer one request's rows; returns whether a flush is due (by size)."""
        if self.directory is None:
            return False
        with self._lock:
            if not self._chunks:
                self._oldest = time.monotonic()
            self._chunks.append(chunk)
            self._rows += len(chunk.ids)
            return self._rows >= self.flush_rows

    def schedule_flush(self) -> None:
        """Start a flush in a worker thread unless one is running (call on the event loop)."""
        if self._pending is None or self._pending.done():
            self._pending = asyncio.get_running_loop().run_in_executor(None, self.flush)

    def start(self) -> None:
        """Start the age check (call on the event loop)."""
        if self.directory is not None:
            self._ticker = asyncio.get_running_loop().create_task(self._tick())

    async def _tick(self) -> None:
        """Flush whenever the oldest buffered row reaches `flush_seconds`."""
        period = max(0.05, min(self.flush_seconds / 4, 1.0))
        while True:
            await asyncio.sleep(period)
            if self._rows and time.monotonic() - self._oldest >= self.flush_seconds:
                self.schedule_flush()

    async def close(self) -> None:
        """Stop the age check and write everything still buffered (at shutdown)."""
        if self._ticker is not None:
            self._ticker.cancel()
        if self._pending is not None:
            await asyncio.wait([self._pending])
        await asyncio.to_thread(self.flush)

    def flush(self) -> Path | None:
        """Write the buffered rows to one Parquet file; returns it (None: nothing buffered).

        A failed write keeps the rows in the buffer for the next flush, logged and counted.
        """
        with self._write_lock:
            with self._lock:
                chunks, self._chunks, rows, self._rows = self._chunks, [], self._rows, 0
            if not chunks or self.directory is None:
                return None
            try:
                path = self._write(chunks)
            except Exception:  # disk full, permissions: keep the rows, retry on the next flush
                log.exception("request log: writing %d rows failed; kept for the next flush",
                              rows)
                self.write_errors += 1
                with self._lock:
                    self._chunks[:0] = chunks
                    self._rows += rows
                    self._oldest = time.monotonic()
                return None
            self.flushed_rows += rows
            self.files_written += 1
            return path

    def _write(self, chunks: list[Chunk]) -> Path:
        """One Parquet file of `chunks`, written aside and renamed into place."""
        self._sequence += 1
        stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S%fZ")
        name = f"requests-{stamp}-{os.getpid()}-{self._sequence:06d}.parquet"
        assert self.directory is not None
        self.directory.mkdir(parents=True, exist_ok=True)
        groups: dict[tuple[tuple[str, str], ...], list[Chunk]] = {}
        for chunk in chunks:
            groups.setdefault(chunk.features, []).append(chunk)
        frames = [self._frame(features, group) for features, group in groups.items()]
        frame = frames[0] if len(frames) == 1 else pl.concat(frames, how="diagonal_relaxed")
        final = self.directory / name
        temporary = self.directory / f".{name}.tmp"
        frame.write_parquet(temporary)
        with temporary.open("rb") as handle:
            os.fsync(handle.fileno())
        os.replace(temporary, final)
        return final

    def _frame(self, features: tuple[tuple[str, str], ...], chunks: list[Chunk]
               ) -> pl.DataFrame:
        """The rows of chunks that share one feature schema, as a typed frame.

        Column-wise and without a Python loop per row: a flush of 10,000 one-row requests
        must not hold the interpreter for long while the event loop answers.
        """
        sizes = np.fromiter((len(chunk.ids) for chunk in chunks), dtype=np.int64,
                            count=len(chunks))
        owner = np.repeat(np.arange(len(chunks)), sizes)  # the chunk of each row
        starts = np.cumsum(sizes) - sizes

        def per_chunk(values: list[Any], dtype: pl.DataType) -> pl.Series:
            return pl.Series(values, dtype=dtype).gather(owner)

        decisions = [chunk.decisions if chunk.decisions is not None else [None] * len(chunk.ids)
                     for chunk in chunks]
        columns: dict[str, Any] = {
            "request_id": per_chunk([chunk.request_id for chunk in chunks], pl.String),
            "row": pl.Series(np.arange(len(owner)) - starts[owner], dtype=pl.Int64),
            "row_id": pl.Series(list(chain.from_iterable(chunk.ids for chunk in chunks)),
                                dtype=pl.String),
            "received_at": per_chunk([chunk.received_us for chunk in chunks], pl.Int64)
            .cast(pl.Datetime("us", "UTC")),
            "model_name": pl.Series([self.model_name], dtype=pl.String).gather(
                np.zeros(len(owner), dtype=np.int64)),
            "model_version": per_chunk([chunk.model_version for chunk in chunks], pl.String),
        }
        for name, kind in features:
            if kind == "category":
                columns[name] = pl.Series(list(chain.from_iterable(
                    chunk.columns[name] for chunk in chunks)), dtype=pl.String)
            else:
                columns[name] = pl.Series(np.concatenate(
                    [chunk.columns[name] for chunk in chunks]).astype(np.float64, copy=False),
                    dtype=pl.Float64, nan_to_null=True)
        columns["score"] = pl.Series(np.concatenate([chunk.scores for chunk in chunks]),
                                     dtype=pl.Float64)
        columns["decision"] = pl.Series([None if d is None else str(d) for d in
                                         chain.from_iterable(decisions)], dtype=pl.String)
        return pl.DataFrame(columns)


def read_request_log(directory: Path) -> pl.DataFrame:
    """Every row of the request log under `directory` (complete files only)."""
    files = sorted(directory.glob("requests-*.parquet"))
    if not files:
        return pl.DataFrame()
    return pl.concat([pl.read_parquet(file) for file in files], how="diagonal_relaxed")

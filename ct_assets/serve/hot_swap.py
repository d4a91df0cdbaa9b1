"""The served model slot: the current version, swapped atomically, and other versions on demand.

Every `watch_seconds` the watcher reads `deployed.json`. A new version is loaded and verified in
a worker thread (sha256 and seal, the feature schema, a canary on the last rows served), then
the slot's reference is replaced in one assignment on the event loop: a request holds the model
it started with, so requests in flight finish on the old one and none fails because of a swap.
A version that fails is refused (logged with the reason, counted) and not retried until
`deployed.json` changes again; the old version keeps serving.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import re
from collections import OrderedDict
from typing import Any

from ct_assets.lib.model_store import MANIFEST, ModelStore, ModelStoreError, PinnedStore
from ct_assets.serve.metrics import ServeMetrics
from ct_assets.serve.models import Canary, ServedModel, load_served
from ct_assets.serve.settings import ServeSettings
from ct_assets.serve.values import RequestError

log = logging.getLogger("ct_assets.serve")
CACHE_SIZE = 4  # versions other than the current one kept loaded for versioned requests
VERSION_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


def open_store(settings: ServeSettings) -> ModelStore:
    """The model store to serve from: the store, or one version pinned by its manifest's sha256.

    Raises:
        ValueError: a manifest sha256 is given without the fixed version it pins.
    """
    if settings.manifest_sha256 is None:
        return ModelStore(settings.models_dir)
    if settings.version is None:
        raise ValueError("manifest_sha256 pins a fixed version: set `version` too")
    return PinnedStore(settings.models_dir, settings.version, settings.manifest_sha256)


def load_initial(settings: ServeSettings) -> ServedModel:
    """The version to serve first, verified: the fixed one, else the deployed one.

    Raises:
        ModelStoreError: nothing is deployed, or the version fails verification (why).
    """
    store = open_store(settings)
    version = settings.version
    if version is None:
        record = store.deployed()
        if record is None:
            raise ModelStoreError(f"no model is deployed in {store.root} (promote one: "
                                  "`ct run`, the retrain job, or `ct rollback`)")
        version = str(record["version"])
    return load_served(store, version, datatypes=settings.input_datatypes,
                       expected_schema=settings.expected_schema)


class ModelSlot:
    """Which model answers: the current version, plus a small cache of explicit versions."""

    def __init__(self, settings: ServeSettings, metrics: ServeMetrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.store = open_store(settings)
        self.current: ServedModel | None = None
        self.recent: Canary | None = None  # the last rows served: the next version's canary
        self.refused: dict[str, Any] | None = None  # the last refusal: version, reason, at
        self._refused_key: tuple[Any, Any] | None = None
        self._pointer_problem: str | None = None
        self._expected = settings.expected_schema
        self._cache: OrderedDict[str, ServedModel] = OrderedDict()
        self._loading: dict[str, asyncio.Future[ServedModel]] = {}

    def load_initial(self) -> ServedModel:
        """Load and verify the version to serve first (blocking; at startup)."""
        served = load_initial(self.settings)
        self.install(served)
        return served

    def install(self, served: ServedModel) -> None:
        """Make `served` the current model (one reference assignment)."""
        if self._expected is None:
            self._expected = served.schema
        self.current = served
        self.metrics.serving(served.version, served.task)

    def model(self, name: str) -> ServedModel:
        """The current model for a request naming `name` (404 unknown name, 503 none loaded)."""
        if name != self.settings.model_name:
            raise RequestError(404, f"unknown model {name!r}; this server serves "
                                    f"{self.settings.model_name!r}")
        current = self.current
        if current is None:
            raise RequestError(503, "no verified model is loaded yet")
        return current

    def versions(self) -> list[str]:
        """Versions that may be requested explicitly."""
        if self.settings.version is not None:
            return [self.settings.version]
        return self.store.versions()

    async def version(self, name: str, version: str) -> ServedModel:
        """A specific version, loaded and verified on first use, then cached.

        Raises:
            RequestError: 404 for an unknown model or version, 409 for one that fails
                verification.
        """
        current = self.model(name)
        if version == current.version:
            return current
        if version in self._cache:
            self._cache.move_to_end(version)
            return self._cache[version]
        fixed = self.settings.version
        if (fixed is not None and version != fixed) or not VERSION_NAME.match(version) \
                or not (self.store.path(version) / MANIFEST).is_file():
            raise RequestError(404, f"unknown version {version!r} of model {name!r}")
        loading = self._loading.get(version)
        if loading is None:
            loading = asyncio.ensure_future(asyncio.to_thread(
                load_served, self.store, version, datatypes=self.settings.input_datatypes,
                canary=self.recent))
            self._loading[version] = loading
            loading.add_done_callback(lambda _: self._loading.pop(version, None))
        try:
            served = await asyncio.shield(loading)
        except Exception as error:  # a version that cannot be loaded is refused, not a fault
            reason = " ".join(str(error).split()) or type(error).__name__
            raise RequestError(409, f"version {version!r} fails verification: {reason}"
                               ) from None
        self._cache[version] = served
        while len(self._cache) > CACHE_SIZE:
            self._cache.popitem(last=False)
        return served

    async def watch(self) -> None:
        """Follow `deployed.json` forever, swapping in each new verified version."""
        while True:
            await asyncio.sleep(self.settings.watch_seconds)
            try:
                candidate = await asyncio.to_thread(self._candidate)
            except Exception as error:  # an unreadable pointer must not stop the watcher
                problem = f"{type(error).__name__}: {error}"
                if problem != self._pointer_problem:  # logged once, not every interval
                    log.error("hot swap: cannot read %s (%s); still serving %s",
                              self.store.root / "deployed.json", problem,
                              self.current.version if self.current else None)
                self._pointer_problem = problem
                continue
            self._pointer_problem = None
            if candidate is not None:
                previous = self.current
                self.install(candidate)
                self.metrics.swaps.inc()
                log.info("hot swap: now serving %s (was %s)", candidate.version,
                            previous.version if previous else None)

    def _candidate(self) -> ServedModel | None:
        """The newly deployed version, verified; None when nothing new or when refused."""
        record = self.store.deployed()
        current = self.current
        if record is None or current is None or record["version"] == current.version:
            return None
        key = (record["version"], record.get("promoted_at"))
        if key == self._refused_key:
            return None  # refused already; retried only when deployed.json changes
        try:
            return load_served(self.store, str(record["version"]),
                               datatypes=self.settings.input_datatypes,
                               expected_schema=self._expected, canary=self.recent)
        except Exception as error:  # any failure to load or verify refuses the version
            reason = " ".join(str(error).split()) or type(error).__name__
            self._refused_key = key
            self.refused = {"version": record["version"], "reason": reason,
                            "at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds")}
            self.metrics.refused.inc()
            log.error("hot swap: refused %s, still serving %s: %s", record["version"],
                      current.version, reason)
            return None

"""Model control: keep the served versions in step with the repository folder while serving.

``SEGSERVE_MODEL_CONTROL``:

- ``none``: what the folder held at start-up is served until the process stops;
- ``poll``: the folder is scanned every ``SEGSERVE_MODEL_POLL_INTERVAL_S``; a new version, or a
  model file that changed, is loaded and warmed up beside the serving ones and only then routed
  to; a version gone from the folder (or from its version policy) stops taking new requests and
  is released once the requests holding it have finished;
- ``explicit``: the same, one model at a time, when the repository API asks (``load``/``unload``).

A version that cannot be served (corrupt file, wrong signature, failed warm-up) never replaces
one that can: it is logged, counted (``segserve_model_loads_total{outcome="failed"}``), listed
with its reason, and the version served before keeps serving. It is tried again once its file
changes. A model whose version policy cannot be read keeps its served versions as they are (the
other models follow the folder), and a folder with no model at all changes nothing: an empty
folder is more likely a volume that is not mounted than every model withdrawn. The reasons
clients see name files relative to the repository (``public``); the log has them whole.
Modelled on Triton's model control modes and repository extension.

    control = ModelControl(service)
    await control.sync()            # serve what the folder holds now; sync("name"): one model
    await control.unload("name")
    await control.index()           # -> [VersionState], every version on disk or served
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from service import metrics
from service.core import FileStamp, ServedModel, Service, file_stamp
from service.errors import ModelLoadError
from service.repository import ModelVersion, Survey, survey

log = logging.getLogger("segserve.control")

State = Literal["READY", "UNAVAILABLE"]


@dataclass(frozen=True, slots=True)
class VersionState:
    name: str
    version: int
    state: State
    reason: str = ""


class ModelControl:
    def __init__(self, service: Service) -> None:
        self.service = service
        self.failed: dict[str, tuple[FileStamp | None, str]] = {}  # key -> (file, why)
        self._unreadable_logged: dict[str, str] = {}  # model -> why its policy cannot be read
        self._lock = asyncio.Lock()  # one change of the served set at a time
        self._retiring: set[asyncio.Task[None]] = set()

    async def poll(self, interval_s: float) -> None:
        """``sync`` every ``interval_s`` until cancelled."""
        while True:
            await asyncio.sleep(interval_s)
            try:
                await self.sync()
            except ModelLoadError as exc:  # no folder, or no model in it: keep what serves
                log.warning("cannot scan the model repository; serving as before: %s", exc)

    async def sync(self, name: str | None = None) -> None:
        """Serve what the folder holds now: every model, or only ``name``. Raises
        ModelLoadError when the folder cannot be read or holds no model, or when ``name``'s
        version policy cannot be read; another model's unreadable policy leaves that model's
        versions as they are."""
        async with self._lock:
            found = await asyncio.to_thread(self._survey)
            if name is not None and name in found.unreadable:
                raise ModelLoadError(found.unreadable[name])
            if not found.on_disk:
                raise ModelLoadError(f"no models in {self.service.settings.model_repository}")
            self._note_unreadable(found.unreadable)
            wanted = {
                ref.key: ref
                for versions in found.chosen.values()
                for ref in versions.values()
                if _in(ref.key, name)
            }
            await self._apply(
                wanted, lambda model: name in (None, model) and model not in found.unreadable
            )

    async def unload(self, name: str) -> None:
        """Stop serving every version of ``name``."""
        async with self._lock:
            await self._apply({}, lambda model: model == name)

    async def index(self) -> list[VersionState]:
        """Every version on disk or served, with its state (and why it is unavailable)."""
        try:
            found = await asyncio.to_thread(self._survey)
        except ModelLoadError:
            found = Survey({}, {}, {})
        on_disk = {ref.key for ref in found.all_on_disk()}
        keys = sorted(on_disk | set(self.service.models), key=_order)
        return [self._state(key, found.unreadable) for key in keys]

    def unavailable(self, name: str) -> list[VersionState]:
        """The versions of ``name`` that failed to load, with why."""
        failed = sorted(self.failed, key=_order)
        return [self._state(key, unreadable={}) for key in failed if _in(key, name)]

    def failures(self, name: str) -> list[str]:
        """Why versions of ``name`` in the folder are not served (empty: none failed)."""
        return [state.reason for state in self.unavailable(name)]

    async def close(self) -> None:
        """Wait for the versions being released."""
        await asyncio.gather(*self._retiring)

    def public(self, reason: str) -> str:
        """``reason`` as a client may see it: files named relative to the repository folder, so
        no answer tells where the server keeps its files."""
        root = self.service.settings.model_repository
        for prefix in (str(root.resolve()), str(root)):  # the longer first
            reason = reason.replace(prefix + "/", "")
        return reason

    def _survey(self) -> Survey:
        return survey(self.service.settings.model_repository)

    def _note_unreadable(self, unreadable: dict[str, str]) -> None:
        """Log each model whose version policy became unreadable, once (a poll repeats)."""
        for model, why in unreadable.items():
            if self._unreadable_logged.get(model) != why:
                log.error("serving %s's versions as before: %s", model, why)
        self._unreadable_logged = dict(unreadable)

    def _state(self, key: str, unreadable: dict[str, str]) -> VersionState:
        """READY while served (with why, when a changed file of it failed), else UNAVAILABLE."""
        name, version = key.rsplit(":", 1)
        _, reason = self.failed.get(key, (None, ""))
        if key in self.service.models:
            return VersionState(name, int(version), "READY", self.public(reason))
        reason = reason or unreadable.get(name) or "not loaded"
        return VersionState(name, int(version), "UNAVAILABLE", self.public(reason))

    async def _apply(
        self, wanted: dict[str, ModelVersion], in_scope: Callable[[str], bool]
    ) -> None:
        """Load what ``wanted`` adds or changes, route to the new set, release what it drops
        (only the versions of models ``in_scope`` are in question)."""
        current = self.service.models
        scope = {k: m for k, m in current.items() if in_scope(m.ref.name)}
        loaded = {}
        for key, ref in wanted.items():
            served = await self._load_if_new(ref, scope.get(key))
            if served is not None:
                loaded[key] = served
        for key in [k for k in self.failed if in_scope(_model(k)) and k not in wanted]:
            del self.failed[key]  # gone from the folder: nothing to report any more
        dropped = [m for k, m in scope.items() if k not in wanted]
        replaced = [current[k] for k in loaded if k in current]
        if not loaded and not dropped:
            return
        kept = {k: m for k, m in current.items() if k not in {m.ref.key for m in dropped}}
        self.service.swap(kept | loaded)
        for old in (*dropped, *replaced):
            task = asyncio.create_task(self.service.retire(old), name=f"retire-{old.ref.key}")
            self._retiring.add(task)
            task.add_done_callback(self._retiring.discard)

    async def _load_if_new(
        self, ref: ModelVersion, serving: ServedModel | None
    ) -> ServedModel | None:
        """``ref`` loaded when it is new or its file changed since it was loaded (or failed);
        None when there is nothing to do or it cannot be served."""
        try:
            stamp: FileStamp | None = file_stamp(ref.path)
        except OSError:
            stamp = None  # removed while scanning: the next scan drops it
        if serving is not None and serving.stamp == stamp:
            return None
        if stamp is None or self.failed.get(ref.key, (None, ""))[0] == stamp:
            return None
        labels = (ref.name, str(ref.version))
        try:
            served = await self.service.serve_version(ref)
        except ModelLoadError as exc:
            self.failed[ref.key] = (stamp, str(exc))
            metrics.MODEL_LOADS.labels(*labels, "failed").inc()
            keeping = "the version loaded before keeps serving" if serving else "not served"
            log.error("cannot serve %s (%s): %s", ref.key, keeping, exc)
            return None
        self.failed.pop(ref.key, None)
        metrics.MODEL_LOADS.labels(*labels, "loaded").inc()
        return served


def _model(key: str) -> str:
    return key.rsplit(":", 1)[0]


def _in(key: str, name: str | None) -> bool:
    return name is None or _model(key) == name


def _order(key: str) -> tuple[str, int]:
    name, version = key.rsplit(":", 1)
    return name, int(version)

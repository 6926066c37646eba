"""The batchers of one served version: one per input shape and answer kind (a "lane").

The model's own input size with labels out is the first lane, started with the version. The
input policies (``service.policies``) need others, made when first asked for: each native
shape bucket (labels out) and each tile size (scores out, for blending). A batch only ever
holds inputs of one shape; every lane shares the version's session pool and its queue budget
(``SEGSERVE_MAX_QUEUE`` counts the items queued in all of them).

    lanes = Lanes(make_batcher)            # make_batcher(shape, scores, on_depth, queued)
                                           #   -> Batcher (not started)
    first = await lanes.get((128, 128), scores=False)
    lanes.depth                            # queued items over all lanes
    await lanes.stop()
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from service.batching import Batcher

Shape = tuple[int, int]  # (height, width)
LaneKey = tuple[Shape, bool]  # shape, scores out
# shape, scores out, on_depth(lane's depth), queued() -> items queued in every lane
MakeBatcher = Callable[[Shape, bool, Callable[[int], None], Callable[[], int]], Batcher]


class Lanes:
    def __init__(self, make: MakeBatcher, on_depth: Callable[[int], None] | None = None) -> None:
        self._make = make
        self._on_depth = on_depth
        self._lanes: dict[LaneKey, Batcher] = {}
        self._depths: dict[LaneKey, int] = {}
        self._lock = asyncio.Lock()

    @property
    def depth(self) -> int:
        return sum(self._depths.values())

    async def get(self, shape: Shape, scores: bool) -> Batcher:
        """The started batcher for ``shape`` and answer kind; made on first use."""
        key = (shape, scores)
        lane = self._lanes.get(key)
        if lane is not None:
            return lane
        async with self._lock:  # two first requests of a shape make one lane
            if key not in self._lanes:
                lane = self._make(
                    shape, scores, lambda depth: self._depth_changed(key, depth), lambda: self.depth
                )
                await lane.start()
                self._lanes[key] = lane
        return self._lanes[key]

    async def stop(self) -> None:
        """Refuse new items; finish every queued one."""
        await asyncio.gather(*(lane.stop() for lane in self._lanes.values()))

    def _depth_changed(self, key: LaneKey, depth: int) -> None:
        self._depths[key] = depth
        if self._on_depth is not None:
            self._on_depth(self.depth)

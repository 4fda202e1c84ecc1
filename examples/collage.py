"""Seed 003's photo collage: cameras around the world take a picture every hour, and a stitcher
puts the pictures of the same wall-clock hour together, strictly in order of the hour.

Each camera is a spout that sends at its own rate; its seq id is the local hour, so the stitcher
(a bundled worker) gets the pictures of one hour together, whichever camera is slow. The stitcher
is sequential: the collage of 11 o'clock is made only after the one of 10 o'clock. The album is
the sink; `grid.run` yields its pages as they come. A debugger watches the stitcher: what it
prints reaches this process while the topology runs.

Run: python examples/collage.py
"""

import asyncio
from typing import Any

import girder

HOURS = range(6, 12)

collage = girder.Topology("collage")


async def take_pictures(city: str, every: float, emit: Any) -> None:
    for hour in HOURS:
        await asyncio.sleep(every)  # the cameras run at different rates
        await emit(hour, f"{city}@{hour:02d}h")


@collage.spout
async def tokyo(emit: Any) -> None:
    await take_pictures("tokyo", 0.01, emit)


@collage.spout
async def lisbon(emit: Any) -> None:
    await take_pictures("lisbon", 0.03, emit)


@collage.spout
def lima(emit: Any) -> None:  # a sync spout works too: its emit blocks while the stitcher is full
    for hour in HOURS:
        emit(hour, f"lima@{hour:02d}h")


@collage.worker(upstream=[tokyo, lisbon, lima], bundle=True, sequential=True, max_pending=4)
def stitch(hour: int, photos: dict[str, str]) -> str:
    print(f"stitching {len(photos)} photos of {hour:02d}h")
    return " | ".join(photos[city] for city in sorted(photos))


@collage.worker(upstream=[stitch])
def album(hour: int, page: str, upstream: str) -> str:
    return f"[{hour:02d}:00] {page}"


async def main() -> None:
    said: list[str] = []

    def debugger(stage: str, hour: int | None, item: Any) -> None:
        if isinstance(item, girder.Printed):
            said.append(item.text)

    async with girder.Grid.local(workers=2) as grid:
        pages = []
        async for hour, page in grid.run(collage, debug={"stitch": debugger}):
            print(page)
            pages.append(hour)
    assert sorted(pages) == list(HOURS), pages  # the album is not sequential: any order
    assert said == [f"stitching 3 photos of {hour:02d}h" for hour in HOURS]
    print(f"the debugger heard the stitcher {len(said)} times")


if __name__ == "__main__":
    asyncio.run(main())

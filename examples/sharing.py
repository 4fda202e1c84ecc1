"""The seeds' sharing scenario, which deadlocked a breadth-first grid: it finishes here.

A needs B and C; B and C need D; D needs E; Z needs E too. With two workers, E is usually
already running on the other worker when D asks for it: D parks instead of blocking, and its
worker goes on with C, which parks on D in turn. Each request runs once.

Run: python examples/sharing.py
"""

import asyncio

import girder

runs: list[str] = []


@girder.function
async def e() -> str:
    runs.append("E")
    await asyncio.sleep(0.05)  # long enough to still run when D asks for it
    return "E"


@girder.function
async def d() -> str:
    runs.append("D")
    (value,) = await girder.call_reentrant([(e,)])
    return "D" + value


@girder.function
async def b() -> str:
    runs.append("B")
    (value,) = await girder.call_reentrant([(d,)])
    return "B" + value


@girder.function
async def c() -> str:
    runs.append("C")
    (value,) = await girder.call_reentrant([(d,)])
    return "C" + value


@girder.function
async def a() -> str:
    runs.append("A")
    left, right = await girder.call_reentrant([(b,), (c,)])
    return f"A({left},{right})"


@girder.function
async def z() -> str:
    runs.append("Z")
    (value,) = await girder.call_reentrant([(e,)])
    return "Z" + value


async def main() -> None:
    async with girder.Grid.local(workers=2) as grid:
        print(await asyncio.wait_for(grid.call_all([(a,), (z,)]), timeout=10))
    print("ran:", sorted(runs))
    assert sorted(runs) == ["A", "B", "C", "D", "E", "Z"]


if __name__ == "__main__":
    asyncio.run(main())

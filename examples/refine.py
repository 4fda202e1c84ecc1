"""Several answers per request: a coarse answer at once, then a refined one.

`estimate_pi` is an async generator: each `yield` is an answer that every caller streams as it
comes, and the last one is the value (and the only one cached). Its first answer comes from a
cheap request that is already cached; the refined one takes longer to compute.

Run: python examples/refine.py
"""

import asyncio
from collections.abc import AsyncIterator

import girder


@girder.function
def leibniz(terms: int) -> float:
    """pi from the first `terms` terms of the Leibniz series."""
    return 4 * sum((-1) ** k / (2 * k + 1) for k in range(terms))


@girder.function
async def estimate_pi(terms: int) -> AsyncIterator[float]:
    (coarse,) = await girder.call_reentrant([(leibniz, 100)])
    yield coarse  # at once: the cheap request is cached
    (fine,) = await girder.call_reentrant([(leibniz, terms)])
    yield fine


async def main() -> None:
    async with girder.Grid.local(workers=2) as grid:
        await grid.call(leibniz, 100)  # warm the cache with the cheap estimate
        answers = []
        async for answer in grid.stream(estimate_pi, 200_000):
            print(f"pi is about {answer:.6f}")
            answers.append(answer)
        assert len(answers) == 2
        assert abs(answers[1] - 3.14159) < 1e-4
        assert await grid.call(estimate_pi, 200_000) == answers[-1]  # the last one, cached


if __name__ == "__main__":
    asyncio.run(main())

"""Fibonacci by re-entrant requests: every fib(k) is computed once and cached.

Run: python examples/fib.py
"""

import asyncio

import girder


@girder.function
async def fib(n: int) -> int:
    if n < 2:
        return n
    a, b = await girder.call_reentrant([(fib, n - 1), (fib, n - 2)])
    return a + b


async def main() -> None:
    async with girder.Grid.local(workers=1) as grid:  # one worker is enough: callers park
        print("fib(90) =", await grid.call(fib, 90))
        print("fib(1000) has", len(str(await grid.call(fib, 1000))), "digits")
        print("requests run:", grid.workers[0].stats.ran)


if __name__ == "__main__":
    asyncio.run(main())

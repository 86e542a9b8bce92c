"""The work queue (gemma_operator.workqueue): dedup, one worker per key, dirty keys come back."""

from __future__ import annotations

import asyncio

from gemma_operator.workqueue import WorkQueue


def test_many_adds_of_one_key_make_one_pass_and_a_key_is_never_processed_twice_at_once() -> None:
    async def scenario() -> list[tuple[str, str]]:
        q, seen, active = WorkQueue(), [], set()

        async def worker() -> None:
            while True:
                key = await q.get()
                assert key not in active
                active.add(key)
                seen.append(key)
                await asyncio.sleep(0.01)
                active.discard(key)
                q.done(key)

        workers = [asyncio.create_task(worker()) for _ in range(4)]
        for _ in range(100):
            q.add(("ns", "a"))
        q.add(("ns", "b"))
        await asyncio.sleep(0.005)
        q.add(("ns", "a"))  # while "a" is processed: marked dirty, queued again when done
        await asyncio.sleep(0.1)
        for w in workers:
            w.cancel()
        await asyncio.gather(*workers, return_exceptions=True)
        assert len(q) == 0
        return seen

    seen = asyncio.run(scenario())
    assert seen.count(("ns", "a")) == 2 and seen.count(("ns", "b")) == 1


def test_add_after_queues_once_later() -> None:
    async def scenario() -> list[tuple[str, str]]:
        q: WorkQueue = WorkQueue()
        q.add_after(("ns", "a"), 0.02)
        q.add_after(("ns", "a"), 0.01)  # an earlier timer for the key wins
        assert len(q) == 0
        got = await asyncio.wait_for(q.get(), timeout=1)
        q.done(got)
        return [got]

    assert asyncio.run(scenario()) == [("ns", "a")]

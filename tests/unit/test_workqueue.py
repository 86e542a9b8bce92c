"""The work queue (gemma_operator.workqueue): dedup, one worker per key, dirty keys come back."""

from __future__ import annotations

import asyncio

from gemma_operator.workqueue import WorkQueue


def test_many_adds_of_one_key_make_one_pass_and_a_key_is_never_processed_twice_at_once() -> None:
    async def scenario() -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
        q, seen, active = WorkQueue(), [], set()
        overlaps: list[tuple[str, str]] = []  # recorded, not asserted in the worker: a worker's
        # exception would only end that task, and cancel + gather(return_exceptions=True) hides it

        async def worker() -> None:
            while True:
                key = await q.get()
                if key in active:
                    overlaps.append(key)
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
        crashed = [w for w in workers if w.done()]  # a worker only ends by an exception before the cancel
        for w in workers:
            w.cancel()
        await asyncio.gather(*workers, return_exceptions=True)
        for w in crashed:
            w.result()  # re-raises what ended the worker
        assert len(q) == 0
        return seen, overlaps

    seen, overlaps = asyncio.run(scenario())
    assert overlaps == [], f"keys handed to a second worker while the first still had them: {overlaps}"
    assert seen.count(("ns", "a")) == 2 and seen.count(("ns", "b")) == 1


DELAY = 0.2


async def _no_more(q: WorkQueue, within: float) -> None:
    """No further key comes out of the queue within `within` seconds."""
    try:
        extra = await asyncio.wait_for(q.get(), timeout=within)
    except TimeoutError:
        return
    raise AssertionError(f"{extra} was queued a second time")


def test_add_after_queues_once_after_the_delay() -> None:
    async def scenario() -> tuple[float, tuple[str, str]]:
        q: WorkQueue = WorkQueue()
        loop = asyncio.get_running_loop()
        start = loop.time()
        for _ in range(3):
            q.add_after(("ns", "a"), DELAY)  # three timers for one key: one pass
        assert len(q) == 0
        await asyncio.sleep(DELAY / 2)
        assert len(q) == 0, "queued before its delay"
        got = await asyncio.wait_for(q.get(), timeout=DELAY * 10)
        waited = loop.time() - start
        q.done(got)
        await _no_more(q, DELAY * 2)
        assert len(q) == 0
        return waited, got

    waited, got = asyncio.run(scenario())
    assert got == ("ns", "a")
    assert DELAY * 0.9 <= waited < DELAY * 5, f"queued after {waited:.3f}s, asked for {DELAY}s"


def test_add_after_of_a_key_already_queued_does_not_queue_it_twice() -> None:
    async def scenario() -> None:
        q: WorkQueue = WorkQueue()
        q.add(("ns", "a"))
        q.add_after(("ns", "a"), 0.01)
        await asyncio.sleep(0.05)  # the timer fired while the key waits in the queue
        assert len(q) == 1
        q.done(await q.get())
        await _no_more(q, 0.1)

    asyncio.run(scenario())


def test_add_after_an_earlier_timer_wins() -> None:
    async def scenario() -> float:
        q: WorkQueue = WorkQueue()
        loop = asyncio.get_running_loop()
        start = loop.time()
        q.add_after(("ns", "a"), 2.0)
        q.add_after(("ns", "a"), 0.01)  # due earlier: the key comes after 0.01 s, not 2 s
        got = await asyncio.wait_for(q.get(), timeout=1.0)
        q.done(got)
        return loop.time() - start

    assert asyncio.run(scenario()) < 0.5

"""Retry with exponential backoff: transient failures are retried, permanent ones end the run at once."""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from typing import TypeVar

from gemma_operator.download.errors import DownloadError

T = TypeVar("T")
log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 5
    initial_delay: float = 2.0
    max_delay: float = 60.0

    def delay(self, failed_attempts: int) -> float:
        # Doubling per failure spreads load off a hub that is struggling; the cap keeps a Job from idling.
        return float(min(self.max_delay, self.initial_delay * 2 ** (failed_attempts - 1)))


def with_retries(
    action: Callable[[], T],
    classify: Callable[[BaseException], DownloadError],
    policy: RetryPolicy,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """Run `action`; retry transient failures per `policy`; raise the classified error otherwise."""
    for attempt in range(1, policy.attempts + 1):
        try:
            return action()
        except DownloadError as error:
            failure = error
        except Exception as exc:  # noqa: BLE001 - every client error is classified, none escapes unnamed
            failure = classify(exc)
        if failure.permanent:
            raise failure
        if attempt == policy.attempts:
            raise DownloadError(failure.reason, f"{failure} (gave up after {attempt} attempts)")
        pause = policy.delay(attempt)
        log.warning("attempt %d/%d failed (%s); retrying in %.1fs", attempt, policy.attempts, failure, pause)
        sleep(pause)
    raise AssertionError("unreachable: policy.attempts >= 1")

"""Every Redis key and channel sidechat uses, under one prefix (`SIDECHAT_REDIS_PREFIX`), so one
Redis can serve several deployments and `redis-cli --scan --pattern 'sidechat:*'` shows them all.

    <prefix>topic:<topic>           a topic's events, a Stream: entry `0-<event id>`, field `e`
                                    (the encoded event); a last entry with field `end` once it closed
    <prefix>followers:<topic>       how many clients follow a topic from processes that do not run it
    <prefix>cancel                  pub/sub: "stop this reply", heard by every process
    <prefix>cancel:<token>          pub/sub: the answers to one cancel request
    <prefix>processes               a set: the id of every process that holds (or held) a lease
    <prefix>process:<id>            a process's lease: a string that expires unless it is renewed
    <prefix>runs:<id>               a set: the ids of the replies that process is generating
    <prefix>reaping:<id>            a short lock: which process ends a dead one's replies
    <prefix>epoch                   a value set once: changed, Redis lost its keys (restarted)
"""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_PREFIX = "sidechat:"


@dataclass(frozen=True, slots=True)
class Keys:
    prefix: str = DEFAULT_PREFIX

    def topic(self, name: str) -> str:
        return f"{self.prefix}topic:{name}"

    def followers(self, name: str) -> str:
        return f"{self.prefix}followers:{name}"

    @property
    def cancel(self) -> str:
        return f"{self.prefix}cancel"

    def cancel_answers(self, token: str) -> str:
        return f"{self.prefix}cancel:{token}"

    @property
    def processes(self) -> str:
        return f"{self.prefix}processes"

    def process(self, process_id: str) -> str:
        return f"{self.prefix}process:{process_id}"

    def runs(self, process_id: str) -> str:
        return f"{self.prefix}runs:{process_id}"

    def reaping(self, process_id: str) -> str:
        return f"{self.prefix}reaping:{process_id}"

    @property
    def epoch(self) -> str:
        return f"{self.prefix}epoch"


def entry_id(event_id: int) -> str:
    """The stream entry id of our event `event_id`: our ids are the entries' ids, so XREAD from
    `0-<Last-Event-ID>` is the resume, exactly."""
    return f"0-{event_id}"


def event_id(entry: bytes | str) -> int:
    """Our event id from a stream entry id `0-<n>`."""
    text = entry.decode() if isinstance(entry, bytes) else entry
    high, _, low = text.partition("-")
    if high != "0" or not low.isdigit():
        raise ValueError(f"not a sidechat stream entry id: {text!r}")
    return int(low)

"""The feeds' keys in Redis, and the two Lua scripts that change them atomically.

    <prefix>feed:<name>             a feed's events, a Stream: entry `0-<event id>`, fields `p` (the
                                    id of the entry before it, 0 for a stream's first, -1 after events
                                    were dropped) and one of `e` (the encoded event, its `id:` line
                                    included), `end` (a deleted conversation: its followers end),
                                    `gone` (a removed member: their followers end), `gap`
    <prefix>presence:<id>           a sorted set: `<process>:<user>` for each user following the
                                    conversation on a process, scored by when it expires (ms)
    <prefix>watched                 a sorted set: the conversations followed somewhere (or within the
                                    replay window), scored by when that expires (ms)
    <prefix>watching                pub/sub: a conversation id, said when a process starts following it

Deliberate choices:
- Ids are given inside the script, `max(last + 1, Redis TIME ms × 1000)`, so every process's
  events of one feed are numbered in one strictly increasing sequence, and a feed that expired and
  came back never reuses an id a client may still hold (the in-memory `WindowedTopic`'s rule).
- `p` chains the entries: a follower at position P takes the next entry only if its `p` is P, so a
  resume is exact, or `reset` when anything between was trimmed, expired, dropped or belongs to
  another life of the feed. Ids alone cannot tell: they are the clock, not consecutive.
- Presence is computed in the same script that changes it and appends the `presence` event, so the
  events are in the order of the changes, and the last one says who is there now.
"""

from __future__ import annotations

from dataclasses import dataclass

from .redis_keys import Keys


@dataclass(frozen=True, slots=True)
class FeedKeys:
    prefix: str

    @classmethod
    def of(cls, keys: Keys) -> FeedKeys:
        return cls(keys.prefix)

    def feed(self, name: str) -> str:
        return f"{self.prefix}feed:{name}"

    def presence(self, conversation_id: int) -> str:
        return f"{self.prefix}presence:{conversation_id}"

    @property
    def watched(self) -> str:
        return f"{self.prefix}watched"

    @property
    def watching(self) -> str:
        return f"{self.prefix}watching"


# KEYS[1] the feed's stream, KEYS[2] the conversation's presence (unused by a user feed)
# ARGV[1] max entries, ARGV[2] max age (ms), ARGV[3] "1": this process dropped events of this feed,
# ARGV[4] this process's presence member prefix ("<process>:"), ARGV[5] presence ttl (ms),
# then pairs (kind, value): e <event without its id line> | end "" | gone <user>
#                         | join <user> | leave <user> | hold <user> (a present user, refreshed)
APPEND = r"""
local stream, zset = KEYS[1], KEYS[2]
local max_entries, max_ms = tonumber(ARGV[1]), tonumber(ARGV[2])
local member, ttl = ARGV[4], tonumber(ARGV[5])
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

local last, prev, ended = 0, 0, false
local top = redis.call('XREVRANGE', stream, '+', '-', 'COUNT', 1)
if top[1] then
  last = tonumber(string.sub(top[1][1], 3))
  prev = last
  ended = top[1][2][3] == 'end'  -- a deleted conversation's: only an event begins another life
end
if ARGV[3] == '1' then prev = -1 end
local added = false

local function add(kind, value)
  if ended then
    if kind ~= 'e' then return end  -- a control entry for a deleted conversation's followers: none left
    redis.call('DEL', stream)
    if prev ~= -1 then prev = 0 end
    ended = false
  end
  local id = math.max(last + 1, now_ms * 1000)
  local text = string.format('%.0f', id)
  if kind == 'e' then value = 'id: ' .. text .. '\n' .. value end
  redis.call('XADD', stream, 'MAXLEN', max_entries, '0-' .. text,
             'p', string.format('%.0f', prev), kind, value)
  last, prev, added = id, id, true
end

local function present()  -- the users in the set, expired or not (they are removed first)
  local seen, users = {}, {}
  for _, m in ipairs(redis.call('ZRANGE', zset, 0, -1)) do
    local user = string.sub(m, string.find(m, ':', 1, true) + 1)
    if not seen[user] then seen[user] = true; users[#users + 1] = user end
  end
  table.sort(users)
  return users
end

local before, joined, touched = nil, false, false
for i = 6, #ARGV, 2 do
  local kind, value = ARGV[i], ARGV[i + 1]
  if kind == 'join' or kind == 'leave' or kind == 'hold' then
    if not before then before = present() end
    touched = true
    if kind == 'leave' then
      redis.call('ZREM', zset, member .. value)
    else
      redis.call('ZADD', zset, now_ms + ttl, member .. value)
      joined = joined or kind == 'join'
    end
  else
    add(kind, value)
  end
end
if touched then
  redis.call('ZREMRANGEBYSCORE', zset, '-inf', now_ms)
  local after = present()
  local same = #after == #before
  for i = 1, #after do same = same and after[i] == before[i] end
  if joined or not (same or ended) then  -- nobody is told of a deleted conversation's leavers
    local quoted = {}
    for i, user in ipairs(after) do quoted[i] = cjson.encode(user) end
    add('e', 'event: presence\ndata: {"users": [' .. table.concat(quoted, ', ') .. ']}\n\n')
  end
  if redis.call('EXISTS', zset) == 1 then redis.call('PEXPIRE', zset, ttl) end
end
if ARGV[3] == '1' and not added and not ended then add('gap', '') end
if added then
  local oldest = (now_ms - max_ms) * 1000
  if oldest > 0 then redis.call('XTRIM', stream, 'MINID', '0-' .. string.format('%.0f', oldest)) end
  redis.call('PEXPIRE', stream, max_ms)
end
return string.format('%.0f', last)
"""

# KEYS[1] the watched set; ARGV[1] how long (ms) the conversations ARGV[2..] stay watched at least.
# Answers the conversations watched now.
WATCH = r"""
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local until_ms = now_ms + tonumber(ARGV[1])
for i = 2, #ARGV do redis.call('ZADD', KEYS[1], 'GT', until_ms, ARGV[i]) end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now_ms)
return redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. now_ms, '+inf')
"""

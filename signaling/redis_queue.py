"""Redis backend of :class:`signaling.store.CallQueue`: several nodes share one county.

Keys (under the configured prefix):
``call:{id}`` hash {v: version, d: JSON} · ``q:{dept}`` sorted set of waiting call ids by
queue score · ``agentcall:{user}`` / ``outletcall:{outlet}`` the active call held ·
``handling:{dept}`` recent handling times · ``deadlines`` sorted set name → due time ·
``presence`` hash user → JSON · ``conn:{side}`` hash sid → node · ``nodeconn:{node}`` set
of sides · ``nodes`` sorted set node → last heartbeat.

Atomicity comes from Lua scripts (one round trip, no interleaving). Key names are passed
as arguments, so this targets a single Redis (or Sentinel), not Redis Cluster.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import replace
from typing import Any

from redis.asyncio import Redis

from cloudhall.errors import Unavailable
from signaling.calls import Call
from signaling.presence import AgentPresence
from signaling.store import ENDED_TTL_SECONDS, AgentBusy, OutletBusy, StaleCall, index_changes

HANDLING_SAMPLES = 20
TIMEOUT = 5.0

# ARGV: 1 expected version ("0": must not exist), 2 JSON, 3 call id, 4 queue to leave,
# 5 queue to join, 6 score, 7 agent key to claim, 8 agent key to release, 9 outlet key to
# claim, 10 outlet key to release, 11 TTL seconds when ended ("0": keep).
COMMIT = """
local cur = redis.call('HGET', KEYS[1], 'v')
if ARGV[1] == '0' then
  if cur then return {0, ''} end
elseif cur ~= ARGV[1] then
  return {0, ''}
end
if ARGV[7] ~= '' then
  local h = redis.call('GET', ARGV[7])
  if h and h ~= ARGV[3] then return {-1, h} end
end
if ARGV[9] ~= '' then
  local h = redis.call('GET', ARGV[9])
  if h and h ~= ARGV[3] then return {-2, h} end
end
local v = redis.call('HINCRBY', KEYS[1], 'v', 1)
redis.call('HSET', KEYS[1], 'd', ARGV[2])
if ARGV[4] ~= '' then redis.call('ZREM', ARGV[4], ARGV[3]) end
if ARGV[5] ~= '' then redis.call('ZADD', ARGV[5], ARGV[6], ARGV[3]) end
if ARGV[7] ~= '' then redis.call('SET', ARGV[7], ARGV[3]) end
if ARGV[8] ~= '' and redis.call('GET', ARGV[8]) == ARGV[3] then redis.call('DEL', ARGV[8]) end
if ARGV[9] ~= '' then redis.call('SET', ARGV[9], ARGV[3]) end
if ARGV[10] ~= '' and redis.call('GET', ARGV[10]) == ARGV[3] then redis.call('DEL', ARGV[10]) end
if ARGV[11] ~= '0' then redis.call('EXPIRE', KEYS[1], tonumber(ARGV[11])) end
return {1, tostring(v)}
"""

# KEYS[1] deadlines; ARGV: now, lease token, limit.
TAKE_DUE = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[3]))
for _, name in ipairs(due) do redis.call('ZADD', KEYS[1], ARGV[2], name) end
return due
"""

# KEYS[1] deadlines; ARGV: name, token. Remove only if still leased with this token.
FINISH = """
local s = redis.call('ZSCORE', KEYS[1], ARGV[1])
if s and tonumber(s) == tonumber(ARGV[2]) then redis.call('ZREM', KEYS[1], ARGV[1]) end
return 1
"""

# KEYS[1] nodeconn:{node}, KEYS[2] nodes; ARGV: prefix for conn keys, node.
REAP = """
local sides = redis.call('SMEMBERS', KEYS[1])
local emptied = {}
for _, side in ipairs(sides) do
  local key = ARGV[1] .. side
  local conns = redis.call('HGETALL', key)
  local removed = 0
  for i = 1, #conns, 2 do
    if conns[i + 1] == ARGV[2] then redis.call('HDEL', key, conns[i]); removed = removed + 1 end
  end
  if removed > 0 and redis.call('HLEN', key) == 0 then table.insert(emptied, side) end
end
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[2])
return emptied
"""


class RedisCallQueue:
    """Shared call state in Redis; ``prefix`` isolates deployments (and tests)."""

    def __init__(self, redis: Redis, prefix: str = "cloudhall:") -> None:
        self._r = redis
        self._p = prefix
        self._commit = redis.register_script(COMMIT)
        self._take_due = redis.register_script(TAKE_DUE)
        self._finish = redis.register_script(FINISH)
        self._reap = redis.register_script(REAP)

    def _k(self, *parts: object) -> str:
        return self._p + ":".join(str(p) for p in parts)

    async def _run(self, coro: Any) -> Any:
        try:
            async with asyncio.timeout(TIMEOUT):
                return await coro
        except (TimeoutError, ConnectionError, OSError) as exc:
            raise Unavailable(f"Redis is not reachable: {type(exc).__name__}") from exc

    @staticmethod
    def _s(value: Any) -> str:
        return value.decode() if isinstance(value, bytes) else str(value)

    # -- calls ----------------------------------------------------------------------------
    async def get(self, call_id: str) -> Call | None:
        raw = await self._run(self._r.hmget(self._k("call", call_id), "v", "d"))
        if raw[0] is None or raw[1] is None:
            return None
        data = json.loads(raw[1])
        data["version"] = int(raw[0])
        return Call.from_dict(data)

    async def commit(self, old: Call | None, new: Call) -> Call:
        changes = index_changes(old, new)
        body = new.to_dict()
        body.pop("version", None)
        args = [
            "0" if old is None else str(old.version),
            json.dumps(body, ensure_ascii=False),
            new.id,
            self._k("q", changes.queue_remove) if changes.queue_remove is not None else "",
            self._k("q", changes.queue_add) if changes.queue_add is not None else "",
            repr(new.queue_score()),
            self._k("agentcall", changes.agent_claim) if changes.agent_claim is not None else "",
            self._k("agentcall", changes.agent_release) if changes.agent_release is not None else "",
            self._k("outletcall", changes.outlet_claim) if changes.outlet_claim is not None else "",
            self._k("outletcall", changes.outlet_release) if changes.outlet_release is not None else "",
            str(ENDED_TTL_SECONDS) if changes.ended else "0",
        ]
        status, value = await self._run(self._commit(keys=[self._k("call", new.id)], args=args))
        status = int(status)
        if status == 0:
            raise StaleCall(f"call {new.id} changed meanwhile")
        if status == -1:
            raise AgentBusy(f"agent {changes.agent_claim} already holds call {self._s(value)}")
        if status == -2:
            raise OutletBusy(f"outlet {changes.outlet_claim} already has call {self._s(value)}")
        return replace(new, version=int(self._s(value)))

    async def waiting(self, department_id: int, limit: int | None = None) -> list[Call]:
        stop = -1 if limit is None else max(limit, 1) - 1
        ids = await self._run(self._r.zrange(self._k("q", department_id), 0, stop))
        if not ids:
            return []
        pipe = self._r.pipeline(transaction=False)
        for cid in ids:
            pipe.hmget(self._k("call", self._s(cid)), "v", "d")
        rows = await self._run(pipe.execute())
        calls = []
        for version, data in rows:
            if version is None or data is None:
                continue
            values = json.loads(data)
            values["version"] = int(version)
            calls.append(Call.from_dict(values))
        return calls

    async def call_of_agent(self, agent_id: int) -> str | None:
        value = await self._run(self._r.get(self._k("agentcall", agent_id)))
        return self._s(value) if value is not None else None

    async def call_of_outlet(self, outlet_id: int) -> str | None:
        value = await self._run(self._r.get(self._k("outletcall", outlet_id)))
        return self._s(value) if value is not None else None

    async def record_handling(self, department_id: int, seconds: float) -> None:
        key = self._k("handling", department_id)
        pipe = self._r.pipeline(transaction=True)
        pipe.lpush(key, repr(seconds))
        pipe.ltrim(key, 0, HANDLING_SAMPLES - 1)
        await self._run(pipe.execute())

    async def handling_times(self, department_id: int) -> list[float]:
        values = await self._run(self._r.lrange(self._k("handling", department_id), 0, -1))
        return [float(self._s(v)) for v in values]

    # -- deadlines ------------------------------------------------------------------------
    async def schedule(self, name: str, at: float) -> None:
        await self._run(self._r.zadd(self._k("deadlines"), {name: at}))

    async def unschedule(self, name: str) -> None:
        await self._run(self._r.zrem(self._k("deadlines"), name))

    async def take_due(self, now: float, lease: float, limit: int = 100) -> list[tuple[str, float]]:
        token = now + lease
        names = await self._run(
            self._take_due(keys=[self._k("deadlines")], args=[repr(now), repr(token), limit])
        )
        return [(self._s(n), token) for n in names]

    async def finish(self, name: str, token: float) -> None:
        await self._run(self._finish(keys=[self._k("deadlines")], args=[name, repr(token)]))

    # -- presence -------------------------------------------------------------------------
    async def get_presence(self, user_id: int) -> AgentPresence | None:
        raw = await self._run(self._r.hget(self._k("presence"), str(user_id)))
        return AgentPresence.from_dict(json.loads(raw)) if raw else None

    async def put_presence(self, presence: AgentPresence) -> None:
        await self._run(
            self._r.hset(self._k("presence"), str(presence.user_id), json.dumps(presence.to_dict()))
        )

    async def all_presence(self) -> list[AgentPresence]:
        raw = await self._run(self._r.hgetall(self._k("presence")))
        return [AgentPresence.from_dict(json.loads(v)) for v in raw.values()]

    # -- connections and nodes ------------------------------------------------------------
    async def connect(self, side: str, sid: str, node: str) -> int:
        pipe = self._r.pipeline(transaction=True)
        pipe.hset(self._k("conn", side), sid, node)
        pipe.sadd(self._k("nodeconn", node), side)
        pipe.hlen(self._k("conn", side))
        result = await self._run(pipe.execute())
        return int(result[-1])

    async def disconnect(self, side: str, sid: str, node: str) -> int:
        pipe = self._r.pipeline(transaction=True)
        pipe.hdel(self._k("conn", side), sid)
        pipe.hlen(self._k("conn", side))
        result = await self._run(pipe.execute())
        return int(result[-1])

    async def connection_count(self, side: str) -> int:
        return int(await self._run(self._r.hlen(self._k("conn", side))))

    async def node_beat(self, node: str, now: float) -> None:
        await self._run(self._r.zadd(self._k("nodes"), {node: now}))

    async def nodes(self) -> dict[str, float]:
        rows = await self._run(self._r.zrange(self._k("nodes"), 0, -1, withscores=True))
        return {self._s(n): float(s) for n, s in rows}

    async def reap_node(self, node: str) -> list[str]:
        emptied = await self._run(
            self._reap(
                keys=[self._k("nodeconn", node), self._k("nodes")],
                args=[self._k("conn", ""), node],
            )
        )
        return [self._s(s) for s in emptied]

    async def close(self) -> None:
        return None

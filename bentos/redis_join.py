"""The shared join store: predictions of every pod of every version in one Redis, labels counted there.

On a cluster a version runs on several pods behind a router that sends a feedback label to any of
them, and a mirror that throws the shadow's answer away. So each model server writes what it
predicted into Redis (``BENTO_JOIN_STORE=redis://host:port/db``), and a label or a second version's
answer to the same request id is joined there, atomically, by the Lua scripts below:

- ``record``: a server's batch of ``(request id, predicted classes, time)``. Each request id is one
  hash ``<prefix>p:<model>:<request id>`` with one field per version that answered it (``v:<version>``
  = ``<unix time>|<class>,<class>,...``), kept for twice the join window. When a second version
  answers the same request id (a mirrored request), the two answers are compared once and both
  versions' ``model_shadow_comparisons_total`` / ``model_shadow_agreements_total`` grow.
- ``label``: the true classes for a request id, from whichever pod received them. Refused when no
  prediction has that id (404), when it is older than the join window (410) or the row counts
  differ (422); the same labels sent again count once (the answer says ``duplicate``), other labels
  for the same id are a conflict (409). Counted for every version that answered the request.

The counters live in Redis (hash ``<prefix>counters``), so they survive a pod restart; with the
store's append-only file fsynced on every write (``appendfsync always``, see tests and the chart), a
200 means the label is counted durably. One exporter (``bentos/join_exporter.py``) serves them to
Prometheus under the same metric names a single server uses, so templates, alerts and dashboards
are unchanged. The hot path only appends to a list; a thread sends it every ``flush_interval`` as
one script call, and keeps (bounded) what it could not send while Redis is away.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence

import redis

from bentos.background import Buffer, Periodic
from bentos.join import Resolved
from bentos.parsing import BadRequest
from rollout.metrics import names as n

logger = logging.getLogger("bentos.redis_join")

SEP = "\x1f"  # between the parts of a counter field: metric, model, version
# after Redis was away (a send or a label of this pod failed), an unknown request id is a 503 (send
# it again) for this long, not a 404: its prediction may still be in some pod's buffer
RECOVERING_SECONDS = 10.0
MAX_PENDING = 200_000  # predictions kept while Redis is unreachable (then the oldest are dropped)

# KEYS[1] counters hash, KEYS[2..] prediction hashes; ARGV: model, version, ttl, then one value per key
_RECORD = """
local model, version, ttl = ARGV[1], ARGV[2], tonumber(ARGV[3])
local field = 'v:' .. version
-- this version's series exist (at 0) from its first prediction, so that Prometheus' increase()
-- counts its first labels too (a series first seen at 5 adds nothing to an increase)
for _, metric in ipairs({@DECLARED@}) do
  redis.call('HSETNX', KEYS[1], metric .. '\\31' .. model .. '\\31' .. version, 0)
end
local function classes(value)
  local out = {}
  for c in string.gmatch(string.sub(value, string.find(value, '|', 1, true) + 1), '[^,]+') do
    out[#out + 1] = c
  end
  return out
end
for i = 2, #KEYS do
  local key, value = KEYS[i], ARGV[i + 2]
  local others = redis.call('HGETALL', key)
  redis.call('HSET', key, field, value)
  redis.call('EXPIRE', key, ttl)
  for j = 1, #others, 2 do
    local f = others[j]
    if string.sub(f, 1, 2) == 'v:' and f ~= field then
      local other = string.sub(f, 3)
      local pair = other < version and (other .. '\\31' .. version) or (version .. '\\31' .. other)
      if redis.call('HSETNX', key, 'c:' .. pair, '1') == 1 then
        local mine, theirs = classes(value), classes(others[j + 1])
        if #mine == #theirs then
          local agreed = 0
          for r = 1, #mine do if mine[r] == theirs[r] then agreed = agreed + 1 end end
          for _, v in ipairs({version, other}) do
            redis.call('HINCRBY', KEYS[1], '@COMPARED@\\31' .. model .. '\\31' .. v, #mine)
            redis.call('HINCRBY', KEYS[1], '@AGREED@\\31' .. model .. '\\31' .. v, agreed)
          end
        end
      end
    end
  end
end
return #KEYS - 1
"""
_MARKS = {
    "@TOTAL@": n.FEEDBACK_TOTAL,
    "@CORRECT@": n.FEEDBACK_CORRECT_TOTAL,
    "@ABSOLUTE@": n.FEEDBACK_ABSOLUTE_ERROR_SUM,
    "@SQUARED@": n.FEEDBACK_SQUARED_ERROR_SUM,
    "@COMPARED@": n.SHADOW_COMPARISONS_TOTAL,
    "@AGREED@": n.SHADOW_AGREEMENTS_TOTAL,
}


def _named(script: str) -> str:
    for mark, name in _MARKS.items():
        script = script.replace(mark, name)
    return script


# a classifier declares its correct labels, a regressor its two error sums
RECORD = _named(_RECORD.replace("@DECLARED@", "'@TOTAL@', '@CORRECT@', '@COMPARED@', '@AGREED@'"))
RECORD_REGRESSION = _named(
    _RECORD.replace("@DECLARED@", "'@TOTAL@', '@ABSOLUTE@', '@SQUARED@', '@COMPARED@', '@AGREED@'")
)

# LABEL's and LABEL_REGRESSION's common part: the prediction's hash, the refusals (unknown,
# duplicate, conflict, late, row count) and, per version that answered, its predicted rows
_LOOKUP = """
local model, labels, now, window = ARGV[1], ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
local h = redis.call('HGETALL', KEYS[2])
if #h == 0 then return {'unknown'} end
local truth = {}
for c in string.gmatch(labels, '[^,]+') do truth[#truth + 1] = @TRUTH@ end
local answers = {}
for j = 1, #h, 2 do
  if h[j] == 'label' then
    if h[j + 1] == labels then return {'duplicate'} end
    return {'conflict'}
  end
  if string.sub(h[j], 1, 2) == 'v:' then answers[#answers + 1] = {string.sub(h[j], 3), h[j + 1]} end
end
if #answers == 0 then return {'unknown'} end
local out = {'ok'}
local counted = {}
for _, a in ipairs(answers) do
  local bar = string.find(a[2], '|', 1, true)
  local at = tonumber(string.sub(a[2], 1, bar - 1))
  if now - at > window then return {'late', tostring(now - at)} end
  local predicted = {}
  for c in string.gmatch(string.sub(a[2], bar + 1), '[^,]+') do predicted[#predicted + 1] = c end
  if #predicted ~= #truth then return {'count', tostring(#predicted)} end
"""


def _lookup(truth: str) -> str:
    """_LOOKUP with the labels read by ``truth`` (a Lua expression of ``c``: as text, or tonumber)."""
    return _LOOKUP.replace("@TRUTH@", truth).lstrip("\n")


# KEYS[1] counters, KEYS[2] the prediction hash; ARGV: model, labels ("1,0,2"), now, window
LABEL = (
    """
@LOOKUP@  local correct = 0
  for r = 1, #truth do if predicted[r] == truth[r] then correct = correct + 1 end end
  counted[#counted + 1] = {a[1], correct}
end
redis.call('HSET', KEYS[2], 'label', labels)
for _, c in ipairs(counted) do
  redis.call('HINCRBY', KEYS[1], '@TOTAL@\\31' .. model .. '\\31' .. c[1], #truth)
  redis.call('HINCRBY', KEYS[1], '@CORRECT@\\31' .. model .. '\\31' .. c[1], c[2])
  out[#out + 1] = c[1]
  out[#out + 1] = tostring(c[2])
end
return out
""".replace("@LOOKUP@", _lookup("c"))
    .replace("@TOTAL@", n.FEEDBACK_TOTAL)
    .replace("@CORRECT@", n.FEEDBACK_CORRECT_TOTAL)
)

# a regressor's labels: LABEL's checks, then per version the sums of |prediction - label| and
# (prediction - label)^2, added with HINCRBYFLOAT. Every check (a value that is not a number: 'kind';
# sums that overflow: 'range') comes before the first write, since a script is not rolled back.
# Replies 'ok' then (version, absolute sum, squared sum) per version, the sums as %.17g.
LABEL_REGRESSION = _named(
    """
@LOOKUP_NUMBERS@  local absolute, squared = 0, 0
  for r = 1, #truth do
    local p = tonumber(predicted[r])
    if p == nil or truth[r] == nil then return {'kind'} end
    local e = p - truth[r]
    absolute = absolute + math.abs(e)
    squared = squared + e * e
  end
  if absolute ~= absolute or squared ~= squared or squared == math.huge then return {'range'} end
  counted[#counted + 1] = {a[1], string.format('%.17g', absolute), string.format('%.17g', squared)}
end
redis.call('HSET', KEYS[2], 'label', labels)
for _, c in ipairs(counted) do
  redis.call('HINCRBY', KEYS[1], '@TOTAL@\\31' .. model .. '\\31' .. c[1], #truth)
  redis.call('HINCRBYFLOAT', KEYS[1], '@ABSOLUTE@\\31' .. model .. '\\31' .. c[1], c[2])
  redis.call('HINCRBYFLOAT', KEYS[1], '@SQUARED@\\31' .. model .. '\\31' .. c[1], c[3])
  out[#out + 1] = c[1]
  out[#out + 1] = c[2]
  out[#out + 1] = c[3]
end
return out
""".replace("@LOOKUP_NUMBERS@", _lookup("tonumber(c)"))
)


def connect(url: str, password: str | None = None, timeout: float = 2.0) -> redis.Redis:
    """A client for ``redis://host:port/db`` (``password`` from a Secret, never in the URL's log)."""
    if not url.startswith("redis://"):
        raise ValueError(f"the join store must be a redis://host:port/db URL, not {url!r}")
    kwargs: dict[str, object] = {
        "socket_timeout": timeout,
        "socket_connect_timeout": timeout,
        "health_check_interval": 30,
    }
    if password:
        kwargs["password"] = password
    return redis.Redis.from_url(url, **kwargs)


class RedisJoin:
    """The :class:`bentos.join.Join` of a server whose version runs on many pods (one Redis for all)."""

    counts_itself = False  # the counters are in Redis; bentos/join_exporter.py exports them

    def __init__(
        self,
        client: redis.Redis,
        model: str,
        version: str,
        window_seconds: float = 3600.0,
        flush_interval: float = 0.05,
        lookup_wait: float = 0.6,
        prefix: str = "bento:join:",
        recovering_seconds: float = RECOVERING_SECONDS,
        regression: bool = False,
    ) -> None:
        self.client = client
        self.regression = regression
        self.model = model
        self.version = version
        self.window_seconds = window_seconds
        self.flush_interval = flush_interval
        self.lookup_wait = lookup_wait
        self.recovering_seconds = recovering_seconds
        self.prefix = prefix
        self.counters_key = prefix + "counters"
        self._record = client.register_script(RECORD_REGRESSION if regression else RECORD)
        self._label = client.register_script(LABEL_REGRESSION if regression else LABEL)
        self._pending: Buffer[tuple[str, str]] = Buffer(MAX_PENDING)
        self._lock = threading.Lock()  # one sender at a time (the thread, close, a label)
        self._flusher = Periodic("join-flush", flush_interval, self.flush)
        self._warned = 0.0
        self._failed_at = -recovering_seconds  # the last time a send to Redis failed (monotonic)

    def key(self, request_id: str) -> str:
        return f"{self.prefix}p:{self.model}:{request_id}"

    def start(self) -> None:
        self.declare()
        self._flusher.start()

    def declare(self) -> None:
        """Create this version's feedback and shadow series at 0 now (RECORD with no prediction),
        so that Prometheus sees them at 0 before the first label or mirrored answer and
        ``increase()`` counts that one too: a shadow's first answer is already a comparison, and a
        series first scraped at 1 adds nothing to an increase. Redis away: the first RECORD does it."""
        try:
            self._record(keys=[self.counters_key], args=[self.model, self.version, 1])
        except redis.RedisError as exc:
            logger.warning(
                "could not create the join series of %s %s at 0: %s", self.model, self.version, exc
            )

    def close(self) -> None:
        self._flusher.stop()
        self.client.close()

    def record(self, request_id: str, predicted: Sequence[float]) -> None:
        """Hot path: remember what was predicted for ``request_id`` (sent to Redis by the thread)."""
        self._pending.append((request_id, f"{time.time():.3f}|{','.join(map(str, predicted))}"))

    def flush(self, wait: bool = True) -> None:
        """Send everything recorded so far; on a Redis error keep it (bounded) for the next try.
        ``wait=False``: nothing when another sender (the thread) is at it."""
        if not self._lock.acquire(blocking=wait):
            return
        try:
            self._send()
        finally:
            self._lock.release()

    def _send(self) -> None:
        batch = self._pending.take()
        if not batch:
            return
        try:
            while batch:  # what is left of ``batch`` is what Redis has not taken yet
                part = batch[:500]
                self._record(
                    keys=[self.counters_key, *(self.key(rid) for rid, _ in part)],
                    args=[self.model, self.version, int(self.window_seconds * 2), *(v for _, v in part)],
                )
                del batch[:500]
        except redis.RedisError as exc:
            self._pending.put_back(batch)
            self._failed_at = time.monotonic()
            if time.monotonic() - self._warned > 10.0:
                self._warned = time.monotonic()
                logger.warning("join store unreachable, %d predictions kept: %s", len(self._pending), exc)

    def resolve(self, request_id: str, labels: Sequence[float]) -> Resolved:
        """Count ``labels`` as the truth for ``request_id`` for every version that answered it.
        Asked first, before this pod's buffer is sent: a hung Redis holds a label for one socket
        timeout. An unknown id sends this pod's buffer (unless its thread is sending it) and asks
        again; another pod's buffer is sent by that pod within its ``flush_interval``, waited for
        up to ``lookup_wait``."""
        deadline = time.monotonic() + self.lookup_wait
        args = [self.model, ",".join(map(str, labels)), f"{time.time():.3f}", self.window_seconds]
        while True:
            try:
                reply = [
                    v.decode() if isinstance(v, bytes) else str(v)
                    for v in self._label(keys=[self.counters_key, self.key(request_id)], args=args)
                ]
            except redis.RedisError as exc:
                self._failed_at = time.monotonic()
                raise BadRequest(
                    503,
                    "join_store_unavailable",
                    f"the feedback join store is unreachable ({type(exc).__name__}); nothing was "
                    "recorded, send the label again",
                    retry_after=1,
                ) from None
            if reply[0] != "unknown" or time.monotonic() >= deadline:
                break
            if self._pending:  # perhaps this pod's own prediction, not sent yet
                self.flush(wait=False)
                if not self._pending:
                    continue
            time.sleep(0.05)  # another pod's prediction may still be in its 50 ms buffer
        return self._answer(request_id, labels, reply)

    def _answer(self, request_id: str, labels: Sequence[float], reply: list[str]) -> Resolved:
        status = reply[0]
        if status == "ok" and self.regression:
            versions = tuple(reply[1::3])
            sums = {
                v: (float(a), float(q)) for v, a, q in zip(versions, reply[2::3], reply[3::3], strict=True)
            }
            absolute, squared = sums.get(self.version, next(iter(sums.values())))
            return Resolved(len(labels), 0, False, versions, absolute, squared)
        if status == "ok":
            versions = tuple(reply[1::2])
            correct = dict(zip(versions, map(int, reply[2::2]), strict=True))
            mine = correct.get(self.version, next(iter(correct.values())))
            return Resolved(len(labels), mine, False, versions)
        if status == "duplicate":
            return Resolved(len(labels), 0, True)
        if status == "unknown" and time.monotonic() - self._failed_at < self.recovering_seconds:
            # Redis was away a moment ago: the prediction may still be in a pod's buffer (this one's
            # or another's, whose sends failed too) on its way; a 404 would lose the label for good
            raise BadRequest(
                503,
                "join_store_recovering",
                f"no prediction with request id {request_id!r} yet: the join store was unreachable "
                f"{time.monotonic() - self._failed_at:.0f} s ago and predictions are still being sent; "
                "send the label again",
                retry_after=1,
            )
        if status == "unknown":
            raise BadRequest(
                404,
                "unknown_request_id",
                f"no prediction with request id {request_id!r} (never made, or older than "
                f"{self.window_seconds * 2:.0f} s)",
            )
        if status == "late":
            raise BadRequest(
                410,
                "feedback_too_late",
                f"the prediction {request_id!r} was made {float(reply[1]):.0f} s ago, after the join "
                f"window of {self.window_seconds:.0f} s: the label is not counted",
            )
        if status == "conflict":
            raise BadRequest(
                409, "feedback_exists", f"other labels for request id {request_id!r} were already recorded"
            )
        if status == "kind":
            raise BadRequest(
                422,
                "bad_label",
                f"request {request_id!r} was answered with classes, not values: send a class",
            )
        if status == "range":
            raise BadRequest(
                422, "value_out_of_range", "labels this far from the predictions overflow the error sums"
            )
        rows = int(reply[1])
        raise BadRequest(
            422,
            "label_count",
            f"request {request_id!r} predicted {rows} rows; send {rows} {'label' if rows == 1 else 'labels'}",
        )


def counters(client: redis.Redis, prefix: str = "bento:join:") -> dict[tuple[str, str, str], float]:
    """Every counter in the store: ``(metric, model, version) -> value`` (an int, but a regressor's
    error sums, which HINCRBYFLOAT keeps as decimal text)."""
    out: dict[tuple[str, str, str], float] = {}
    for field, value in client.hgetall(prefix + "counters").items():
        parts = field.decode().split(SEP)
        if len(parts) == 3:
            text = value.decode()
            out[(parts[0], parts[1], parts[2])] = int(text) if text.lstrip("-").isdigit() else float(text)
    return out

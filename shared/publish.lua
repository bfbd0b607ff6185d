-- Publish N events (N >= 1) to one topic, atomically (see shared/bus.py).
-- KEYS[1] topic stream, KEYS[2] topic meta hash, KEYS[3] the publisher's call log (a hash:
-- topic stream -> "call first epoch" of its recent calls, space-separated triples)
-- ARGV[1] channel, ARGV[2] stream MAXLEN (approximate), ARGV[3] TTL seconds (0 = none),
-- ARGV[4] epoch to use if the topic has none yet,
-- ARGV[5] R, the number of runs of events with the same tags,
-- ARGV[6] this call's number (unique per publisher, increasing), then R pairs
-- (ARGV[5 + 2r] events in run r, ARGV[6 + 2r] their tags),
-- then the N events in order, each its JSON without its last two bytes (it ends inside
-- "metadata").
-- The events get consecutive offsets. Returns {offset of the first event, epoch}.
--
-- A call that already ran (a client retried it because the connection dropped before the
-- reply came back) is found in the call log and answered with its first result, without
-- publishing anything again: publishing is idempotent per call.
local runs = tonumber(ARGV[5])
local base = 6 + 2 * runs -- ARGV[base + i] is event i
local n = #ARGV - base
local counted = 0
for r = 1, runs do
  counted = counted + tonumber(ARGV[5 + 2 * r])
end
if n < 1 or counted ~= n then -- checked before anything is written
  return redis.error_reply('publish.lua: ' .. n .. ' events but runs of ' .. counted)
end
local call = ARGV[6]
local calls = redis.call('hget', KEYS[3], KEYS[1]) or ''
for c, f, e in string.gmatch(calls, '(%d+) (%d+) (%S+)') do
  if c == call then
    return {tonumber(f), e}
  end
end
local epoch = redis.call('hget', KEYS[2], 'epoch')
if not epoch then
  -- A new epoch: whatever is left in the stream belongs to an older one and its offsets
  -- must never be mixed with the new ones.
  epoch = ARGV[4]
  redis.call('hset', KEYS[2], 'epoch', epoch)
  redis.call('del', KEYS[1])
end
local first = redis.call('hincrby', KEYS[2], 'offset', n) - n + 1
local stream, channel, maxlen = KEYS[1], ARGV[1], ARGV[2]
local tail = ',"epoch":"' .. epoch .. '"}}'
local i = 0
for r = 1, runs do
  local tags = ARGV[6 + 2 * r]
  local head = ' ' .. epoch .. ' ' .. tags .. '\n'
  for _ = 1, tonumber(ARGV[5 + 2 * r]) do
    i = i + 1
    local offset = first + i - 1
    local data = ARGV[base + i] .. ',"offset":' .. offset .. tail
    redis.call('xadd', stream, offset .. '-0', 'd', data, 't', tags)
    redis.call('publish', channel, offset .. head .. data)
  end
end
-- Trimmed once per call, as XADD MAXLEN ~ would per event: only whole stream nodes go (at
-- most 100 x stream-node-max-entries entries per call, Redis's default LIMIT for "~"; a call
-- adds far fewer).
redis.call('xtrim', stream, 'MAXLEN', '~', maxlen)
local ttl = tonumber(ARGV[3])
if ttl > 0 then
  redis.call('expire', KEYS[1], ttl)
  redis.call('expire', KEYS[2], ttl)
end
-- Remember this call (the publisher's last 16 on this topic; a retry comes within seconds).
local kept, count = {call .. ' ' .. first .. ' ' .. epoch}, 1
for triple in string.gmatch(calls, '%d+ %d+ %S+') do
  if count >= 16 then break end
  count = count + 1
  kept[count] = triple
end
redis.call('hset', KEYS[3], KEYS[1], table.concat(kept, ' '))
redis.call('pexpire', KEYS[3], 600000)
return {first, epoch}

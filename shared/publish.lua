-- Publish N events (N >= 1) to one topic, atomically (see shared/bus.py).
-- KEYS[1] topic stream, KEYS[2] topic meta hash, KEYS[3] the publisher's call log (a hash:
-- topic stream -> "call first epoch" of its recent calls, space-separated triples),
-- KEYS[4] the topic's transcript stream (only with transcript limits, see below)
-- ARGV[1] channel, ARGV[2] stream MAXLEN (approximate), ARGV[3] TTL seconds (0 = none),
-- ARGV[4] epoch to use if the topic has none yet,
-- ARGV[5] R, the number of runs of events with the same tags,
-- ARGV[6] this call's number (unique per publisher, increasing), then R pairs
-- (ARGV[5 + 2r] events in run r, ARGV[6 + 2r] their tags),
-- then the transcript limits, "max-events max-bytes retention-seconds" or "" for none,
-- then the N events in order, each its JSON without its last two bytes (it ends inside
-- "metadata").
-- The events get consecutive offsets. Returns {offset of the first event, epoch}.
--
-- A transcript is a second stream of the same entries (same ids, so the same offsets) that
-- keeps far more than the replay buffer: it is trimmed from its oldest entry when it holds
-- more than max-events entries or max-bytes bytes of entries (``tbytes`` in the meta hash
-- counts them), each by up to 1% (at least 64 entries / 64 KiB) before a trim, so that
-- trimming is done in batches rather than on every call. It expires retention-seconds after
-- the topic's last event, and the topic's stream and meta hash live at least as long (the
-- transcript's offsets and epoch are theirs).
--
-- A call that already ran (a client retried it because the connection dropped before the
-- reply came back) is found in the call log and answered with its first result, without
-- publishing anything again: publishing is idempotent per call.
local runs = tonumber(ARGV[5])
local base = 7 + 2 * runs -- ARGV[base + i] is event i
local transcript, t_events, t_bytes, t_ttl = nil, 0, 0, 0
if ARGV[base] ~= '' then
  local e, b, r = string.match(ARGV[base], '^(%d+) (%d+) (%d+)$')
  if not e or not KEYS[4] then
    return redis.error_reply('publish.lua: bad transcript limits ' .. ARGV[base])
  end
  transcript, t_events, t_bytes, t_ttl = KEYS[4], tonumber(e), tonumber(b), tonumber(r)
end
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
  if transcript then
    redis.call('del', transcript)
  end
end
local first = redis.call('hincrby', KEYS[2], 'offset', n) - n + 1
local stream, channel, maxlen = KEYS[1], ARGV[1], ARGV[2]
local tail = ',"epoch":"' .. epoch .. '"}}'
local i, added = 0, 0
for r = 1, runs do
  local tags = ARGV[6 + 2 * r]
  local head = ' ' .. epoch .. ' ' .. tags .. '\n'
  for _ = 1, tonumber(ARGV[5 + 2 * r]) do
    i = i + 1
    local offset = first + i - 1
    local data = ARGV[base + i] .. ',"offset":' .. offset .. tail
    redis.call('xadd', stream, offset .. '-0', 'd', data, 't', tags)
    if transcript then
      redis.call('xadd', transcript, offset .. '-0', 'd', data, 't', tags)
      added = added + #data + #tags
    end
    redis.call('publish', channel, offset .. head .. data)
  end
end
-- Trimmed once per call, as XADD MAXLEN ~ would per event: only whole stream nodes go (at
-- most 100 x stream-node-max-entries entries per call, Redis's default LIMIT for "~"; a call
-- adds far fewer).
redis.call('xtrim', stream, 'MAXLEN', '~', maxlen)
local ttl = tonumber(ARGV[3])
if transcript then
  local bytes = redis.call('hincrby', KEYS[2], 'tbytes', added)
  local count = redis.call('xlen', transcript)
  if count > t_events + math.max(64, math.floor(t_events / 100))
      or bytes > t_bytes + math.max(65536, math.floor(t_bytes / 100)) then
    -- Drop the oldest entries until both are within the limits (exactly).
    local from, last, freed = '-', nil, 0
    while (count > t_events or bytes > t_bytes) do
      local batch = redis.call('xrange', transcript, from, '+', 'COUNT', 256)
      if #batch == 0 then break end
      for _, entry in ipairs(batch) do
        if count <= t_events and bytes <= t_bytes then break end
        local f = entry[2] -- {'d', data, 't', tags}
        local size = #f[2] + #(f[4] or '')
        bytes, count, freed = bytes - size, count - 1, freed + size
        last = entry[1]
      end
      from = (tonumber(string.match(last, '^(%d+)')) + 1) .. '-0'
    end
    if last then
      redis.call('xtrim', transcript, 'MINID', from)
      redis.call('hincrby', KEYS[2], 'tbytes', -freed)
    end
  end
  redis.call('expire', transcript, t_ttl)
  if ttl > 0 and ttl < t_ttl then
    ttl = t_ttl
  end
end
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

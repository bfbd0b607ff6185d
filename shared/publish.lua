-- Publish one event to a topic, atomically (see shared/bus.py).
-- KEYS[1] topic stream, KEYS[2] topic meta hash
-- ARGV[1] channel, ARGV[2] event JSON without its last two bytes (it ends inside "metadata"),
-- ARGV[3] tags, ARGV[4] stream MAXLEN (approximate), ARGV[5] TTL seconds (0 = none),
-- ARGV[6] epoch to use if the topic has none yet.
-- Returns {offset, epoch}.
local epoch = redis.call('hget', KEYS[2], 'epoch')
if not epoch then
  -- A new epoch: whatever is left in the stream belongs to an older one and its offsets
  -- must never be mixed with the new ones.
  epoch = ARGV[6]
  redis.call('hset', KEYS[2], 'epoch', epoch)
  redis.call('del', KEYS[1])
end
local offset = redis.call('hincrby', KEYS[2], 'offset', 1)
local data = ARGV[2] .. ',"offset":' .. offset .. ',"epoch":"' .. epoch .. '"}}'
redis.call('xadd', KEYS[1], 'MAXLEN', '~', ARGV[4], offset .. '-0', 'd', data, 't', ARGV[3])
local ttl = tonumber(ARGV[5])
if ttl > 0 then
  redis.call('expire', KEYS[1], ttl)
  redis.call('expire', KEYS[2], ttl)
end
redis.call('publish', ARGV[1], offset .. ' ' .. epoch .. ' ' .. ARGV[3] .. '\n' .. data)
return {offset, epoch}

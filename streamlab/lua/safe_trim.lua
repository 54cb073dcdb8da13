-- safe_trim.lua: a library chunk, not a script. `streamlab.scripts.lua_source` puts it in
-- place of the line `--!include safe_trim` of the scripts that trim a stream.
--
-- sl_safe_trim(key, maxlen, minid) trims stream `key` to `maxlen` entries (0 = no cap; only
-- once it is more than min(100, maxlen / 10) over, like MAXLEN ~, so that a busy stream is
-- trimmed in steps, not at each add) and drops the entries before `minid` ('' = none), but never an entry that one of the key's consumer groups has not been given
-- (after its last-delivered-id) or still holds pending: the cut stops at the "safe point",
-- the smallest of each group's oldest pending id and first undelivered entry (XINFO GROUPS,
-- then one XPENDING summary and one XRANGE COUNT 1 per group). The cut is exact (XTRIM
-- MINID to an id found with XRANGE ... COUNT), so the work is proportional to the entries
-- removed, never to a lagging group's backlog.
--
-- The retention cut (`minid`) is the caller's: computed from the server's clock (TIME), never
-- the client's, so a client clock ahead of the server cannot trim entries early.
--
-- Returns {removed, held}: held is 1 when a group's position kept entries the cap or the
-- retention asked to remove.

local SL_MAX_ID = '18446744073709551615-18446744073709551615'

local function sl_num_lt(a, b)
  if #a ~= #b then
    return #a < #b
  end
  return a < b
end

-- Stream ids compared as numbers (Redis writes them without leading zeros).
local function sl_id_lt(a, b)
  local ams, aseq = string.match(a, '^(%d+)-(%d+)$')
  local bms, bseq = string.match(b, '^(%d+)-(%d+)$')
  if ams ~= bms then
    return sl_num_lt(ams, bms)
  end
  return sl_num_lt(aseq, bseq)
end

local function sl_min_id(a, b)
  if a == nil then
    return b
  end
  if b == nil or sl_id_lt(a, b) then
    return a
  end
  return b
end

-- The first id no trim may remove (nil: no group, or every group has been given everything
-- and holds nothing pending).
local function sl_safe_point(key)
  local safe = nil
  for _, info in ipairs(redis.call('XINFO', 'GROUPS', key)) do
    local name, last = nil, '0-0'
    for i = 1, #info, 2 do
      if info[i] == 'name' then
        name = info[i + 1]
      elseif info[i] == 'last-delivered-id' then
        last = info[i + 1]
      end
    end
    local summary = redis.call('XPENDING', key, name)
    if tonumber(summary[1]) > 0 then
      safe = sl_min_id(safe, summary[2])
    end
    if last ~= SL_MAX_ID then -- '(' of the largest id is refused: nothing comes after it
      local after = redis.call('XRANGE', key, '(' .. last, '+', 'COUNT', 1)
      if #after > 0 then
        safe = sl_min_id(safe, after[1][1])
      end
    end
  end
  return safe
end

local function sl_safe_trim(key, maxlen, minid)
  local excess = 0
  if maxlen > 0 then
    local len = redis.call('XLEN', key)
    if len - maxlen > math.min(100, math.floor(maxlen / 10)) then
      excess = len - maxlen
    end
  end
  if excess == 0 and minid == '' then
    return {0, 0}
  end
  local safe = sl_safe_point(key)
  local held = 0
  local keep = nil -- the first id to keep: everything before it goes
  if minid ~= '' then
    keep = minid
  end
  if excess > 0 then
    -- The entry the cap keeps first, looked for only below the safe point.
    local stop = '+'
    if safe ~= nil then
      stop = '(' .. safe
    end
    local head = redis.call('XRANGE', key, '-', stop, 'COUNT', excess + 1)
    local cap = safe
    if #head == excess + 1 then
      cap = head[excess + 1][1]
    else
      held = 1
    end
    if cap ~= nil and (keep == nil or sl_id_lt(keep, cap)) then
      keep = cap
    end
  end
  if keep == nil then
    return {0, held}
  end
  if safe ~= nil and sl_id_lt(safe, keep) then
    keep = safe
    held = 1
  end
  return {redis.call('XTRIM', key, 'MINID', keep), held}
end

-- The MINID that drops entries older than `retention_ms` by the server's clock ('' = none).
-- A negative retention counts as 0, so the entry just added (its id is at least now) stays.
local function sl_retention_minid(retention_ms)
  if retention_ms == nil or retention_ms == '' then
    return ''
  end
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  local cutoff = now - math.max(tonumber(retention_ms), 0)
  if cutoff <= 0 then
    return ''
  end
  return string.format('%.0f-0', cutoff)
end

-- The requests of validate.lua, paced: each connection waits PACE_MS milliseconds after every
-- answer before it sends the next request, so the offered rate stays below what the daemon can do
-- and the latencies show its service time rather than a queue.
-- Usage: wrk ... -s paced.lua URL -- TOKENS_FILE CLIENT_IP USER_AGENT PACE_MS

local script_dir = debug.getinfo(1, "S").source:sub(2):match("(.*/)") or "./"
dofile(script_dir .. "validate.lua")

local pace_ms = 1
local unpaced_init = init

function init(args)
  pace_ms = tonumber(args[4]) or 1
  unpaced_init(args)
end

-- wrk looks for delay() when it loads the script: defining it here switches pacing on
function delay()
  return pace_ms
end

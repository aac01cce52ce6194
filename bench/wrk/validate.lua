-- wrk script for GET /v1/validate as nginx's auth_request sends it.
-- Usage: wrk ... -s validate.lua URL -- TOKENS_FILE CLIENT_IP USER_AGENT
-- TOKENS_FILE holds one bearer token a line; every thread cycles through all of them, each from
-- its own starting point, so that consecutive requests carry different tokens.
-- Requests are formatted once in init(): request() only hands out a ready string, which keeps
-- the load generator's own CPU cost per request low.

local threads = 0

-- runs in wrk's main Lua state once per thread, before the thread starts
function setup(thread)
  threads = threads + 1
  thread:set("thread_number", threads)
end

local requests = {}
local count = 0
local next_index = 1

function init(args)
  local path = args[1]
  local ip = args[2] or "10.0.0.1"
  local agent = args[3] or "ostiary-bench/1"
  local file = assert(io.open(path, "r"), "cannot open tokens file " .. tostring(path))
  for line in file:lines() do
    if #line > 0 then
      count = count + 1
      requests[count] = wrk.format("GET", "/v1/validate", {
        ["Authorization"] = "Bearer " .. line,
        ["X-Real-IP"] = ip,
        ["User-Agent"] = agent,
      })
    end
  end
  file:close()
  assert(count > 0, "no tokens in " .. path)
  -- spread the threads over the token list (thread_number was set by setup())
  next_index = (((thread_number or 1) - 1) * 7919) % count + 1
end

function request()
  local req = requests[next_index]
  next_index = next_index % count + 1
  return req
end

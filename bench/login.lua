-- wrk script for bench/run.py's login scenario: POST an OAuth2 password form to the URL's path and count the
-- responses by status (503 is the Argon2 pool saying "busy"; wrk itself only counts "non-2xx or 3xx"), and the 503s
-- that carry a Retry-After header.
-- usage: wrk -t1 -c16 -d10s --latency -s bench/login.lua http://127.0.0.1:3000/api/v1/auth/token -- 'FORM BODY'
-- The body comes url-encoded, e.g. 'grant_type=password&username=bench_user&password=...'.

local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  wrk.method = "POST"
  wrk.body = args[1]
  wrk.headers["Content-Type"] = "application/x-www-form-urlencoded"
  statuses = {}  -- globals: done() reads them from each thread with thread:get
  retry_after = 0
end

function response(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
  if status == 503 then
    for name, _ in pairs(headers) do
      if string.lower(name) == "retry-after" then
        retry_after = retry_after + 1
        break
      end
    end
  end
end

function done(summary, latency, requests)
  local total, with_retry_after = {}, 0
  for _, thread in ipairs(threads) do
    for status, n in pairs(thread:get("statuses") or {}) do
      total[status] = (total[status] or 0) + n
    end
    with_retry_after = with_retry_after + (thread:get("retry_after") or 0)
  end
  local parts = {}
  for status, n in pairs(total) do
    table.insert(parts, status .. "=" .. n)
  end
  table.sort(parts)
  io.write("statuses: " .. table.concat(parts, " ") .. "\n")
  io.write("503 with Retry-After: " .. with_retry_after .. "\n")
end

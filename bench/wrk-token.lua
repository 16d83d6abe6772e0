-- wrk driver for the token endpoint: sends pre-signed requests, each once.
--
--   mandate-loadgen ... --write-bodies bodies.txt      # one request per line
--   wrk -t2 -c64 -d15s --latency -s bench/wrk-token.lua URL -- bodies.txt 2
--
-- Arguments after `--`: the file, and wrk's thread count (-t). Thread k
-- sends lines k+1, k+1+t, k+1+2t, ...: no request is sent twice while the
-- file lasts (a line sent again is a replayed assertion, refused, and shows
-- in wrk's "Non-2xx" count). A line is the form body, then optionally a tab
-- and a DPoP proof. `done` prints one JSON line, prefixed "WRK_JSON ".

local next_id = 0

function setup(thread)
  thread:set("id", next_id)
  next_id = next_id + 1
end

function init(args)
  local path, threads = args[1], tonumber(args[2])
  if path == nil or threads == nil then
    error("usage: wrk ... -s wrk-token.lua URL -- BODIES_FILE THREADS")
  end
  requests = {}
  local i = 0
  for line in io.lines(path) do
    if i % threads == id then
      local body, proof = line:match("^([^\t]*)\t?(.*)$")
      local headers = { ["Content-Type"] = "application/x-www-form-urlencoded" }
      if proof ~= nil and proof ~= "" then
        headers["DPoP"] = proof
      end
      requests[#requests + 1] = wrk.format("POST", nil, headers, body)
    end
    i = i + 1
  end
  if #requests == 0 then
    error("no requests for thread " .. id .. " in " .. path)
  end
  cursor = 0
end

function request()
  cursor = cursor + 1
  if cursor > #requests then
    cursor = 1
  end
  return requests[cursor]
end

function done(summary, latency, _)
  local secs = summary.duration / 1e6
  local bad = summary.errors.status + summary.errors.connect + summary.errors.read
    + summary.errors.write + summary.errors.timeout
  io.write(string.format(
    'WRK_JSON {"requests":%d,"secs":%.3f,"throughput_rps":%.1f,"ok_rps":%.1f,"errors":%d,'
      .. '"non_2xx":%d,"latency_ms":{"p50":%.3f,"p90":%.3f,"p99":%.3f,"max":%.3f}}\n',
    summary.requests, secs, summary.requests / secs, (summary.requests - bad) / secs, bad,
    summary.errors.status, latency:percentile(50) / 1e3, latency:percentile(90) / 1e3,
    latency:percentile(99) / 1e3, latency.max / 1e3))
end

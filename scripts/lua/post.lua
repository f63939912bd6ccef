-- Every request a POST /api/journal/entries with lua/mix.lua's entry (same body,
-- same "bench-write" title, so bench-side-by-side deletes what it wrote): the
-- write path alone, for `scripts/bench-side-by-side --groups write`.
local token = os.getenv("BENCH_TOKEN") or error("BENCH_TOKEN is not set")
local content = string.rep("Wrote this during the benchmark; it is about as long as a real entry. ", 6)
local body = '{"title":"bench-write","content":"' .. content .. '","mood":5,"tags":["bench","mood","calm"]}'
local post_req

function init(args)
  post_req = wrk.format("POST", "/api/journal/entries",
                        { ["Authorization"] = "Bearer " .. token,
                          ["Content-Type"] = "application/json" }, body)
end

function request()
  return post_req
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "BENCH_RESULT requests=%d duration_us=%d bytes=%d p50_us=%d p90_us=%d p99_us=%d max_us=%d " ..
    "err_connect=%d err_read=%d err_write=%d err_status=%d err_timeout=%d\n",
    summary.requests, summary.duration, summary.bytes,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max,
    e.connect, e.read, e.write, e.status, e.timeout))
end

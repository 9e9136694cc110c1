-- The rate-limit rows of `scripts/bench --scale`: a different x-client header on every
-- request, or one hot key with GATEHOUSE_BENCH_HOT=1. GATEHOUSE_BENCH_START sets where the
-- counter begins, so a measured run goes on past the keys an earlier run sent. Run with
-- one wrk thread, or the counters repeat.
local n = tonumber(os.getenv("GATEHOUSE_BENCH_START") or "0")
local hot = os.getenv("GATEHOUSE_BENCH_HOT") == "1"
request = function()
  if hot then
    return wrk.format("GET", "/", { ["x-client"] = "hot" })
  end
  n = n + 1
  return wrk.format("GET", "/", { ["x-client"] = "c" .. n })
end

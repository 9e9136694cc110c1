-- Spread requests over many routes (/r0 .. /r99), as a config with many routes sees.
local n = tonumber(os.getenv("GATEHOUSE_BENCH_ROUTES") or "100")
local i = 0
request = function()
  i = (i + 1) % n
  return wrk.format("GET", "/r" .. i .. "/item")
end

-- Alternates a prefix route and a host route of the generated tables of `scripts/bench
-- --scale` (ROUTE_PREFIX_PATH, ROUTE_HOST): both near the end of the table's order.
local prefix = os.getenv("ROUTE_PREFIX_PATH") or "/svc0/item"
local host = os.getenv("ROUTE_HOST") or "h6.test"
local i = 0
request = function()
  i = i + 1
  if i % 2 == 0 then
    return wrk.format("GET", prefix)
  end
  return wrk.format("GET", "/api/v1/item", { ["Host"] = host })
end

-- GET with an API key header (key auth rows). KEY comes from the environment.
local key = os.getenv("GATEHOUSE_BENCH_KEY") or "bench-key-0001"
wrk.method = "GET"
wrk.headers["x-api-key"] = key

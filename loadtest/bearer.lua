-- GET with a bearer token (JWT rows). TOKEN comes from the environment.
wrk.method = "GET"
wrk.headers["Authorization"] = "Bearer " .. (os.getenv("GATEHOUSE_BENCH_TOKEN") or "")

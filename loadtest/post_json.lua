-- A 1 KiB JSON POST.
local body = '{"data":"' .. string.rep("x", 1012) .. '"}'
wrk.method = "POST"
wrk.body = body
wrk.headers["Content-Type"] = "application/json"

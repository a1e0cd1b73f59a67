-- wrk script: each request schedules one new follow-up, not due, for the tenant named by
-- BENCH_TENANT (tenant_bench by default). An answer other than 200 is printed.
--   wrk -t2 -c32 -d20s --latency -s xtask/wrk/create.lua http://127.0.0.1:8080
--   cargo xtask bench api --wrk xtask/wrk/create.lua
local function hex(n) local t = {} for i = 1, n do t[i] = string.format("%x", math.random(0, 15)) end return table.concat(t) end
local function uuid() return hex(8) .. "-" .. hex(4) .. "-4" .. hex(3) .. "-a" .. hex(3) .. "-" .. hex(12) end
local tenant = os.getenv("BENCH_TENANT") or "tenant_bench"
local thread_seed = 0
function setup(thread) thread_seed = thread_seed + 1; thread:set("seed", thread_seed) end
function init(args) math.randomseed(os.time() * 1000 + (seed or 0)) end
request = function()
  local id = uuid()
  local body = '{"request":{"request_id":"' .. uuid() .. '","tenant_id":"' .. tenant .. '","source_module":"mod-02-whatsapp-crm","followup":{"followup_id":"' .. id .. '","external_key":"fu-' .. id .. '","phone_e164":"+5511944443333","message":"hello","schedule_at":"2999-01-01T00:00:00Z"}}}'
  return wrk.format("POST", "/v1/crm/followups", {["Content-Type"] = "application/json"}, body)
end
function response(status, headers, body) if status ~= 200 then io.stderr:write("status " .. status .. "\n") end end
function done(summary, latency, requests)
  local seconds = summary.duration / 1e6
  io.write(string.format(
    'RESULT {"scenario":"wrk creates","requests":%d,"rps":%.1f,"p50_ms":%.2f,"p99_ms":%.2f,"max_ms":%.2f,"non2xx":%d,"socket_errors":%d}\n',
    summary.requests, summary.requests / seconds, latency:percentile(50) / 1000,
    latency:percentile(99) / 1000, latency.max / 1000, summary.errors.status,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout))
end

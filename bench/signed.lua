-- wrk script for bench/run.sh: sends pre-signed raw requests from files that
-- bench/wrkbench.py wrote (fixed-length records, see its docstring).
--
--   wrk -tT ... -s bench/signed.lua URL -- FILE threads=T [sync=PATH] [xff=N]
--
-- FILE: request file; "%d" in it is replaced by the thread index, so thread i reads its own
--   file (disjoint ids); without "%d" every thread reads the same file (duplicates).
-- sync=PATH: wrk runs each thread's init() just before starting that thread, so thread 0
--   would already send load while thread 1 still reads its file (~0.3 s for 250 MB), before
--   wrk starts its clock, inflating req/s. With sync, each thread touches PATH.<i> after its
--   init, and every thread but the last holds its first request until PATH.<T-1> exists.
-- xff=N: add X-Forwarded-For: one of N distinct 10.x.y.z addresses, split over the T threads
--   (disjoint ranges), cycling.
--
-- Each thread cycles through its records; `wraps` counts how often it ran out (for unique runs
-- a wrap means ids repeat). done() prints one line `WRKJSON {...}` with wrk's own summary and
-- exact latency percentiles (microseconds) for bench/wrkbench.py.

local threads = {}
local next_id = 0

function setup(thread)
  thread:set("tid", next_id)
  next_id = next_id + 1
  table.insert(threads, thread)
end

local function exists(path)
  local f = io.open(path, "rb")
  if f then f:close() end
  return f ~= nil
end

function init(args)
  local path = args[1]
  assert(path, "usage: -- FILE threads=T [sync=PATH] [xff=N]")
  local opt = {}
  for i = 2, #args do
    local k, v = args[i]:match("^(%w+)=(.*)$")
    assert(k, "bad option " .. args[i])
    opt[k] = v
  end
  nthreads = tonumber(opt.threads or "1")
  sync = opt.sync
  path = path:gsub("%%d", tostring(tid))
  local f = assert(io.open(path, "rb"))
  data = f:read("*a")
  f:close()
  local head_end = assert(data:find("\r\n\r\n", 1, true), "no request in " .. path)
  local clen = tonumber(data:sub(1, head_end):match("Content%-Length: *(%d+)"))
  reclen = head_end + 3 + clen
  nrec = math.floor(#data / reclen)
  assert(nrec >= 1 and nrec * reclen == #data, path .. ": records are not of one length")
  -- One string per record, cut once here: request() then returns a ready string and wrk's
  -- own CPU per request stays small (a sub() per request costs wrk more than bare's handler).
  recs = {}
  for i = 0, nrec - 1 do
    recs[i + 1] = data:sub(i * reclen + 1, (i + 1) * reclen)
  end
  idx, wraps, sent = 0, 0, 0
  if sync then
    local f = assert(io.open(sync .. "." .. tid, "wb"))
    f:close()
  end
  if opt.xff then
    xff_n = math.floor(tonumber(opt.xff) / nthreads)
    xff_base = tid * xff_n
    xff_k = 0
    local rec = data:sub(1, reclen)
    xff_head = rec:sub(1, head_end - 1)      -- request line and headers, no final CRLF
    xff_tail = rec:sub(head_end)             -- "\r\n\r\n" .. body
  end
  data = nil
end

local function wait_for_last_thread()
  local ready, polls = sync .. "." .. (nthreads - 1), 0
  while not exists(ready) do
    polls = polls + 1
    assert(polls < 3000, "thread " .. (nthreads - 1) .. " never finished init")
    os.execute("sleep 0.01")
  end
  io.stderr:write(string.format("thread %d waited %d x 10 ms for thread %d's init\n", tid, polls,
                                nthreads - 1))
end

function request()
  sent = sent + 1
  -- Thread 0's first call comes from wrk's main thread (it checks the request), before any
  -- thread runs; the first call in the thread itself is the next one.
  if sync and tid < nthreads - 1 and sent == (tid == 0 and 2 or 1) then
    wait_for_last_thread()
  end
  if xff_n then
    local n = xff_base + xff_k + 1
    xff_k = xff_k + 1
    if xff_k == xff_n then xff_k = 0; wraps = wraps + 1 end
    local ip = string.format("10.%d.%d.%d", math.floor(n / 65536) % 256,
                             math.floor(n / 256) % 256, n % 256)
    return xff_head .. "\r\nX-Forwarded-For: " .. ip .. xff_tail
  end
  idx = idx + 1
  local rec = recs[idx]
  if idx == nrec then idx = 0; wraps = wraps + 1 end
  return rec
end

function done(summary, latency, requests)
  local wraps_all, sent_all, records, distinct = 0, 0, 0, 0
  for _, t in ipairs(threads) do
    wraps_all = wraps_all + (t:get("wraps") or 0)
    sent_all = sent_all + (t:get("sent") or 0)
    records = records + (t:get("nrec") or 0)
    local n = t:get("xff_n")
    if n then distinct = distinct + math.min(n, t:get("sent") or 0) end
  end
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests":%d,"duration_us":%d,"bytes":%d,"status_errors":%d,"connect":%d,' ..
    '"read":%d,"write":%d,"timeout":%d,"p50_us":%d,"p75_us":%d,"p90_us":%d,"p99_us":%d,' ..
    '"p999_us":%d,"max_us":%d,"mean_us":%.1f,"wraps":%d,"sent":%d,"records":%d,"distinct_ips":%d}\n',
    summary.requests, summary.duration, summary.bytes, e.status, e.connect, e.read, e.write,
    e.timeout, latency:percentile(50), latency:percentile(75), latency:percentile(90),
    latency:percentile(99), latency:percentile(99.9), latency.max, latency.mean,
    wraps_all, sent_all, records, distinct))
end

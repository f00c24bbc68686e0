-- Reload-free routing for the local data plane (bento-rollout), loaded by the nginx.conf that
-- rollout/local/nginx.py renders. Per service, one JSON document in the shared dict "rollout":
--   {"backends": {"stable": "127.0.0.1:P", "candidate": "127.0.0.1:Q"},
--    "versions": {"stable": "v1", "candidate": "v2"},
--    "routes": {"candidateWeight": 0-100, "mirrorPercent": 0-100,
--               "match": [{"header"|"cookie": NAME, "value": V}], "sticky": {"header"|"cookie": NAME}}}
-- The admin server (127.0.0.1 only) reads and changes it: GET/POST /routes/<service>. A change is
-- visible to every worker on its next request; no reload, no dropped keep-alive connection.
-- The document is also written to a file so that a restarted nginx comes back with the same routes.

local cjson = require "cjson.safe"
local balancer = require "ngx.balancer"

local M = {}
local dict = ngx.shared.rollout
local cache = {} -- per worker: service -> {ver = n, cfg = decoded document}
local state_file = nil

local function split_addr(addr)
    local host, port = string.match(addr or "", "^([%d%.]+):(%d+)$")
    if not host then return nil end
    return { host = host, port = tonumber(port) }
end

local function var_name(kind, name)
    if kind == "header" then
        return "http_" .. string.lower(string.gsub(name, "-", "_"))
    end
    return "cookie_" .. name
end

-- Turn a stored document into the form the hot path uses (resolved addresses, variable names).
local function compile(doc)
    local routes = doc.routes or {}
    local cfg = {
        stable = split_addr(doc.backends and doc.backends.stable),
        candidate = split_addr(doc.backends and doc.backends.candidate),
        weight = tonumber(routes.candidateWeight) or 0,
        mirror = tonumber(routes.mirrorPercent) or 0,
        match = {},
        versions = type(doc.versions) == "table" and doc.versions or {},
    }
    for _, m in ipairs(routes.match or {}) do
        if m.header then
            cfg.match[#cfg.match + 1] = { var = var_name("header", m.header), value = m.value }
        elseif m.cookie then
            cfg.match[#cfg.match + 1] = { var = var_name("cookie", m.cookie), value = m.value }
        end
    end
    local sticky = routes.sticky
    if type(sticky) == "table" then
        if sticky.header then
            cfg.sticky = var_name("header", sticky.header)
        elseif sticky.cookie then
            cfg.sticky = var_name("cookie", sticky.cookie)
        end
    end
    return cfg
end

local function load(service)
    local ver = dict:get("v:" .. service)
    local c = cache[service]
    if c and c.ver == ver then return c.cfg end
    local raw = dict:get("d:" .. service)
    local cfg = nil
    if raw then
        local doc = cjson.decode(raw)
        if doc then cfg = compile(doc) end
    end
    cache[service] = { ver = ver, cfg = cfg }
    return cfg
end

local function store(service, doc)
    local raw = cjson.encode(doc)
    dict:set("d:" .. service, raw)
    dict:incr("v:" .. service, 1, 0)
end

-- init_by_lua (master): restore the documents saved by the last admin change.
function M.init(path)
    state_file = path
    local f = io.open(path, "r")
    if not f then return end
    local all = cjson.decode(f:read("*a") or "")
    f:close()
    if type(all) ~= "table" then return end
    for service, doc in pairs(all) do
        store(service, doc)
    end
end

function M.init_worker(path)
    state_file = path
    math.randomseed(ngx.now() * 1000 + ngx.worker.pid())
end

local function persist()
    if not state_file then return end
    local all = {}
    for _, key in ipairs(dict:get_keys(0)) do
        local service = string.match(key, "^d:(.+)$")
        if service then all[service] = cjson.decode(dict:get(key)) end
    end
    local tmp = state_file .. ".tmp"
    local f, err = io.open(tmp, "w")
    if not f then
        ngx.log(ngx.ERR, "rollout: cannot save routes to ", tmp, ": ", err)
        return
    end
    f:write(cjson.encode(all))
    f:close()
    os.rename(tmp, state_file)
end

-- Passive health: a backend that refused or dropped FAILS_TO_DOWN connections within a second is
-- "down" for DOWN_SECONDS; requests for it go to the other version while it is (a supervised
-- server is restarted by rollout/local/stack.py meanwhile).
local FAILS_TO_DOWN, DOWN_SECONDS = 3, 2

local function peer_key(peer) return peer.host .. ":" .. peer.port end

local function note_failure(peer)
    if not peer then return end
    local key = peer_key(peer)
    local n = dict:incr("f:" .. key, 1, 0, 1)
    if n and n >= FAILS_TO_DOWN then dict:set("down:" .. key, true, DOWN_SECONDS) end
end

local function is_down(peer)
    return peer ~= nil and dict:get("down:" .. peer_key(peer)) ~= nil
end

-- The version that serves a request the split gave to ``to``: ``to``, unless it is down and the
-- other version is not (then the other, counted as a failover).
local function healthy_choice(service, cfg, to)
    local other = to == "stable" and "candidate" or "stable"
    if is_down(cfg[to]) and cfg[other] and not is_down(cfg[other]) then
        dict:incr("o:" .. to .. "|" .. service, 1, 0)
        return other
    end
    return to
end

-- Where a routed request goes next. A request the split sends to the candidate runs in
-- @rollout_candidate, where a 5xx answer of the candidate is retried once on stable (predictions
-- have no side effects): the user gets stable's answer, while the candidate's own metrics, which
-- the gates read, still count its failure. While a reload is being prepared ("drain" set by the
-- admin API) requests jump to the *_drain twin of their location, whose keepalive_timeout is 0:
-- nginx itself then answers "Connection: close" and closes the connection after the response, so
-- no idle keep-alive connection is left on the old workers to be cut under a client's next request.
local function proceed(to, mirrored, shielded)
    ngx.var.rollout_to = to
    local draining = dict:get("drain")
    if mirrored then
        return ngx.exec(draining and "@rollout_mirrored_drain" or "@rollout_mirrored")
    end
    if shielded then
        return ngx.exec(draining and "@rollout_candidate_drain" or "@rollout_candidate")
    end
    if draining then return ngx.exec("@rollout_drain") end
end

-- access_by_lua in a service location: decide stable or candidate, and whether to mirror.
function M.route()
    local service = ngx.var.rollout_service
    local cfg = load(service)
    if not cfg or not cfg.stable then
        ngx.var.rollout_error = "no model server is registered for service " .. service
        return ngx.exit(503)
    end
    local to = "stable"
    -- a request that names the version that answered it (feedback labels carry the
    -- X-Model-Version of their prediction) goes back to that version while it serves
    -- (pinned: never retried on the other version, which may not be able to join it; a pinned
    -- request for a version that is down gets a retryable 503 from @rollout_error instead of being
    -- lost). Servers of the stack's shared join store (Redis) could join a label anywhere; the pin
    -- is for those with a join of their own (BENTO_JOIN_STORE=local, e.g. a bare `bentoml serve`
    -- registered with LocalStack.add_backend), where only the version that answered can.
    local answered = ngx.var.http_x_model_version
    if answered and cfg.candidate and answered == cfg.versions.candidate then
        ngx.var.rollout_pinned = "1"
        return proceed("candidate", false, false)
    end
    if answered and answered == cfg.versions.stable then
        ngx.var.rollout_pinned = "1"
        return proceed("stable", false, false)
    end
    if cfg.candidate then
        for i = 1, #cfg.match do
            local m = cfg.match[i]
            if ngx.var[m.var] == m.value then
                to = "candidate"
                break
            end
        end
        if to == "stable" and cfg.weight > 0 then
            local bucket
            local key = cfg.sticky and ngx.var[cfg.sticky]
            if key and key ~= "" then
                bucket = ngx.crc32_short(key) % 100
            else
                bucket = math.random(0, 99)
            end
            if bucket < cfg.weight then to = "candidate" end
        end
        local healthy = healthy_choice(service, cfg, to)
        if healthy ~= to then return proceed(healthy, false, false) end
        -- only predictions are mirrored: a label (POST /feedback) or a GET copied to the candidate
        -- would be a second label for one answer, or load the shadow gains nothing from
        if to == "stable" and cfg.mirror > 0 and ngx.var.request_method == "POST"
            and ngx.var.uri ~= "/feedback" and math.random(1, 100) <= cfg.mirror then
            ngx.var.rollout_mirror = "1"
            dict:incr("m:" .. service, 1, 0)
            return proceed(to, true, false)
        end
    end
    return proceed(to, false, to == "candidate")
end

-- balancer_by_lua of the upstream that serves clients: the chosen backend. On a failure one more
-- try goes to the other version when there is one (a dead or hung stable's users are answered by
-- the candidate and the other way round; a 5xx of the candidate in @rollout_candidate goes to
-- stable), else to the same backend again after a refused connection (a stale keep-alive one) but
-- not after a time-out (the same hung server would only double the wait: 504 at once). A pinned
-- request is not retried. Connection failures and time-outs are counted per backend: FAILS_TO_DOWN
-- within a second mark it down for DOWN_SECONDS (passive health check), and route() sends its
-- share to the other version meanwhile.
function M.balance()
    local service = ngx.var.rollout_service
    local cfg = load(service)
    if not cfg or not cfg.stable then return ngx.exit(503) end
    local to = ngx.var.rollout_to
    local state, status = balancer.get_last_failure()
    if state then
        -- a connection-level failure (nginx's own 502/504), not a 5xx the backend answered: only
        -- those count towards "down", so a failing candidate still sees its share (the gates read it)
        local own = state == "failed" and (status == 502 or status == 504)
        if own then note_failure(cfg[to]) end
        local other = to == "stable" and "candidate" or "stable"
        if cfg[other] then
            to = other
        elseif own and status == 504 then
            return ngx.exit(504)
        end
        dict:incr("r:" .. ngx.var.rollout_to .. "|" .. service, 1, 0)
        ngx.var.rollout_to = to
        ngx.var.rollout_retried = "1"
    elseif ngx.var.rollout_pinned ~= "1" then
        balancer.set_more_tries(1)
    end
    local peer = cfg[to] or cfg.stable
    local ok, err = balancer.set_current_peer(peer.host, peer.port)
    if not ok then
        ngx.log(ngx.ERR, "rollout: cannot set peer: ", err)
        return ngx.exit(502)
    end
end

-- content_by_lua of @rollout_error, nginx's error_page for the errors the router answers itself (no
-- backend registered, every try failed, a time-out, a failure of the router): the project's JSON
-- error shape, {"error": {"code", "message"}, "request_id"}, and on /v2 the Open Inference
-- Protocol's {"error": "message"}; never nginx's HTML. A request pinned to a version that is down
-- (a feedback label for its answer) gets a retryable 503 with Retry-After: nothing was recorded,
-- send it again. (Backends' own error answers pass through untouched: proxy_intercept_errors is off.)
function M.error_page()
    -- ngx.status is 0 in this named location: what happened is in $upstream_status ("502, 504 : ",
    -- one status per try), or in $rollout_error when route() found no backend
    local last = tonumber(string.match(ngx.var.upstream_status or "", ".*(%d%d%d)"))
    local to = ngx.var.rollout_to
    if to == nil or to == "" then to = "none" end
    local code, kind, message = 503, nil, nil
    if ngx.var.rollout_error ~= "" then
        kind, message = "no_backend", ngx.var.rollout_error
    elseif ngx.var.rollout_pinned == "1" then
        kind = "version_unavailable"
        message = "model version " .. (ngx.var.http_x_model_version or "?")
            .. " is not reachable right now; nothing was recorded: retry later"
    elseif last == 504 then
        code, kind = 504, "upstream_timeout"
        message = "the model server (" .. to .. ") did not answer within its time-out; retry later"
    elseif last == nil then -- no try was made: the router itself failed (nginx's error.log says why)
        code, kind = 500, "router_error"
        message = "the router could not handle this request; retry later"
    else
        kind = "upstream_unavailable"
        message = "no model server of service " .. ngx.var.rollout_service .. " could answer (last tried: "
            .. to .. "); retry later"
    end
    ngx.status = code
    ngx.header["Content-Type"] = "application/json"
    ngx.header["Retry-After"] = "2"
    ngx.header["X-Request-ID"] = ngx.var.rollout_rid
    ngx.header["X-Routed-To"] = to
    local body
    if string.sub(ngx.var.uri, 1, 4) == "/v2/" or ngx.var.uri == "/v2" then
        body = { error = message }
    else
        body = { error = { code = kind, message = message }, request_id = ngx.var.rollout_rid }
    end
    ngx.say(cjson.encode(body))
    return ngx.exit(code)
end

-- log_by_lua: count what the router did, for /metrics.
function M.log()
    local to = ngx.var.rollout_to
    if to == nil or to == "" then to = "none" end
    local key = "c:" .. ngx.var.rollout_service .. "|" .. to .. "|" .. ngx.var.status
    dict:incr(key, 1, 0)
    if ngx.ctx.mirror_body then M.mirror_later(ngx.ctx) end
end

-- Shadow agreement: the mirror copy carries the request's X-Request-ID ($rollout_rid), so the
-- candidate records its answer under the id stable recorded its own; the join store both record
-- in (bentos/redis_join.py) compares the two and counts model_shadow_comparisons_total /
-- model_shadow_agreements_total for both versions. Nothing of stable's answer is kept here.
local MIRROR_MAX_INFLIGHT = 128 -- mirror copies on their way at once; more are dropped (counted)

-- One HTTP/1.1 request on a fresh connection; the status code as a string, or "error".
local function post(host, port, uri, ctype, body, rid)
    local sock = ngx.socket.tcp()
    sock:settimeouts(1000, 5000, 10000)
    local ok = sock:connect(host, port)
    if not ok then return "error" end
    local sent = sock:send("POST " .. uri .. " HTTP/1.1\r\nHost: " .. host .. "\r\n"
        .. "Content-Type: " .. ctype .. "\r\nContent-Length: " .. #body .. "\r\n"
        .. "X-Request-ID: " .. rid .. "\r\nX-Rollout-Mirror: 1\r\nConnection: close\r\n\r\n" .. body)
    local line = sent and sock:receive("*l")
    sock:close()
    return line and string.match(line, "^HTTP/1%.%d (%d+)") or "error"
end

-- ngx.timer callback, detached from the client's request: the mirror copy goes to the candidate,
-- which records its answer under the request id.
local function send_mirror(premature, host, port, uri, ctype, body, rid)
    if not premature then
        dict:incr("mr:" .. post(host, port, uri, ctype, body, rid), 1, 0)
    end
    dict:incr("mirror_inflight", -1, 0)
end

-- rewrite_by_lua of @rollout_mirrored: read the body now, for the copy sent after the answer.
function M.read_for_mirror()
    ngx.req.read_body()
    local body = ngx.req.get_body_data()
    if body == nil and ngx.req.get_body_file() ~= nil then
        dict:incr("mirror_skipped", 1, 0) -- larger than client_body_buffer_size: not copied
        return
    end
    ngx.ctx.mirror_body = body or ""
    ngx.ctx.mirror_uri = ngx.var.request_uri
    ngx.ctx.mirror_ctype = ngx.var.content_type or "application/json"
end

-- Called from log_by_lua once the client has its answer: the shadow never slows a client (nginx's
-- own `mirror` holds the next request of a keep-alive connection until the copy is answered).
function M.mirror_later(ctx)
    local cfg = load(ngx.var.rollout_service)
    if not cfg or not cfg.candidate then return end
    if dict:incr("mirror_inflight", 1, 0) > MIRROR_MAX_INFLIGHT then
        dict:incr("mirror_inflight", -1, 0)
        dict:incr("mirror_dropped", 1, 0)
        return
    end
    local ok, err = ngx.timer.at(0, send_mirror, cfg.candidate.host, cfg.candidate.port, ctx.mirror_uri,
        ctx.mirror_ctype, ctx.mirror_body, ngx.var.rollout_rid)
    if not ok then
        dict:incr("mirror_inflight", -1, 0)
        dict:incr("mirror_dropped", 1, 0)
        ngx.log(ngx.WARN, "rollout: cannot schedule a mirror copy: ", err)
    end
end

local function valid_percent(v)
    return v == nil or (type(v) == "number" and v >= 0 and v <= 100 and v == math.floor(v))
end

local function validate(doc)
    if type(doc) ~= "table" then return "body must be a JSON object" end
    local r = doc.routes or {}
    if not valid_percent(r.candidateWeight) then return "routes.candidateWeight must be an integer 0-100" end
    if not valid_percent(r.mirrorPercent) then return "routes.mirrorPercent must be an integer 0-100" end
    local b = doc.backends or {}
    if b.stable ~= nil and not split_addr(b.stable) then return "backends.stable must be IP:PORT" end
    if b.candidate ~= nil and b.candidate ~= cjson.null and not split_addr(b.candidate) then
        return "backends.candidate must be IP:PORT or null"
    end
    local needs_candidate = (r.candidateWeight or 0) > 0 or (r.mirrorPercent or 0) > 0
        or (type(r.match) == "table" and #r.match > 0)
    if needs_candidate and not split_addr(b.candidate) then
        return "routes send traffic to the candidate but backends.candidate is not set"
    end
    return nil
end

local function reply(status, body)
    ngx.status = status
    ngx.header["Content-Type"] = "application/json"
    ngx.say(cjson.encode(body))
    return ngx.exit(status)
end

-- The admin API changes where users' requests go, so it wants the bearer token that
-- rollout/local/nginx.py generated for this nginx (a 0600 file in its prefix; set here as
-- $rollout_admin_token): another local user or a browser page posting to 127.0.0.1 gets 401.
local function authorized()
    local want = ngx.var.rollout_admin_token
    if want and want ~= "" and ngx.var.http_authorization == "Bearer " .. want then return true end
    ngx.header["WWW-Authenticate"] = 'Bearer realm="rollout-router-admin"'
    reply(401, { error = "the router's admin API needs 'Authorization: Bearer <token>' "
        .. "(the token is in the nginx prefix's admin-token file)" })
    return false
end

-- content_by_lua of the admin location /routes/<service>.
-- GET: the applied document. POST: replace "routes" and/or "backends" (keys present in the body).
function M.admin()
    if not authorized() then return end
    local service = string.match(ngx.var.uri, "^/routes/([%w_.-]+)$")
    if not service then return reply(404, { error = "use /routes/<service>" }) end
    local method = ngx.req.get_method()
    local raw = dict:get("d:" .. service)
    local doc = raw and cjson.decode(raw) or { routes = {}, backends = {} }
    if method == "GET" then
        if not raw then return reply(404, { error = "no routes for service " .. service }) end
        doc.version = dict:get("v:" .. service)
        return reply(200, doc)
    elseif method ~= "POST" then
        return reply(405, { error = "GET or POST" })
    end
    ngx.req.read_body()
    local body = cjson.decode(ngx.req.get_body_data() or "")
    if type(body) ~= "table" then return reply(400, { error = "body must be a JSON object" }) end
    local new = { routes = doc.routes, backends = doc.backends, versions = doc.versions }
    if body.routes ~= nil then new.routes = body.routes end
    if body.backends ~= nil then new.backends = body.backends end
    if body.versions ~= nil then new.versions = body.versions end
    if body.backends ~= nil and body.versions == nil then new.versions = nil end
    if new.backends and new.backends.candidate == cjson.null then new.backends.candidate = nil end
    local err = validate(new)
    if err then return reply(400, { error = err }) end
    store(service, new)
    persist()
    new.version = dict:get("v:" .. service)
    return reply(200, new)
end

-- content_by_lua of the admin location /drain: POST ?seconds=N starts draining (expires by
-- itself after N seconds), DELETE stops it.
function M.admin_drain()
    if not authorized() then return end
    local method = ngx.req.get_method()
    if method == "POST" then
        local seconds = tonumber(ngx.var.arg_seconds) or 5
        dict:set("drain", true, seconds)
        return reply(200, { draining = true, seconds = seconds })
    elseif method == "DELETE" then
        dict:delete("drain")
        return reply(200, { draining = false })
    end
    return reply(405, { error = "POST or DELETE" })
end

-- content_by_lua of the admin location /metrics (Prometheus text format).
function M.metrics()
    local out = {
        "# HELP rollout_router_requests_total Client requests answered through the router.",
        "# TYPE rollout_router_requests_total counter",
    }
    local mirrored = {
        "# HELP rollout_router_mirrored_total Requests also sent to the candidate as shadow traffic.",
        "# TYPE rollout_router_mirrored_total counter",
    }
    local retries = {
        "# HELP rollout_router_retries_total Requests retried on the other version after a failed try.",
        "# TYPE rollout_router_retries_total counter",
        "# HELP rollout_router_failovers_total Requests sent to the other version because theirs was down.",
        "# TYPE rollout_router_failovers_total counter",
    }
    for _, key in ipairs(dict:get_keys(0)) do
        local from, rs = string.match(key, "^r:(%a+)|(.+)$")
        if from then
            retries[#retries + 1] = string.format('rollout_router_retries_total{service="%s",failed="%s"} %d',
                rs, from, dict:get(key))
        end
        local down, os_ = string.match(key, "^o:(%a+)|(.+)$")
        if down then
            retries[#retries + 1] = string.format('rollout_router_failovers_total{service="%s",down="%s"} %d',
                os_, down, dict:get(key))
        end
        local service, to, code = string.match(key, "^c:(.+)|(%a+)|(%d+)$")
        if service then
            out[#out + 1] = string.format('rollout_router_requests_total{service="%s",routed_to="%s",code="%s"} %d',
                service, to, code, dict:get(key))
        end
        local ms = string.match(key, "^m:(.+)$")
        if ms then
            mirrored[#mirrored + 1] = string.format('rollout_router_mirrored_total{service="%s"} %d', ms, dict:get(key))
        end
    end
    local copies = {
        "# HELP rollout_router_mirror_copies_total Mirror copies sent to the candidate after the client's answer, by the candidate's status (dropped: over the in-flight cap; skipped: body too large).",
        "# TYPE rollout_router_mirror_copies_total counter",
    }
    for _, key in ipairs(dict:get_keys(0)) do
        local mstatus = string.match(key, "^mr:(%w+)$") or string.match(key, "^mirror_(dropped)$")
            or string.match(key, "^mirror_(skipped)$")
        if mstatus then
            copies[#copies + 1] = string.format('rollout_router_mirror_copies_total{status="%s"} %d',
                mstatus, dict:get(key))
        end
    end
    for _, line in ipairs(mirrored) do out[#out + 1] = line end
    for _, line in ipairs(retries) do out[#out + 1] = line end
    for _, line in ipairs(copies) do out[#out + 1] = line end
    ngx.header["Content-Type"] = "text/plain; version=0.0.4"
    ngx.say(table.concat(out, "\n"))
end

return M

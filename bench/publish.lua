-- wrk script for bench/scale.py: POST one JSON message per request to the URL's path (a channel's messages).
-- usage: wrk -t1 -c64 -d10s --latency -H 'Authorization: Bearer …' -s bench/publish.lua URL
wrk.method = "POST"
wrk.body = '{"body":"a message from the scale benchmark"}'
wrk.headers["Content-Type"] = "application/json"

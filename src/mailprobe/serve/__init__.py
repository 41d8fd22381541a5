"""`mailprobe serve`: the HTTP API (FastAPI on uvicorn, the `serve` extra).

One module per concern: `app` (the app factory, errors, health, metrics), `single`
(one address; Reacher's `/v0/check_email`, mapped by the pure `reacher`), `jobs` (bulk
jobs over HTTP) with `jobstore` (their rows) and `runner` (running them, resuming after
a restart), `webhooks` (signed, retried callbacks with an SSRF guard), `auth` and
`keys` (API keys, stored hashed), `limits` (body size, rate), `records` (what the API
answers with), `page` (the web page), `config` (SERVE_* and WEBHOOK_* settings).
"""

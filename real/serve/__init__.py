"""`microserving serve`: an OpenAI-compatible HTTP front end on the programmable router.

The pieces, one idea each: `config` (what the operator sets), `schemas` (what clients send),
`prompts` (OpenAI request -> core Request, with the context limits), `router` (the strategy in
force, switched at run time, and the requests in flight), `detokenizer` (tokens -> text deltas,
stop strings), `responses` (OpenAI JSON and SSE chunks), `metrics` (Prometheus text), `errors`
(OpenAI error bodies), `app` (the FastAPI routes) and `server` (uvicorn on a cluster session).
"""

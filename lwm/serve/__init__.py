"""`lwm serve`: an OpenAI-compatible HTTP server (FastAPI + uvicorn) over the continuous-batching
engine of `lwm.infer.engine`. No model logic lives here.

Modules: `protocol` (request fields, response shapes, OpenAI errors), `media` (chat content parts
with images and videos → LWM's prompt tokens), `app` (the endpoints), `server` (building the
engine from a config, `serve`, `ServerThread`).
"""

"""Serving: a run's model behind a JSON API and a page (`imgclf serve RUN`; needs the `serve` extra).

From Python (the app module imports FastAPI, so this package itself does not):

    from imgclf.serve.app import serve, create_app
    serve("runs/hymenoptera", port=8000)                    # blocks until Ctrl+C
    app = create_app("runs/hymenoptera", load_model("runs/hymenoptera"))   # for your own ASGI server
"""

from .settings import ServeSettings

__all__ = ["ServeSettings"]

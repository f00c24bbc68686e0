"""KServe's own Python model server (``kserve.ModelServer``) serving the same pickled iris model.

Run by bench/serving.py with the separate ``.venv-kserve`` interpreter (kserve pins many packages,
so it never shares the project's venv); it must not import anything from this repository::

    .venv-kserve/bin/python bench/kserve_server.py MODEL.pkl PORT WORKERS

The model answers the v1 protocol (``POST /v1/models/iris:predict``) with class names and
probabilities, the same work as our ``/predict``. KServe binds 0.0.0.0 by itself; the HTTP server's
uvicorn config is given host 127.0.0.1 so nothing listens beyond loopback.
"""

from __future__ import annotations

import pickle
import sys
from typing import Any

import kserve
import numpy as np

CLASS_NAMES = ["setosa", "versicolor", "virginica"]


class IrisModel(kserve.Model):
    def __init__(self, name: str, path: str) -> None:
        super().__init__(name)
        with open(path, "rb") as fh:
            self.model = pickle.load(fh)
        self.ready = True

    def predict(self, payload: Any, headers: dict[str, str] | None = None) -> dict[str, Any]:
        proba = self.model.predict_proba(np.asarray(payload["instances"], dtype=np.float64))
        return {
            "predictions": [CLASS_NAMES[i] for i in proba.argmax(axis=1)],
            "probabilities": proba.tolist(),
        }


def _bind_loopback() -> None:
    """Make every uvicorn server kserve creates bind 127.0.0.1 (it passes 0.0.0.0 itself)."""
    import uvicorn

    original = uvicorn.Config.__init__

    def init(self: Any, *args: Any, **kwargs: Any) -> None:
        kwargs["host"] = "127.0.0.1"
        original(self, *args, **kwargs)

    uvicorn.Config.__init__ = init  # type: ignore[method-assign]


def _patient_liveness_check() -> None:
    """With several workers, KServe's parent pings each spawned worker with a 5 s timeout and
    kills and respawns it when the pong is late. On a loaded 2-core machine a fresh worker takes
    longer than that to import kserve, so it is killed forever; give it 120 s instead."""
    from kserve.protocol.rest.multiprocess.server import RESTServerProcess

    RESTServerProcess.is_alive.__defaults__ = (120.0,)


def main() -> None:
    path, port, workers = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    _bind_loopback()
    _patient_liveness_check()
    model = IrisModel("iris", path)
    kserve.ModelServer(http_port=port, workers=workers, enable_grpc=False, enable_docs_url=False).start(
        [model]
    )


if __name__ == "__main__":
    main()

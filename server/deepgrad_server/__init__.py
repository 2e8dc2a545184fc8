"""DeepGrad's training-job service: HTTP API, job store, queue and worker (no model code).

``create_app(settings)`` builds the FastAPI application; ``deepgrad-server`` runs it with uvicorn and
an embedded worker that trains one job at a time in a child process.
"""

from deepgrad_server.settings import Settings

__all__ = ["Settings", "__version__"]
__version__ = "0.1.0"

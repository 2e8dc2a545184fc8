"""DeepGrad's Python client and ``deepgrad-client`` CLI; needs neither torch nor ``deepgrad_core``.

    from deepgrad_client import Client

    with Client() as dg:                       # $DEEPGRAD_URL / $DEEPGRAD_TOKEN, config file, local server
        job = dg.submit("specs/quickstart.yaml", name="quickstart")
        job = dg.wait(job["id"], progress=lambda j: print(j["state"], j["progress"]))
        grads = dg.gradients(job["id"], "weight")  # grads.values: [steps x layers] float64
        dg.save_plot(job["id"], "norms", "norms.png")
"""

from ._client import TERMINAL_STATES, VERSION, Client, Job
from ._config import DEFAULT_URL
from ._exceptions import APIError, AuthError, ConnectError, DeepGradError, InputError, NotFound, WaitTimeout
from ._gradients import Gradients
from ._spec import apply_overrides, load_spec
from ._sse import Event

__version__ = VERSION
__all__ = [
    "APIError", "AuthError", "Client", "ConnectError", "DEFAULT_URL", "DeepGradError", "Event", "Gradients",
    "InputError", "Job", "NotFound", "TERMINAL_STATES", "WaitTimeout", "apply_overrides", "load_spec",
]

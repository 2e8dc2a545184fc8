"""What the fork server of local jobs (``executors.LocalExecutor``) imports once, before it forks any job.

First it ties itself to the server: Linux kills it (SIGKILL) when the server dies, and each job process, a child of
the fork server, is tied to it in turn (``executors.child_main``), so no job outlives a server that was killed.
(Left alone, the fork server would notice the server's death only through a pipe, and take its time to exit.) Then
it imports what every job needs, torch above all, so that a job starts without importing it again; and
``torch._dynamo``, which every job imports on its way even though nothing is compiled: the first
``TorchDispatchMode`` (the cost report counts FLOPs with one, ``FlopCounterMode``) and the first optimizer
(``torch.optim.Optimizer.add_param_group`` is wrapped in ``torch._disable_dynamo``) import it, ~3 s of every
job's start on a 2-core machine, with sympy and inductor behind it.
"""

import sys

if "multiprocessing.forkserver" in " ".join(getattr(sys, "orig_argv", [])):  # only in the fork server itself
    from deepgrad_server.executors import die_with_parent

    die_with_parent()

import torch._dynamo  # noqa: E402,F401

import deepgrad_core.analysis.memory  # noqa: E402,F401
import deepgrad_core.experiment  # noqa: E402,F401
import deepgrad_server.runner  # noqa: E402,F401

"""Remote jobs: the same carl.yaml on rented GPUs (Hugging Face Jobs, RunPod, a managed endpoint), inside a
budget and with an approval in the ledger. See docs/remote.md.

    engine.remote.base      JobClient protocol, JobPlan/JobHandle/JobStatus, retries, token guard
    engine.remote.config    carl.yaml ``remote:`` (pydantic)
    engine.remote.approval  price table, cost estimate, policy decision, approval blocks
    engine.remote.jobs      submit / status / logs / stop / list, end to end
    engine.remote.store     CARL_HOME/jobs/<run_id>.json records; ``list_jobs(home)`` for ``run list``
    engine.remote.ship      carl's own wheel for the job (content-hashed, shipped through a private Hub repo)
    engine.remote.sync      a run uploads itself to train.output_repo; ``pull_run`` brings it home
    engine.remote.mirror    a job's local run, fed by the lines its logs stream

Backends import their HTTP clients lazily, so importing this package is cheap.
"""

from engine.remote.base import JobClient, JobHandle, JobPlan, JobStatus, RemoteState
from engine.remote.store import list_jobs

__all__ = ["JobClient", "JobHandle", "JobPlan", "JobStatus", "RemoteState", "list_jobs"]

"""Batched inference on a real TorchServe: the same answers, and TorchServe really batched.

One version of the test classifier is registered through the collection's own management client
(plugins/module_utils/torchserve.py, what the torchserve_model module calls) with batch_size 8 and
max_batch_delay 400 ms. The same 8 distinct inputs are sent once one after another (each request
is alone in its batch: the unbatched answers) and once from 8 threads at the same moment (the
frontend gathers them for up to 400 ms into one batch, the handler runs it as ONE forward pass).

Proves: (1) every concurrent answer equals the sequential answer for the same input, bitwise
(the model is batch-invariant, make_model.py); (2) batching happened, from the handler's own
counters on TorchServe's metrics port: during the concurrent phase gpuops_requests_total grew by 8
and gpuops_batches_total (one per handle() call) by less than 8. With batch_size 1 the second
count is 8 and the test fails; the sequential phase checks that the counters read exactly one
request per batch when nothing is batched.
"""

import shutil
import threading
from pathlib import Path

import pytest

from ansible_collections.gpuops.cluster.plugins.module_utils.torchserve import TorchServeClient
from tests.testbed.common import wait_for
from tests.testbed.model import build as model_build

pytestmark = pytest.mark.integration

MODEL = "classifier"
VERSION = "90.0"  # this module's own version on the shared TorchServe
BATCH = 8
DELAY_MS = 400
INPUTS = [[0.5 * i - 1.5, 1.0 - 0.25 * i, 0.1 * i * i, (-1.0) ** i * 0.3 * i] for i in range(BATCH)]


def counters(ts):
    """(gpuops_requests_total, gpuops_batches_total) of VERSION, from TorchServe's metrics port."""
    sums = {"gpuops_requests_total": 0.0, "gpuops_batches_total": 0.0}
    seen = set()
    for line in ts.metrics_text().splitlines():
        name = line.split("{", 1)[0]
        if name in sums and f'model_version="{VERSION}"' in line and f'model_name="{MODEL}"' in line:
            sums[name] += float(line.rsplit(" ", 1)[1])
            seen.add(name)
    return sums["gpuops_requests_total"], sums["gpuops_batches_total"], seen == set(sums)


def counted(ts, requests):
    """Wait until the frontend has the handler's counters for ``requests`` requests; return them."""
    out = {}

    def check():
        out["req"], out["bat"], both = counters(ts)
        return both and out["req"] >= requests
    wait_for(check, 30, f"gpuops_requests_total of {VERSION} >= {requests}", procs=ts.procs)
    return out["req"], out["bat"]


@pytest.fixture(scope="module")
def batched(torchserve):
    ts = torchserve
    archive = model_build.build_archive(VERSION, model_name=MODEL)
    dest = Path(ts.info["model_store"]) / archive.name
    if not dest.exists():
        shutil.copy2(archive, dest)
    client = TorchServeClient(ts.info["management_url"], timeout=300)
    client.register(MODEL, archive.name, initial_workers=1, batch_size=BATCH, max_batch_delay=DELAY_MS)
    try:
        ts.wait_ready(VERSION)
        yield ts
    finally:
        ts.unregister(VERSION)


def test_concurrent_requests_are_batched_and_answer_as_unbatched(batched):
    ts = batched
    desc = ts.describe(VERSION)[0]
    assert (desc["batchSize"], desc["maxBatchDelay"]) == (BATCH, DELAY_MS), desc
    req0, bat0 = counted(ts, 0)

    # unbatched reference: one request at a time, each alone in its batch
    reference = []
    for x in INPUTS:
        status, body = ts.predict(VERSION, x)
        assert status == 200, body
        reference.append(body)
    req1, bat1 = counted(ts, req0 + BATCH)
    assert (req1 - req0, bat1 - bat0) == (BATCH, BATCH), "sequential requests: one batch each"
    # distinct inputs give distinct answers, so a batch answered out of order could not pass
    assert len({tuple(r["probabilities"]) for r in reference}) == BATCH, reference

    answers = [None] * BATCH
    start = threading.Barrier(BATCH)

    def send(i):
        start.wait()
        answers[i] = ts.predict(VERSION, INPUTS[i], timeout=60)
    threads = [threading.Thread(target=send, args=(i,)) for i in range(BATCH)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(90)
    assert all(a is not None for a in answers), answers

    # (1) every batched answer is the unbatched answer for the same input, bitwise
    assert [a[0] for a in answers] == [200] * BATCH, answers
    assert [a[1] for a in answers] == reference

    # (2) TorchServe batched: fewer handle() calls than requests (8 with batch_size 1)
    req2, bat2 = counted(ts, req1 + BATCH)
    assert req2 - req1 == BATCH, (req1, req2)
    batches = bat2 - bat1
    assert 1 <= batches < BATCH, (f"{BATCH} concurrent requests ran in {batches:g} batches: TorchServe did "
                                  f"not batch them (batch_size={desc['batchSize']}, "
                                  f"max_batch_delay={desc['maxBatchDelay']} ms)")

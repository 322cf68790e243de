"""``nfkd.serving.triton_scheduler``: the shortest-first, chunked worker inside each Triton model instance.

No server here (tests/test_triton_engine.py runs it inside the real one): a compute function that
records every call and can be held inside a call, so what runs between a big job's chunks is
checked exactly, and every answer is compared with the rows computed in one piece.
"""
from __future__ import annotations

import threading

import numpy as np
import pytest

from nfkd.serving.admission import Admission
from nfkd.serving.triton_scheduler import ChunkScheduler, Job


class Recorder:
    """compute(key, pieces) = 2 * rows + key; records (key, [(job id, start, stop)]); ``hold`` blocks the first
    call until released, so jobs submitted meanwhile are queued behind a running chunk."""

    def __init__(self, hold: bool = False, fail_key: object = None) -> None:
        self.calls: list[tuple[object, list[tuple[int, int, int]]]] = []
        self.inside, self.release = threading.Event(), threading.Event()
        self.hold, self.fail_key = hold, fail_key
        if not hold:
            self.release.set()

    def __call__(self, key, pieces):
        self.calls.append((key, [(job.data["id"], a, b) for job, a, b in pieces]))
        self.inside.set()
        self.release.wait(10)
        if key == self.fail_key:
            raise RuntimeError("kernel exploded")
        return [2 * job.data["x"][a:b] + key for job, a, b in pieces]


def job(ident: int, rows: int, answers: dict, key: float = 0.0) -> Job:
    x = np.arange(rows, dtype=np.float32)[:, None] + 1000 * ident
    done = threading.Event()

    def reply(result, error):
        answers[ident] = (result, error)
        done.set()

    j = Job(rows, key, {"id": ident, "x": x}, reply)
    j.done_event = done  # type: ignore[attr-defined]
    return j


def wait_all(jobs: list[Job]) -> None:
    for j in jobs:
        assert j.done_event.wait(10)  # type: ignore[attr-defined]


def test_small_jobs_run_between_the_chunks_of_a_big_one_and_every_answer_is_whole():
    rec, answers = Recorder(hold=True), {}
    sched = ChunkScheduler(rec, chunk=4, admission=Admission(1000, headroom=4)).start()
    big = job(0, 10, answers)
    assert sched.submit(big) is None
    assert rec.inside.wait(10)  # the worker is inside the big job's first chunk
    small = [job(1, 1, answers), job(2, 2, answers), job(3, 3, answers)]
    for j in small:
        assert sched.submit(j) is None
    rec.release.set()
    wait_all([big, *small])
    sched.close()
    # shortest remaining first, each call filled to 4 rows: the 1- and 2-row jobs, then the 3-row job's first
    # row (it has fewer rows left than the big job's 6); then its last 2 rows and whatever room is left goes to
    # the big job, which keeps progressing
    assert [c[1] for c in rec.calls] == [[(0, 0, 4)], [(1, 0, 1), (2, 0, 2), (3, 0, 1)], [(3, 1, 3), (0, 4, 6)],
                                         [(0, 6, 10)]]
    for j in (big, *small):
        result, error = answers[j.data["id"]]
        assert error is None
        np.testing.assert_array_equal(result, 2 * j.data["x"])


def test_jobs_of_different_keys_never_share_a_call():
    rec, answers = Recorder(hold=True), {}
    sched = ChunkScheduler(rec, chunk=64, admission=Admission(1000)).start()
    first = job(0, 2, answers, key=0.5)
    assert sched.submit(first) is None
    assert rec.inside.wait(10)
    rest = [job(1, 3, answers, key=1.0), job(2, 4, answers, key=0.5), job(3, 5, answers, key=1.0)]
    for j in rest:
        assert sched.submit(j) is None
    rec.release.set()
    wait_all([first, *rest])
    sched.close()
    for key, pieces in rec.calls:
        assert {[j for j in (first, *rest) if j.data["id"] == p[0]][0].key for p in pieces} == {key}
    for j in (first, *rest):
        np.testing.assert_array_equal(answers[j.data["id"]][0], 2 * j.data["x"] + j.key)


def test_admission_refuses_beyond_the_budget_with_the_builtin_message_and_keeps_headroom_for_small_jobs():
    rec, answers = Recorder(hold=True), {}
    sched = ChunkScheduler(rec, chunk=4, admission=Admission(20, headroom=4)).start()
    running = job(0, 12, answers)
    assert sched.submit(running) is None
    assert rec.inside.wait(10)
    refused = sched.submit(job(1, 6, answers))  # 12 + 6 > 20 - 4: a big job must leave the headroom free
    assert refused == ("the server is overloaded (12 rows queued or running, limit 16 for a request of 6 rows); "
                       "retry later")
    small = job(2, 4, answers)
    assert sched.submit(small) is None  # 12 + 4 <= 20: small jobs may use the headroom
    assert sched.pending_rows() == 16
    rec.release.set()
    wait_all([running, small])
    assert 1 not in answers and sched.pending_rows() == 0
    sched.close()
    assert sched.submit(job(3, 1, answers)) == "the server is shutting down"


def test_small_jobs_keep_the_headroom_beside_a_job_larger_than_the_budget():
    """A job larger than the whole budget, admitted while idle, no longer locks small jobs out (the 16384-row
    budget of the load test answered 3018 small requests 503 behind one 65536-row upload)."""
    rec, answers = Recorder(hold=True), {}
    sched = ChunkScheduler(rec, chunk=4, admission=Admission(20, headroom=4)).start()
    big = job(0, 50, answers)
    assert sched.submit(big) is None  # idle: admitted
    assert rec.inside.wait(10)
    small = job(1, 4, answers)
    assert sched.submit(small) is None  # the headroom is still the small jobs'
    assert sched.submit(job(2, 1, answers)) is not None  # and it is full
    assert sched.submit(job(3, 5, answers)) is not None  # a large job waits for the big one
    rec.release.set()
    wait_all([big, small])
    np.testing.assert_array_equal(answers[1][0], 2 * small.data["x"])
    np.testing.assert_array_equal(answers[0][0], 2 * big.data["x"])
    assert sched.pending_rows() == 0 and sched.admission.large == 0
    sched.close()


def test_a_failing_call_answers_its_jobs_with_the_error_and_the_worker_goes_on():
    rec, answers = Recorder(fail_key=9.0), {}
    sched = ChunkScheduler(rec, chunk=8, admission=Admission(1000)).start()
    bad, good = job(0, 3, answers, key=9.0), job(1, 3, answers)
    assert sched.submit(bad) is None
    wait_all([bad])
    assert sched.submit(good) is None
    wait_all([good])
    sched.close()
    assert answers[0] == (None, "the model failed: RuntimeError: kernel exploded")
    np.testing.assert_array_equal(answers[1][0], 2 * good.data["x"])
    assert sched.pending_rows() == 0


def test_close_finishes_the_queued_jobs_first():
    rec, answers = Recorder(hold=True), {}
    sched = ChunkScheduler(rec, chunk=2, admission=Admission(1000)).start()
    jobs = [job(i, 5, answers) for i in range(3)]
    for j in jobs:
        assert sched.submit(j) is None
    assert rec.inside.wait(10)
    closer = threading.Thread(target=sched.close)
    closer.start()
    rec.release.set()
    closer.join(10)
    assert not closer.is_alive() and sorted(answers) == [0, 1, 2]
    assert all(err is None for _, err in answers.values())


def test_chunk_must_be_positive():
    with pytest.raises(ValueError, match="chunk must be >= 1"):
        ChunkScheduler(Recorder(), chunk=0, admission=Admission(10))

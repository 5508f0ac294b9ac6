"""``firmware_tools._workers.ordered_map``: results in task order, and when a worker process dies
mid-run (BrokenProcessPool) every task not yet returned runs in this process, none lost, none
twice. Real spawned processes; the task kills its own worker with ``os._exit``."""

from __future__ import annotations

import os
import time

from firmware_tools._workers import ordered_map


def square_or_die(task: tuple[int, int, int]) -> tuple[int, int]:
    """``(i, i*i)``; the task ``i == fatal`` ends its worker process (never the test's own) after
    0.2 s."""
    i, fatal, parent_pid = task
    if i == fatal and os.getpid() != parent_pid:
        time.sleep(0.2)
        os._exit(3)
    return i, i * i


def test_ordered_map_returns_results_in_task_order_from_two_workers():
    tasks = [(i, -1, os.getpid()) for i in range(40)]
    assert list(ordered_map(square_or_die, tasks, n_workers=2)) == [(i, i * i) for i in range(40)]


def test_a_worker_that_dies_mid_run_loses_no_task_and_repeats_none():
    # task 5 kills its worker while up to 6 tasks are in flight: the pool breaks, and task 5,
    # the tasks in flight after it and the ones not yet submitted all run here, in order
    tasks = [(i, 5, os.getpid()) for i in range(30)]
    assert list(ordered_map(square_or_die, tasks, n_workers=2, max_in_flight=6)) == [(i, i * i) for i in range(30)]


def test_a_pool_that_broke_while_the_caller_held_a_result_finishes_here_too():
    # task 0 returns at once; task 1 kills its worker 0.2 s later, while the caller still holds
    # result 0, so the next submit (not a result) meets the broken pool
    tasks = [(i, 1, os.getpid()) for i in range(12)]
    results = ordered_map(square_or_die, tasks, n_workers=2, max_in_flight=2)
    first = next(results)
    time.sleep(1.0)
    assert [first, *results] == [(i, i * i) for i in range(12)]

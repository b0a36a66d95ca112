"""Fake of modules/progress.py: the task bookkeeping behind /internal/progress."""

import random
import string
import time
from collections import OrderedDict

current_task = None
pending_tasks = OrderedDict()
finished_tasks = []
recorded_results = []
recorded_results_limit = 2


def start_task(id_task):
    global current_task
    current_task = id_task
    pending_tasks.pop(id_task, None)


def finish_task(id_task):
    global current_task
    if current_task == id_task:
        current_task = None
    finished_tasks.append(id_task)
    if len(finished_tasks) > 16:
        finished_tasks.pop(0)


def create_task_id(task_type):
    suffix = "".join(random.choices(string.ascii_uppercase + string.digits, k=7))
    return f"task({task_type}-{suffix})"


def record_results(id_task, res):
    recorded_results.append((id_task, res))
    if len(recorded_results) > recorded_results_limit:
        recorded_results.pop(0)


def add_task_to_queue(id_job):
    pending_tasks[id_job] = time.time()


def progress_fraction(state):
    """What /internal/progress reports as ``progress`` for the running task (0..1)."""
    fraction = 0.0
    if state.job_count > 0:
        fraction += state.job_no / state.job_count
    if state.sampling_steps > 0 and state.job_count > 0:
        fraction += 1 / state.job_count * state.sampling_step / state.sampling_steps
    return min(fraction, 1)

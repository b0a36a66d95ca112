"""Fake of modules/call_queue.py: how the webui runs a GPU job from a button.

``wrap_gradio_gpu_call(fn)`` returns a handler that, like the real one:
  * treats a first argument ``"task(...)"`` as the task id (queued, started, finished, results recorded);
  * holds ``queue_lock`` (shared with txt2img, the merger, model switching) while ``fn`` runs;
  * calls ``shared.state.begin(job=id)`` before and ``shared.state.end()`` after;
  * afterwards resets ``interrupted``, ``skipped``, ``stopping_generation``, ``job_count``, ``job``;
  * turns the result into a tuple (``list(res)``!) and appends a timing note to its LAST item,
    which must therefore be a string;
  * catches any Exception, reports it, and returns ``extra_outputs + [error html]`` instead.
"""

import html
import time
from functools import wraps

from modules import devices, errors, fifo_lock, progress, shared

queue_lock = fifo_lock.FIFOLock()


def wrap_queued_call(func):
    def f(*args, **kwargs):
        with queue_lock:
            return func(*args, **kwargs)

    return f


def wrap_gradio_gpu_call(func, extra_outputs=None):
    @wraps(func)
    def f(*args, **kwargs):
        if args and type(args[0]) is str and args[0].startswith("task(") and args[0].endswith(")"):
            id_task = args[0]
            progress.add_task_to_queue(id_task)
        else:
            id_task = None

        with queue_lock:
            shared.state.begin(job=id_task)
            progress.start_task(id_task)
            try:
                res = func(*args, **kwargs)
                progress.record_results(id_task, res)
            finally:
                progress.finish_task(id_task)
            shared.state.end()
        return res

    return wrap_gradio_call(f, extra_outputs=extra_outputs, add_stats=True)


def wrap_gradio_call(func, extra_outputs=None, add_stats=False):
    @wraps(func)
    def f(*args, **kwargs):
        try:
            res = func(*args, **kwargs)
        finally:
            shared.state.skipped = False
            shared.state.interrupted = False
            shared.state.stopping_generation = False
            shared.state.job_count = 0
            shared.state.job = ""
        return res

    return wrap_gradio_call_no_job(f, extra_outputs, add_stats)


def wrap_gradio_call_no_job(func, extra_outputs=None, add_stats=False):
    @wraps(func)
    def f(*args, extra_outputs_array=extra_outputs, **kwargs):
        started = time.perf_counter()
        try:
            res = list(func(*args, **kwargs))
        except Exception as e:
            errors.report(f"Error completing request\nArguments: {args} {kwargs}"[:131072], exc_info=True)
            if extra_outputs_array is None:
                extra_outputs_array = [None, ""]
            message = f"{type(e).__name__}: {e}"
            res = extra_outputs_array + [f"<div class='error'>{html.escape(message)}</div>"]

        devices.torch_gc()
        if not add_stats:
            return tuple(res)

        elapsed = time.perf_counter() - started
        timing = f"<span class='measurement'>{elapsed:.1f} sec.</span>"
        res[-1] += f"<div class='performance'><p class='time'>Time taken: <wbr>{timing}</p></div>"
        return tuple(res)

    return f

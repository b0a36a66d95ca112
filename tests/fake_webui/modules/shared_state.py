"""Fake of modules/shared_state.py: ``shared.state``, what the progress bar and Interrupt read and write.

Fake only: every write to job_count, job_no or textinfo is appended to ``trace`` as
``(name, value)`` so a test can check what a job reported, in order.
"""

import datetime
import time

from modules import devices, shared

_TRACED = ("job_count", "job_no", "textinfo")


class State:
    skipped = False
    interrupted = False
    stopping_generation = False
    job = ""
    job_no = 0
    job_count = 0
    processing_has_refined_job_count = False
    job_timestamp = "0"
    sampling_step = 0
    sampling_steps = 0
    current_latent = None
    current_image = None
    current_image_sampling_step = 0
    id_live_preview = 0
    textinfo = None
    time_start = None
    server_start = None

    def __init__(self):
        self.trace = []
        self.server_start = time.time()

    def __setattr__(self, name, value):
        if name in _TRACED:
            self.trace.append((name, value))
        super().__setattr__(name, value)

    def skip(self):
        self.skipped = True

    def interrupt(self):
        """What the Interrupt button and POST /sdapi/v1/interrupt do."""
        self.interrupted = True

    def stop_generating(self):
        self.stopping_generation = True

    def nextjob(self):
        self.job_no += 1
        self.sampling_step = 0
        self.current_image_sampling_step = 0

    def dict(self):
        return {
            "skipped": self.skipped,
            "interrupted": self.interrupted,
            "stopping_generation": self.stopping_generation,
            "job": self.job,
            "job_count": self.job_count,
            "job_timestamp": self.job_timestamp,
            "job_no": self.job_no,
            "sampling_step": self.sampling_step,
            "sampling_steps": self.sampling_steps,
        }

    def begin(self, job="(unknown)"):
        self.sampling_step = 0
        self.time_start = time.time()
        self.job_count = -1
        self.processing_has_refined_job_count = False
        self.job_no = 0
        self.job_timestamp = datetime.datetime.now().strftime("%Y%m%d%H%M%S")
        self.current_latent = None
        self.current_image = None
        self.current_image_sampling_step = 0
        self.id_live_preview = 0
        self.skipped = False
        self.interrupted = False
        self.stopping_generation = False
        self.textinfo = None
        self.job = job
        devices.torch_gc()

    def end(self):
        self.job = ""
        self.job_count = 0
        devices.torch_gc()

    def assign_current_image(self, image):
        """Show ``image`` as the live preview (JPEG previews cannot carry alpha)."""
        if shared.opts.live_previews_image_format == "jpeg" and image.mode in ("RGBA", "P"):
            image = image.convert("RGB")
        self.current_image = image
        self.id_live_preview += 1

"""Test doubles for stage 01 plumbing: a backend that answers from a script."""
import os

from phi_lib.backends.base import Backend, Completion


class ScriptedBackend(Backend):
    """Answers prompt i of each call with `answer(prompt, seed)`; optionally dies on call N.

    `die_on_call` ends the process with os._exit (no cleanup, like a kill -9) when that call
    starts: what an interrupted run leaves behind.
    """

    name, model = "scripted", "script-1"

    def __init__(self, answer, die_on_call=None, finish_reason="stop"):
        self.answer, self.die_on_call, self.finish_reason = answer, die_on_call, finish_reason
        self.calls = 0
        self.prompts = []

    def generate(self, prompts, params, *, chat=True, logprobs=0, progress=False, seeds=None):
        self.calls += 1
        if self.die_on_call is not None and self.calls >= self.die_on_call:
            os._exit(9)
        self.prompts += list(prompts)
        seeds = seeds or [None] * len(prompts)
        return [Completion(text=self.answer(p, s), prompt_tokens=10, completion_tokens=50,
                           finish_reason=self.finish_reason) for p, s in zip(prompts, seeds)]


def run_steps(cfg, backend, out=None, report=False):
    """Stage 01's steps up to the filter (and the report if asked) with `backend`; the stage."""
    from phi_lib.synth import SynthStage

    stage = SynthStage(cfg, out, backend=backend)
    stage.topics()
    stage.prompts()
    stage.generate(progress=False)
    stage.filter()
    if report:
        stage.report()
    return stage

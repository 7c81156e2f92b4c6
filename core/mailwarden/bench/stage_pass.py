"""The per-stage side of ``mailwarden bench --compare DIR``: this build runs it as a script in
a fresh interpreter of either build (``python -c`` with runpy; argv: corpus dir, config, measure).

It opens the work counters (:mod:`counters`, loaded by path: the other build may not have it)
before anything starts a thread, warms a home with the corpus (that build's ``warm_home``),
starts one ``Gateway`` and sends one message through it unmeasured, then says ``ready``. Then
each line ``INDEX MEASURE`` on stdin sends message INDEX through ``Gateway.process`` with the
stage timings' clock (``time.perf_counter`` in the pipeline's modules, which both the old
``pipeline.py`` and the split modules read to fill ``timings_ms``) swapped for the counter of
MEASURE, and answers one JSON line: that message's cost per stage. So each stage is measured
where that build measures it, in work instead of wall time, and the caller can alternate the
two builds message by message, so that the machine's speed of the moment falls on both.
"""

from __future__ import annotations

import asyncio
import gc
import importlib.util
import json
import os
import shutil
import sys
import tempfile
import time
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

WHOLE = "whole pipeline"
AFTER = "after the reply"
#: Seconds a message's background work gets to finish before the next message.
_SETTLE = 0.005


def _counters() -> Any:
    spec = importlib.util.spec_from_file_location(
        "_mailwarden_bench_counters", Path(__file__).with_name("counters.py")
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class _Clock(types.ModuleType):
    """Stands in for ``time`` in a pipeline module: ``perf_counter`` reads the counter,
    scaled so that a stage's "ms" is a millionth of its count (instructions or CPU ns)."""

    def __init__(self, read: Callable[[], int]) -> None:
        super().__init__("time")
        self._read = read

    def perf_counter(self) -> float:
        return self._read() / 1e9

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)


def _swap_clock(clock: types.ModuleType | None) -> None:
    """Every loaded mailwarden module that times with ``time`` gets ``clock`` (None: back)."""
    for name, module in list(sys.modules.items()):
        if name != "mailwarden" and not name.startswith("mailwarden."):
            continue
        if name.startswith("mailwarden.bench"):
            continue
        found = getattr(module, "time", None)
        if found is time or isinstance(found, _Clock):
            vars(module)["time"] = clock or time


async def _serve(messages: list[bytes], config_text: str, seed: Path, counters: Any) -> None:
    from mailwarden.bench.run import ENVELOPE
    from mailwarden.config import load_config
    from mailwarden.pipeline import Gateway
    from mailwarden.plugins import build_plugin_manager

    home = Path(tempfile.mkdtemp(prefix="mailwarden-bench-pass-"))
    shutil.copytree(seed, home, dirs_exist_ok=True)
    (home / "mailwarden.toml").write_text(config_text)
    try:
        plugins = build_plugin_manager()
        config = load_config(home / "mailwarden.toml", plugins.config_schemas())
        async with Gateway(config, plugins=plugins) as gateway:
            # The first message pays for lazy set-up; it is not measured.
            await gateway.process(messages[0], ENVELOPE, ingress="bench")
            # The collector runs after each message, counted in AFTER, instead of in whichever
            # stage crossed its threshold (which differs between two runs of one build); what
            # is alive by now is frozen, so a collection costs what the messages left behind.
            gc.collect()
            gc.freeze()
            gc.disable()
            _answer({"ready": True})
            while True:
                # In a thread, so the gateway's own timers run while we wait, not in a stage.
                line = await asyncio.to_thread(sys.stdin.readline)
                if not line.strip():
                    return
                index, measure = line.split(maxsplit=1)
                read = counters[measure.strip()].read
                _swap_clock(_Clock(read))
                try:
                    began = read()
                    outcome = await gateway.process(messages[int(index)], ENVELOPE, ingress="bench")
                    whole = read() - began
                    # What the message set going after its reply (event lanes, threads
                    # finishing) and its garbage: counted here, not in the next message's stages.
                    began = read()
                    await asyncio.sleep(_SETTLE)
                    gc.collect()
                    after = read() - began
                finally:
                    _swap_clock(None)
                costs = {stage: ms * 1e6 for stage, ms in outcome.decision.timings_ms.items()}
                _answer({**costs, AFTER: after, WHOLE: whole})
    finally:
        shutil.rmtree(home, ignore_errors=True)


# The answers' own stream: fd 1 goes to stderr (below), so that nothing a plugin prints can
# break the protocol.
_OUT: Any = None


def _answer(value: dict[str, Any]) -> None:
    _OUT.write(json.dumps(value) + "\n")
    _OUT.flush()


def main(corpus_dir: str, config_file: str, measure: str) -> None:
    global _OUT
    _OUT = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    module = _counters()
    # Before any thread starts: the threads inherit the instruction counter.
    counter = module.open_counter(measure)
    counters = {counter.measure: counter, module.CPU_TIME: module.open_counter(module.CPU_TIME)}

    from mailwarden.bench import run

    messages = [p.read_bytes() for p in sorted(Path(corpus_dir).glob("*.eml"))]
    config_text = Path(config_file).read_text()
    _answer(
        {
            "source": run.__file__,
            "measure": counter.measure,
            "why": counter.why,
            "messages": len(messages),
        }
    )
    seed = run.warm_home(messages, config_text)
    try:
        asyncio.run(_serve(messages, config_text, seed, counters))
    finally:
        shutil.rmtree(seed, ignore_errors=True)


if __name__ == "__main__":
    main(*sys.argv[1:4])

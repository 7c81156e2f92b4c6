"""The detect stage: every detector that runs under the message's rule (each within its
budget), the rule's content checks and the MIME ambiguities, as findings. A detector that
fails or runs out of time is an error finding: the rule's error action decides."""

from __future__ import annotations

import asyncio
import contextvars
import logging
import time
from collections.abc import Coroutine, Iterable, Sequence
from typing import TYPE_CHECKING, Any

from mailwarden_native import ParsedMessage, detect_type
from mailwarden_sdk import Category, Finding, ScanContext
from mailwarden_sdk.offload import scanning

from .content_rules import DETECTOR as CONTENT_DETECTOR
from .content_rules import check_content, mime_ambiguities
from .hookcalls import Resumed, hook_kwargs, is_async
from .policy import rule_runs
from .stage import detector_stage, elapsed_ms

if TYPE_CHECKING:
    from .config import Config, RuleConfig
    from .hookcalls import HookRunner
    from .plugins import PluginSet

__all__ = ["TIMEOUT", "Detect", "checked_findings", "error_finding"]

log = logging.getLogger(__name__)

#: The code of a finding that stands for a hook out of time.
TIMEOUT = "HOOK_TIMEOUT"


def error_finding(detector: str, code: str, error: str) -> Finding:
    """An error finding of ``detector``: the rule's error action decides about the message."""
    return Finding(
        code=code,
        detector=detector,
        category=Category.OTHER,
        status="error",
        details={"error": error[:300]},
    )


def checked_findings(detector: str, result: Any) -> list[Finding]:
    """What ``detector`` returned as findings; anything that is not one is an error finding."""
    if result is None:
        return []
    if isinstance(result, Finding):
        return [result]
    # A list or tuple (what detectors return) before the Iterable test: an ABC's
    # isinstance is a Python call per detector and message.
    if not isinstance(result, (list, tuple)) and (
        not isinstance(result, Iterable) or isinstance(result, (str, bytes))
    ):
        return [error_finding(detector, "DETECTOR_ERROR", f"returned {type(result).__name__}")]
    findings: list[Finding] = []
    for item in result:
        if isinstance(item, Finding):
            findings.append(item)
        else:
            findings.append(
                error_finding(
                    detector, "DETECTOR_ERROR", f"returned {type(item).__name__}, not Finding"
                )
            )
    return findings


class Detect:
    """The detect stage of one gateway: its plugins' ``mailwarden_scan`` and the content rules."""

    def __init__(self, plugins: PluginSet, hooks: HookRunner) -> None:
        self.plugins = plugins
        self.hooks = hooks
        # The implementations each rule runs, by the rule's id, with what they were chosen
        # from: worked out once per rule and configuration instead of per message.
        self._chosen: dict[
            int, tuple[RuleConfig, Config, list[list[str]], list[Any], list[Any]]
        ] = {}

    def detectors_for(self, config: Config, rule: RuleConfig) -> list[str]:
        """Names of the detectors that run under ``rule``."""
        return [impl.plugin_name for impl in self._impls(config, rule)]

    def _impls(self, config: Config, rule: RuleConfig) -> list[Any]:
        """The ``mailwarden_scan`` implementations that run under ``rule``."""
        every = self.plugins.pm.hook.mailwarden_scan.get_hookimpls()
        disabled = config.detectors.disabled
        chosen = self._chosen.get(id(rule))
        if (
            chosen is not None
            and chosen[0] is rule
            and chosen[1] is config
            and chosen[2] == [disabled, rule.detectors]
            and chosen[3] == every
        ):
            return chosen[4]
        impls = [
            impl
            for impl in every
            if impl.plugin_name not in disabled and rule_runs(rule, impl.plugin_name)
        ]
        if len(self._chosen) > 1000:  # configurations reloaded many times over
            self._chosen.clear()
        self._chosen[id(rule)] = (
            rule,
            config,
            [list(disabled), list(rule.detectors)],
            every,
            impls,
        )
        return impls

    async def findings(
        self,
        config: Config,
        ctx: ScanContext,
        rule: RuleConfig,
        given: Sequence[Finding],
        timings: dict[str, float],
    ) -> list[Finding]:
        """Everything found in ``ctx.message`` under ``rule``, ``given`` (a plugin's verdict on
        a resubmission) last; each detector's time goes in ``timings``."""
        impls = self._impls(config, rule)
        message = ctx.message
        results: list[list[Finding]] = []
        if not impls:
            # Only the content rules: no tasks to start and gather.
            blocked = await self._check_content(message, rule, timings)
        elif not rule.content.active:
            results = await self._detected(config, ctx, impls, timings)
            blocked = []
        else:
            loop = self.hooks.loop or asyncio.get_running_loop()
            with scanning(message):
                # The detectors' tasks inherit the mark: a message of many fields or parts has
                # its CPU work done in threads (run_cpu_bound), whatever its size.
                tasks = [
                    loop.create_task(self._run_detector(config, impl, ctx, timings))
                    for impl in impls
                ]
            # Awaited one by one instead of through gather (its future and a done callback
            # per detector): they ran concurrently all the same, and a detector never raises
            # (_run_detector makes every failure a finding). The content rules' thread runs
            # meanwhile.
            try:
                blocked = await self._check_content(message, rule, timings)
                for task in tasks:
                    results.append(await task)
            except BaseException:
                # Cancelled (the client went away, a shutdown): the detectors stop with it,
                # as gather's children did.
                for task in tasks:
                    task.cancel()
                raise
        results.append(blocked)
        results.append(mime_ambiguities(message))
        results.append(list(given))
        return [f for found in results for f in found]

    async def _detected(
        self, config: Config, ctx: ScanContext, impls: list[Any], timings: dict[str, float]
    ) -> list[list[Finding]]:
        """Each detector's findings, with no content rules to check meanwhile.

        An async detector's first step runs here, in a context of its own as in a task, and
        one that finishes in it (most on a small message: nothing to wait for) costs no task;
        one that waits goes on in a task of its own, within its budget, concurrently with the
        others, as all of them did before (a task is created, scheduled, stepped and awaited:
        about 3 us of the loop's time per detector and message)."""
        loop = self.hooks.loop or asyncio.get_running_loop()
        started: list[list[Finding] | asyncio.Task[list[Finding]]] = []
        try:
            with scanning(ctx.message):
                for impl in impls:
                    if is_async(impl.function):
                        started.append(self._first_step(loop, config, impl, ctx, timings))
                    else:
                        started.append(
                            loop.create_task(self._run_detector(config, impl, ctx, timings))
                        )
            return [found if isinstance(found, list) else await found for found in started]
        except BaseException:
            # Cancelled (the client went away, a shutdown): the detectors stop with it.
            for found in started:
                if not isinstance(found, list):
                    found.cancel()
            raise

    def _first_step(
        self,
        loop: asyncio.AbstractEventLoop,
        config: Config,
        impl: Any,
        ctx: ScanContext,
        timings: dict[str, float],
    ) -> list[Finding] | asyncio.Task[list[Finding]]:
        name = impl.plugin_name
        began = time.perf_counter()
        context = contextvars.copy_context()
        try:
            coroutine = impl.function(**hook_kwargs(impl, ctx=ctx))
            waiting = context.run(coroutine.send, None)
        except StopIteration as done:
            timings[detector_stage(name)] = elapsed_ms(began)
            return checked_findings(name, done.value)
        except Exception as exc:
            timings[detector_stage(name)] = elapsed_ms(began)
            return self._failed(name, exc, config.detectors.budget(name))
        return loop.create_task(
            self._go_on(config, name, coroutine, waiting, began, timings), context=context
        )

    async def _go_on(
        self,
        config: Config,
        name: str,
        coroutine: Coroutine[Any, Any, Any],
        waiting: Any,
        began: float,
        timings: dict[str, float],
    ) -> list[Finding]:
        """A detector whose first step waits, in its own task: the rest of its budget from
        when it began, as :func:`~mailwarden.hookcalls.call_impl` gives it."""
        budget = config.detectors.budget(name)
        try:
            async with asyncio.timeout(budget - (time.perf_counter() - began)):
                result = await Resumed(coroutine, waiting)
            return checked_findings(name, result)
        except Exception as exc:
            return self._failed(name, exc, budget)
        finally:
            timings[detector_stage(name)] = elapsed_ms(began)

    def _failed(self, name: str, exc: Exception, budget: float) -> list[Finding]:
        if isinstance(exc, TimeoutError):
            self.hooks.failed("mailwarden_scan", name, "timeout")
            return [error_finding(name, "DETECTOR_TIMEOUT", f"no answer within {budget:g} s")]
        log.warning("detector %s failed: %r", name, exc)
        return [error_finding(name, "DETECTOR_ERROR", repr(exc))]

    async def _check_content(
        self, message: ParsedMessage, rule: RuleConfig, timings: dict[str, float]
    ) -> list[Finding]:
        if not rule.content.active:
            return []
        began = time.perf_counter()
        try:
            # Archive listing is Python work on untrusted data: off the event loop, and a
            # failure is an error finding the rule's error action decides, like a detector's.
            return await asyncio.to_thread(check_content, message, rule.content, detect_type)
        except Exception as exc:
            log.warning("content rules failed: %r", exc)
            return [error_finding(CONTENT_DETECTOR, "DETECTOR_ERROR", repr(exc))]
        finally:
            timings[detector_stage(CONTENT_DETECTOR)] = elapsed_ms(began)

    async def _run_detector(
        self, config: Config, impl: Any, ctx: ScanContext, timings: dict[str, float]
    ) -> list[Finding]:
        name = impl.plugin_name
        budget = config.detectors.budget(name)
        began = time.perf_counter()
        try:
            result = await self.hooks.call(impl, budget, ctx=ctx)
            return checked_findings(name, result)
        except Exception as exc:
            return self._failed(name, exc, budget)
        finally:
            timings[detector_stage(name)] = elapsed_ms(began)

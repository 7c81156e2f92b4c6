"""The detect stage: every detector that runs under the message's rule (each within its
budget), the rule's content checks and the MIME ambiguities, as findings. A detector that
fails or runs out of time is an error finding: the rule's error action decides."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from mailwarden_native import ParsedMessage, detect_type
from mailwarden_sdk import Category, Finding, ScanContext
from mailwarden_sdk.offload import scanning

from .content_rules import DETECTOR as CONTENT_DETECTOR
from .content_rules import check_content, mime_ambiguities
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
            # (_run_detector makes every failure a finding). Content rules that are off cost
            # no task either.
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
        except TimeoutError:
            self.hooks.failed("mailwarden_scan", name, "timeout")
            return [error_finding(name, "DETECTOR_TIMEOUT", f"no answer within {budget:g} s")]
        except Exception as exc:
            log.warning("detector %s failed: %r", name, exc)
            return [error_finding(name, "DETECTOR_ERROR", repr(exc))]
        finally:
            timings[detector_stage(name)] = elapsed_ms(began)

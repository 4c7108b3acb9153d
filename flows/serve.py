"""Serve the deployments of `prefect.yaml` from this process: schedules run locally, no work pool.

    python -m flows.serve                       # prefect.yaml's schedules (cron, timezone, slug)
    python -m flows.serve --interval 10         # every deployment every 10 s instead (a demo)
    python -m flows.serve --only retrain --workspace /path/to/project

`prefect.yaml` stays the one place where names, parameters and schedules are
written; this module only turns its entries into `RunnerDeployment`s. Needs a
Prefect API (`PREFECT_API_URL`, e.g. a local `prefect server start`).
"""

from __future__ import annotations

import argparse
from datetime import timedelta
from pathlib import Path
from typing import Any

import yaml
from prefect import serve
from prefect.client.schemas.objects import ConcurrencyLimitConfig
from prefect.deployments.runner import RunnerDeployment
from prefect.schedules import Cron, Interval, Schedule

from flows.pipeline import fer_pipeline

PREFECT_YAML = Path(__file__).resolve().parents[1] / "prefect.yaml"


def load_definitions(path: Path = PREFECT_YAML) -> list[dict[str, Any]]:
    """The `deployments` entries of a prefect.yaml."""
    return yaml.safe_load(path.read_text())["deployments"]


def to_schedule(spec: dict[str, Any]) -> Schedule:
    """One prefect.yaml schedule entry (cron or interval) as a Prefect schedule."""
    common = {
        "timezone": spec.get("timezone"),
        "active": spec.get("active", True),
        "parameters": spec.get("parameters") or {},
        "slug": spec.get("slug"),
    }
    if "cron" in spec:
        return Cron(spec["cron"], day_or=spec.get("day_or", True), **common)
    if "interval" in spec:
        return Interval(timedelta(seconds=spec["interval"]), **common)
    raise ValueError(f"prefect.yaml schedule {spec} has neither cron nor interval")


def build_deployments(
    path: Path = PREFECT_YAML,
    interval_s: float | None = None,
    only: list[str] | None = None,
    workspace: Path | None = None,
) -> list[RunnerDeployment]:
    """Runner deployments for prefect.yaml's entries (optionally all on one short interval)."""
    deployments = []
    for spec in load_definitions(path):
        if only and spec["name"] not in only:
            continue
        if interval_s is not None:
            slug = f"{spec['name']}-every-{interval_s:g}s"
            schedules = [Interval(timedelta(seconds=interval_s), slug=slug)]
        else:
            schedules = [to_schedule(s) for s in spec.get("schedules") or []]
        parameters = dict(spec.get("parameters") or {})
        if workspace is not None:
            parameters["workspace"] = str(workspace.resolve())
        limit = spec.get("concurrency_limit")
        deployments.append(
            fer_pipeline.to_deployment(
                name=spec["name"],
                description=spec.get("description"),
                tags=spec.get("tags"),
                parameters=parameters,
                schedules=schedules,
                concurrency_limit=ConcurrencyLimitConfig(**limit)
                if isinstance(limit, dict)
                else limit,
            )
        )
    return deployments


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m flows.serve", description=__doc__)
    parser.add_argument("--interval", type=float, help="seconds; replaces every schedule")
    parser.add_argument("--only", action="append", help="serve only this deployment")
    parser.add_argument("--workspace", type=Path, help="DVC project to run in (default: cwd)")
    parser.add_argument("--limit", type=int, help="most flow runs at once in this process")
    args = parser.parse_args(argv)
    serve(
        *build_deployments(PREFECT_YAML, args.interval, args.only, args.workspace),
        limit=args.limit,
    )


if __name__ == "__main__":
    main()
